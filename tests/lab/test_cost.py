"""The authors'-cost estimate of mesa_lab.cost: measured families exactly, others by a stated rule; the measured
step times come from benchmarks/results/jax_step_ms.json, each traceable to the runs it names."""
import json
from pathlib import Path

import pytest

from mesa_ref.config import ModelConfig
from mesa_lab import cost
from mesa_lab.cost import jax_hours, jax_step_estimate
from mesa_lab.jobs import Job
from mesa_ref.tasks import LinearTask
from mesa_ref.train import TrainConfig


def test_measured_families_are_used_as_measured():
    steps = cost.jax_step_ms()
    assert jax_step_estimate(ModelConfig().to_dict()) == (steps[("linear", 2)], "measured")
    assert jax_step_estimate(ModelConfig(layers=("mesa",)).to_dict()) == (steps[("mesa", 1)], "measured")
    ms, basis = jax_step_estimate(ModelConfig(layers=("linear",) * 4).to_dict())
    assert ms == pytest.approx(steps[("linear", 2)] * 2) and "extrapolated" in basis


def test_job_hours_are_step_times_steps_scaled_to_the_batch():
    ms = cost.jax_step_ms()[("linear", 2)]
    job = Job(ModelConfig(), LinearTask(), TrainConfig(steps=20000))
    assert jax_hours(job.record())[0] == pytest.approx(ms * 20000 / 3.6e6)
    half = Job(ModelConfig(), LinearTask(), TrainConfig(steps=20000, batch=128))
    assert jax_hours(half.record())[0] == pytest.approx(ms * 10000 / 3.6e6)


def test_a_figure_counts_a_shared_job_once():
    from mesa_lab.cost import figure_jax_hours
    job = Job(ModelConfig(), LinearTask(), TrainConfig(steps=20000))
    other = Job(ModelConfig(layers=("mesa",)), LinearTask(), TrainConfig(steps=20000))
    total, per_name = figure_jax_hours({"a": (job.key, job.record()), "b": (job.key, job.record()),
                                        "c": (other.key, other.record())})
    assert per_name["a"] == per_name["b"] == jax_hours(job.record())
    assert total == pytest.approx(jax_hours(job.record())[0] + jax_hours(other.record())[0])


# ---------------------------------------------------------------------------------------------- the step-time file
ROOT = Path(__file__).resolve().parents[2]


def test_step_times_come_from_the_results_file():
    d = json.loads(cost.JAX_STEP_FILE.read_text())
    assert cost.JAX_STEP_FILE == ROOT / "benchmarks" / "results" / "jax_step_ms.json"
    assert cost.jax_step_ms() == {(s["family"], s["layers"]): s["ms"] for s in d["steps"]}
    for key in set(cost.BASE.values()):
        assert cost.jax_step_estimate(_model_of(*key)) == (cost.jax_step_ms()[key], "measured")


def _model_of(family, layers):
    kind = {"linear": "linear", "mesa": "mesa", "softmax_mlp_ln": "softmax"}[family]
    extra = {"mlp": True, "layernorm": True} if family == "softmax_mlp_ln" else {}
    return {"layers": [kind] * layers, **extra}


def test_each_step_time_is_the_midpoint_of_the_runs_it_names():
    """Every measured value is in the run it cites (the JAX row of a saved result file, or the archived notes for
    the runs that were not saved), and the value used is the midpoint of the lowest and highest."""
    d = json.loads(cost.JAX_STEP_FILE.read_text())
    for s in d["steps"]:
        values = [m["ms"] for m in s["measured"]]
        assert s["ms"] == round((min(values) + max(values)) / 2, 1), s
        for m in s["measured"]:
            if m["file"] is None:
                assert f"{m['ms']:.1f}" in (ROOT / m["where"]).read_text(), m
                continue
            run = json.loads((ROOT / m["file"]).read_text())
            jax = [r[m["field"]] for r in run["results"] if r["model"] == s["model"] and r["backend"] == "jax"]
            assert [round(v, 1) for v in jax] == [m["ms"]], (m, jax)


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    ("{not json", "cannot be read as JSON"),
    (json.dumps({"date": "2026-12-02"}), "no 'steps' list"),
    (json.dumps({"steps": [{"family": "linear", "layers": 2}]}), r"steps\[0\] needs"),
    (json.dumps({"steps": [{"family": "linear", "layers": 2, "ms": -1}]}), r"steps\[0\] needs"),
    (json.dumps({"steps": [{"family": "linear", "layers": 2, "ms": 146.9}]}), "no step time for"),
])
def test_a_missing_or_malformed_step_time_file_is_a_clear_error(tmp_path, monkeypatch, content, message):
    path = tmp_path / "jax_step_ms.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setattr(cost, "JAX_STEP_FILE", path)
    with pytest.raises(cost.StepTimesError, match=message) as e:
        jax_step_estimate(ModelConfig().to_dict())
    assert str(path) in str(e.value) and "JAX step times" in str(e.value)
