"""scripts/fig4_probing.py and scripts/fig5_copy_layer.py: smoke runs (hidden --smoke flag: tiny sizes, seconds) and
the jobs their full-size configurations ask for."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow        # runs the figure scripts end to end

ROOT = Path(__file__).resolve().parents[2]


def run_script(name, *args):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["fig4_probing", "fig5_copy_layer"])
def test_smoke_run_and_replot(tmp_path, name):
    r = run_script(name, "--smoke", "--backend", "ref", "--no-progress", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    js, png = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
    assert png.stat().st_size > 1000
    data = json.loads(js.read_text())
    for key in ("figure", "config", "seed", "quick", "backend", "command", "date", "seconds"):
        assert key in data
    assert data["figure"] == name and data["config"]["mode"] == "smoke"
    jobs = data["config"]["jobs"]
    for job in jobs.values():
        assert job["record"]["train"]["seed"] == data["seed"] == 0        # the job seed is the figure's --seed
    if name == "fig4_probing":
        pe = data["probe_error"]
        assert set(pe) == {"linear", "softmax"}
        for model, per_target in pe.items():
            assert set(per_target) == {"current", "previous", "next", "inverse_curvature", "control"}
            L1 = len(jobs[model]["record"]["model"]["layers"]) + 1
            for ys in per_target.values():
                assert len(ys) == L1 and all(np.isfinite(ys))
            # layer 0 of both models is a linear function of the input token: the same error as the control
            assert per_target["inverse_curvature"][0] == pytest.approx(per_target["control"][0], rel=1e-6)
        assert len(data["linearisation"]["softmax"]) == len(jobs["softmax"]["record"]["model"]["layers"])
        assert jobs["linear"]["record"]["task"]["tokens"] == "constructed"
        assert jobs["softmax"]["record"]["task"]["tokens"] == "raw"
        for model in ("linear", "softmax"):
            tr = data["training"][model]
            assert tr["final_test_loss"] == tr["test_loss"][-1] and tr["step"][-1] == 4
    else:
        assert 0 <= data["prev_token_attention"] <= 1
        T = data["config"]["values"]["T"]
        A = np.asarray(data["attention_map"])
        assert A.shape == (T, T)
        np.testing.assert_allclose(A.sum(axis=1), 1, rtol=1e-6)           # rows of a softmax map
        assert np.all(np.triu(A, 1) == 0)                                    # causal
        # the weight on t-1 read off the map is the reported number
        assert data["prev_token_attention"] == pytest.approx(float(np.mean(np.diag(A, -1))), rel=1e-6)
        layers = jobs["model"]["record"]["model"]["layers"]
        assert layers == ["softmax", "softmax"]
        assert len(data["probe_previous_error"]) == len(layers) + 1
    # --replot redraws the PNG from the JSON alone
    png.unlink()
    before = js.read_text()
    r = run_script(name, "--replot", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert png.stat().st_size > 1000 and js.read_text() == before


def test_bad_flag_is_a_one_line_error(tmp_path):
    r = run_script("fig5_copy_layer", "--replot", "--out", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_full_jobs_share_fig3_and_keep_the_stated_sizes():
    from mesa_lab.experiments import copy_layer, depth, probe_layers
    for seed in (0, 3):
        fig3 = depth.jobs(depth.FULL, seed, "fast")["linear_L6"]
        fig4 = probe_layers.jobs(probe_layers.FULL, seed, "fast")
        # the deep linear model of fig4 is fig3's six-layer job: one training run serves both figures
        assert fig4["linear"].key == fig3.key
        assert fig4["linear"].model.layers == ("linear",) * 6
        sm = fig4["softmax"]
        assert sm.model.layers == ("softmax",) * 6
        assert (sm.model.width, sm.model.key_size, sm.model.heads, sm.model.mlp_factor) == (64, 16, 4, 4)
        assert sm.model.mlp and sm.model.layernorm and sm.model.pos_enc and sm.model.clip is None
        assert sm.model.input == "embed" and sm.model.init_std == 0.02 and sm.task.tokens == "raw"
        for job in (sm, copy_layer.jobs(copy_layer.FULL, seed, "fast")["model"]):
            t = job.train
            assert (t.steps, t.batch, t.lr, t.warmup_steps, t.decay_steps, t.final_lr, t.weight_decay) == \
                (20000, 256, 3e-4, 1000, 20000, 1e-5, 0.05)
            assert t.seed == seed and t.checkpoint_every == 500
        # fig5's model is fig4's softmax model with two layers
        f5 = copy_layer.jobs(copy_layer.FULL, seed, "fast")["model"]
        assert f5.model == sm.model.replace(layers=("softmax",) * 2) and f5.task == sm.task and f5.train == sm.train
    assert probe_layers.jobs(probe_layers.FULL, 0, "fast")["softmax"].key != probe_layers.jobs(probe_layers.FULL, 1, "fast")["softmax"].key


def test_quick_modes_list_their_deviations():
    from mesa_lab.experiments import copy_layer, probe_layers
    from mesa_lab.experiments.common import deviations
    dev4 = deviations(probe_layers.QUICK, probe_layers.FULL, "full size")
    assert "n = 4 (full size: 10)" in dev4 and "softmax_steps = 2000 (full size: 20000)" in dev4
    assert not any(d.startswith("lin_steps") for d in dev4)          # the full-size [P4] fit is the quick one
    dev5 = deviations(copy_layer.QUICK, copy_layer.FULL, "full size")
    assert "n = 4 (full size: 10)" in dev5 and not any(d.startswith("softmax_layers") for d in dev5)
    assert copy_layer.QUICK.softmax_layers == copy_layer.FULL.softmax_layers == 2
    for exp in (probe_layers.EXPERIMENT, copy_layer.EXPERIMENT):
        assert not exp.full_is_paper                                   # the softmax sizes are ours, not the paper's


def test_fig5_job_serves_fig4_partial_run(tmp_path):
    # At the smoke sizes fig4's softmax model has two layers: it is fig5's job.  After fig5 has run, fig4
    # --partial finds that result in the shared store and analyses the softmax model alone.
    from mesa_lab.experiments import copy_layer, probe_layers
    args = ["--smoke", "--backend", "ref", "--no-progress", "--out", str(tmp_path)]
    assert copy_layer.EXPERIMENT.main(args) == 0
    f5 = json.loads((tmp_path / "fig5_copy_layer.json").read_text())
    assert probe_layers.EXPERIMENT.main([*args, "--partial"]) == 0
    f4 = json.loads((tmp_path / "partial" / "fig4_probing.json").read_text())
    assert f4["complete"] is False and f4["missing_jobs"] == ["linear"]
    assert f4["config"]["jobs"]["softmax"]["key"] == f5["config"]["jobs"]["model"]["key"]
    assert set(f4["probe_error"]) == {"softmax"} and len(f4["linearisation"]["softmax"]) == 2
    # the same model and probe sets: fig4's probe for s_{t-1} reads what fig5's does
    assert f4["probe_error"]["softmax"]["previous"] == pytest.approx(f5["probe_previous_error"], rel=1e-9)
    assert (tmp_path / "partial" / "fig4_probing.png").stat().st_size > 1000
