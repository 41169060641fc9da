"""The shipped full-size results stay valid: every full-size figure's jobs, built by today's code, have the keys its
committed JSON records, and each key's result is in the committed store figures/full/jobs. A change to a config
default, a task or the job record that moved a key would orphan those results (hours of training) and fails here."""
import json
from pathlib import Path

import pytest

from mesa_lab.experiments import FIGURES, experiment
from mesa_lab.experiments.common import experiment_parser, figure_jobs

FULL = Path(__file__).resolve().parents[2] / "figures" / "full"


@pytest.mark.parametrize("name", [n for n in FIGURES if (FULL / f"{n}.json").exists()])
def test_full_size_job_keys_match_the_committed_store(name):
    exp = experiment(name)
    shipped = json.loads((FULL / f"{name}.json").read_text())
    args = experiment_parser(exp).parse_args(["--seed", str(shipped["seed"])])
    jobs = figure_jobs(exp, args, shipped["backend"])
    assert {k: j.key for k, j in jobs.items()} == {k: v["key"] for k, v in shipped["config"]["jobs"].items()}
    for k, j in jobs.items():
        assert (FULL / "jobs" / f"{j.key}.npz").exists(), (k, j.key)
