"""Second configurations (mesa_lab/experiments/retests.py): fig3 under the authors' own training recipe, as new
jobs beside the shipped ones."""
import subprocess
import sys
from pathlib import Path

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
    assert set(RETESTS) == {"fig3_depth", "fig4_probing"}


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
