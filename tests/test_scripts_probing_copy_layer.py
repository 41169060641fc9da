"""Smoke tests of scripts/fig4_probing.py and scripts/fig5_copy_layer.py (hidden --smoke flag: tiny sizes, seconds)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    if name == "fig4_probing":
        pe = data["probe_error"]
        assert set(pe) == {"linear", "softmax"}
        for model, per_target in pe.items():
            assert set(per_target) == {"current", "previous", "next", "inverse_curvature", "control"}
            L1 = len(data["config"]["models"][model]["model"]["layers"]) + 1
            for ys in per_target.values():
                assert len(ys) == L1 and all(np.isfinite(ys))
            # layer 0 of both models is a linear function of the input token: the same error as the control
            assert per_target["inverse_curvature"][0] == pytest.approx(per_target["control"][0], rel=1e-6)
        assert len(data["linearisation"]["softmax"]) == len(data["config"]["models"]["softmax"]["model"]["layers"])
    else:
        assert 0 <= data["prev_token_attention"] <= 1
        T = data["config"]["sizes"]["T"]
        A = np.asarray(data["attention_map"])
        assert A.shape == (T, T)
        np.testing.assert_allclose(A.sum(axis=1), 1, rtol=1e-6)           # rows of a softmax map
        assert np.all(np.triu(A, 1) == 0)                                    # causal
        # the weight on t-1 read off the map is the reported number
        assert data["prev_token_attention"] == pytest.approx(float(np.mean(np.diag(A, -1))), rel=1e-6)
        layers = data["config"]["model"]["model"]["layers"]
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
