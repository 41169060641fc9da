"""The authors'-cost estimate of mesa_lab.cost: measured families exactly, others by a stated rule."""
import pytest

from mesa_ref.config import ModelConfig
from mesa_lab.cost import jax_hours, jax_step_estimate
from mesa_lab.jobs import Job
from mesa_ref.tasks import LinearTask
from mesa_ref.train import TrainConfig


def test_measured_families_are_used_as_measured():
    assert jax_step_estimate(ModelConfig().to_dict()) == (146.9, "measured")
    assert jax_step_estimate(ModelConfig(layers=("mesa",)).to_dict()) == (270.3, "measured")
    ms, basis = jax_step_estimate(ModelConfig(layers=("linear",) * 4).to_dict())
    assert ms == pytest.approx(146.9 * 2) and "extrapolated" in basis


def test_job_hours_are_step_times_steps_scaled_to_the_batch():
    job = Job(ModelConfig(), LinearTask(), TrainConfig(steps=20000))
    assert jax_hours(job.record())[0] == pytest.approx(146.9 * 20000 / 3.6e6)
    half = Job(ModelConfig(), LinearTask(), TrainConfig(steps=20000, batch=128))
    assert jax_hours(half.record())[0] == pytest.approx(146.9 * 10000 / 3.6e6)


def test_a_figure_counts_a_shared_job_once():
    from mesa_lab.cost import figure_jax_hours
    job = Job(ModelConfig(), LinearTask(), TrainConfig(steps=20000))
    other = Job(ModelConfig(layers=("mesa",)), LinearTask(), TrainConfig(steps=20000))
    total, per_name = figure_jax_hours({"a": (job.key, job.record()), "b": (job.key, job.record()),
                                        "c": (other.key, other.record())})
    assert per_name["a"] == per_name["b"] == jax_hours(job.record())
    assert total == pytest.approx(jax_hours(job.record())[0] + jax_hours(other.record())[0])
