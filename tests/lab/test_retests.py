"""Second configurations (mesa_lab/experiments/retests.py): fig3 under the authors' own training recipe, as new
jobs beside the shipped ones."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mesa_lab.experiments import depth
from mesa_lab.experiments.retests import RETESTS, retest_jobs
from mesa_ref.train import learning_rate

pytestmark = pytest.mark.slow        # command-line checks in fresh interpreters

ROOT = Path(__file__).resolve().parents[2]


def test_authors_recipe_is_theirs_per_depth():
    jobs = depth.jobs(depth.AUTHORS, 0, "fast")
    steps = {k: j.train.steps for k, j in jobs.items()}
    assert steps == {"linear_L1": 5000, "linear_L2": 5000, "linear_L4": 10000, "linear_L6": 15000}
    assert [j.model.heads for j in jobs.values()] == [2, 4, 4, 4]
    for j in jobs.values():
        assert j.model.clip == 4.0 and j.train.weight_decay == 0.1 and j.train.clip_mode == "elementwise"
        assert {learning_rate(s, j.train) for s in (0, 1, j.train.steps // 2, j.train.steps - 1)} == {1e-4}
        assert j.train.eval_every <= j.train.steps


def test_authors_recipe_jobs_are_new_and_paper_jobs_unchanged():
    paper, authors = depth.jobs(depth.FULL, 0, "fast"), depth.jobs(depth.AUTHORS, 0, "fast")
    assert not {j.key for j in paper.values()} & {j.key for j in authors.values()}
    # the new config fields left the paper recipe's jobs as they were (the committed store test checks the keys)
    assert all(j.train.clip_mode == "global_norm" and j.train.steps == 20000 for j in paper.values())
    labels = [j.label for j in retest_jobs(["fig3_depth"], root=ROOT / "figures" / "full")]
    assert labels == [f"fig3_depth/recipe_authors/linear_L{L}" for L in (1, 2, 4, 6)]
    assert set(RETESTS) == {"fig3_depth", "fig4_probing", "fig7_mesa_vs_attention"}


def _run(*flags):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "fig3_depth.py"), *flags, "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_recipe_needs_its_own_out_and_full_size(tmp_path):
    r = _run("--recipe", "authors", "--no-train")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--out" in r.stderr
    r = _run("--recipe", "authors", "--quick", "--out", str(tmp_path))
    assert r.returncode == 2 and "full-size" in r.stderr
    assert not list(tmp_path.glob("*.json"))


def test_fig4_authors_softmax_model_is_built_like_theirs():
    from mesa_lab.experiments import probe_layers as P
    ours, theirs = P.jobs(P.FULL, 0, "fast"), P.jobs(P.AUTHORS_SOFTMAX, 0, "fast")
    assert theirs["linear"].key == ours["linear"].key                 # the linear model is the shipped one
    j = theirs["softmax"]
    m, t = j.model, j.train
    assert m.layers == ("softmax",) * 7 and m.pos_enc_kq and not m.pos_enc and not m.io_bias
    assert (m.width, m.heads, m.key_size, m.mlp, m.layernorm, m.clip, m.init_std) == (40, 4, 20, False, False, None,
                                                                                      0.05)
    assert (t.steps, t.lr, t.warmup_steps, t.decay_steps, t.weight_decay, t.clip_mode) == (10000, 8e-4, 1000, 30000,
                                                                                          0.05, "elementwise")
    assert j.key != ours["softmax"].key


def test_fig4_authors_model_needs_its_own_out(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "fig4_probing.py"), "--softmax-model", "authors",
                        "--no-train", "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--out" in r.stderr


def test_fig7_authors_setup_is_their_comparison():
    from mesa_lab.experiments import mesa_vs_attention as M
    from mesa_ref.tasks import NonlinearTask, PartialTask
    ours, theirs = M.jobs(M.FULL, 0, "fast"), M.jobs(M.AUTHORS, 0, "fast")
    assert sorted(theirs) == ["T3/mesa_L2", "T3/softmax_L7", "T4/mesa_L2", "T4/softmax_L7"]
    assert not {j.key for j in ours.values()} & {j.key for j in theirs.values()}
    t3, t4 = theirs["T3/softmax_L7"].task, theirs["T4/softmax_L7"].task
    assert t3 == PartialTask(n=15, m=5, k=16, T=50, sigma=0.01, obs_sigma=0.01)
    assert t4 == NonlinearTask(n=10, T=50, sigma=0.01, tokens="raw", s1_range=0.25)
    for name, j in theirs.items():
        m, t = j.model, j.train
        assert m.pos_enc_kq and not m.pos_enc and not m.io_bias and not m.layernorm and m.init_std == 0.05
        assert m.layers == (("softmax",) * 7 if "softmax" in name else ("softmax", "mesa"))
        assert m.clip == {"T3/mesa_L2": 1.0, "T4/mesa_L2": 15.0}.get(name)
        assert t.clip_mode == "elementwise" and t.weight_decay == 0.05 and t.warmup_steps == 1000
        if name.startswith("T3"):
            assert (m.width, m.heads, m.key_size, m.mlp, m.unit_norm) == (80, 12, 20, False, ())
            assert (m.input_dim, m.output_dim) == (80, 5)
            assert (t.steps, t.lr, t.decay_steps) == ((20000 if "softmax" in name else 12000), 4e-4, 30000)
        else:
            assert (m.width, m.heads, m.key_size, m.mlp, m.mlp_factor * m.width) == (60, 4, 20, True, 300)
            assert m.unit_norm == (("q", "k") if "softmax" in name else ("q", "v"))   # their mesa regresses on k_proj
            assert (t.steps, t.decay_steps) == (40000, 50000)
            assert t.lr == (1e-3 if "softmax" in name else 4e-4)
    labels = [j.label for j in retest_jobs(["fig7_mesa_vs_attention"], root=ROOT / "figures" / "full")]
    assert labels == [f"fig7_mesa_vs_attention/recipe_authors/{k}" for k in theirs]


def test_fig7_authors_setup_needs_its_own_out():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "fig7_mesa_vs_attention.py"), "--setup", "authors",
                        "--no-train", "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--out" in r.stderr


def test_fig7_authors_setup_runs_end_to_end(tmp_path):
    """The smoke-sized authors' setup trains its four models and writes a figure whose per-task ratios are those of
    its own curves."""
    import json
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "fig7_mesa_vs_attention.py"), "--setup", "authors",
                        "--smoke", "--out", str(tmp_path), "--no-progress", "--workers", "0"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "fig7_mesa_vs_attention.json").read_text())
    assert set(data["tasks"]) == {"T3", "T4"}
    for t, o in data["tasks"].items():
        # smoke size: one softmax layer after the first
        assert set(o["per_step_loss"]) >= {"softmax_L2", "mesa_L2", "lsq"}
        mesa, soft = (np.mean(o["per_step_loss"][k][9:]) for k in ("mesa_L2", "softmax_L2"))
        assert data["mesa_vs_softmax_ratio_t10"][t] == pytest.approx(mesa / soft, rel=1e-9)
        assert len(o["mesa_lam"]["mesa_L2"]) == 1          # one mesa layer, after the softmax first one
    assert (tmp_path / "fig7_mesa_vs_attention.png").stat().st_size > 0


def test_longest_first_orders_each_figure_by_estimated_cost_and_keeps_the_jobs():
    """fig7's authors' setup: the 7-layer softmax models (40000 and 20000 steps) before the mesa models, [T4]'s
    40000-step mesa model before [T3]'s 12000-step one; the figures keep their order and no job is lost."""
    plain, ordered = retest_jobs(), retest_jobs(longest_first=True)
    assert sorted(j.key for j in plain) == sorted(j.key for j in ordered)
    figs = lambda jobs: [j.label.split("/")[0] for j in jobs]   # noqa: E731
    assert figs(plain) == figs(ordered)
    fig7 = [j.label.split("/", 2)[2] for j in ordered if j.label.startswith("fig7")]
    assert fig7 == ["T4/softmax_L7", "T3/softmax_L7", "T4/mesa_L2", "T3/mesa_L2"]
