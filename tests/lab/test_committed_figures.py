"""The quick-mode results committed in ``figures/`` hold the claims the README and the issues make of them.

These read the committed JSON (no training): a regenerated figure that no longer shows what it is said to
show fails here, and so does a JSON whose numbers disagree with its own curves.
"""
import json
from pathlib import Path

import numpy as np
import pytest

FIG = Path(__file__).resolve().parents[2] / "figures"


def load(name):
    path = FIG / f"{name}.json"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make reproduce`")
    d = json.loads(path.read_text())
    assert d["quick"] is True and d["figure"] == name
    return d


def mean_after(curve, t_min=10):
    return float(np.mean(np.asarray(curve)[t_min - 1:]))


def test_fig1_gd_similarity():
    d = load("fig1_weights")
    assert d["gd_similarity_max"] == pytest.approx(max(d["gd_similarity"]))
    assert d["gd_similarity_max"] > 0.9


def test_fig2_one_layer_model_matches_one_gd_step():
    d = load("fig2_one_layer_gd")
    ps = d["per_step_loss"]
    ratio = mean_after(ps["model"]) / mean_after(ps["gd"])
    assert ratio == pytest.approx(d["model_vs_gd_ratio_t10"], rel=1e-9)
    assert abs(ratio - 1) <= 0.10
    assert mean_after(ps["lsq"]) < min(mean_after(ps["model"]), mean_after(ps["gd"]))
    assert d["gd_similarity_max"] > 0.9


def test_fig3_deeper_linear_models_approach_least_squares():
    d = load("fig3_depth")
    fl = d["final_loss"]
    for c in d["depth_check"]:
        assert fl[c["deeper"]] <= fl[c["shallower"]] + c["tolerance"]
        assert c["deeper_no_worse"]
    assert fl["lsq"] < min(v for k, v in fl.items() if k.startswith("linear_L"))


def test_fig7_one_mesa_layer_matches_least_squares():
    d = load("fig7_mesa_vs_attention")
    ps = d["per_step_loss"]
    ratio = mean_after(ps["mesa_L1"]) / mean_after(ps["lsq"])
    assert ratio == pytest.approx(d["mesa_vs_lsq_ratio_t10"], rel=1e-9)
    assert ratio <= 1.10
    assert mean_after(ps["mesa_L1"]) < mean_after(ps["linear_L1"])


def test_fig4_inverse_curvature_probe_improves_with_depth():
    d = load("fig4_probing")
    ic = d["probe_error"]["linear"]["inverse_curvature"]
    # layer 0 is the input token: the control; the deepest layers read the target best
    assert ic[0] == pytest.approx(d["probe_error"]["linear"]["control"][0], rel=1e-6)
    assert ic[-1] < ic[0] and ic[-1] <= min(ic) + 0.01
    for r in d["linearisation"]["softmax"]:
        assert r["loss_linearised"] == pytest.approx(r["loss_original"] + r["loss_change"], rel=1e-9)


def test_fig5_first_layer_attends_to_the_previous_token():
    d = load("fig5_copy_layer")
    A = np.asarray(d["attention_map"])
    assert d["prev_token_attention"] == pytest.approx(float(np.mean(np.diag(A, -1))), rel=1e-9)
    assert d["prev_token_attention"] > 0.5
    prev = d["probe_previous_error"]
    assert prev[1] < 0.1 * prev[0]            # s_{t-1} becomes readable after layer 1


def test_fig6_error_falls_with_examples_and_eos_helps():
    d = load("fig6_icl")
    ev = d["error_vs_examples"]
    for m in ("no_eos", "eos", "eos_prompt", "lsq"):
        assert ev[m][-1] < ev[m][0]
    assert np.mean(ev["eos"]) < np.mean(ev["no_eos"])
