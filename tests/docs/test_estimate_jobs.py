"""benchmarks/estimate_jobs.py: a figure's jobs priced from their timed gradient step."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "estimate_jobs.py"


def test_estimate_prices_every_job_of_the_configuration(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "fig2_one_layer_gd", "--repeats", "1", "--tag", "t",
                        "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "estimate_jobs_t.json").read_text())
    from mesa_lab.experiments import experiment
    exp = experiment("fig2_one_layer_gd")
    jobs = exp.jobs(exp.config("full"), 0, "fast")
    assert {k: v["key"] for k, v in d["jobs"].items()} == {k: j.key for k, j in jobs.items()}
    for k, v in d["jobs"].items():
        assert v["steps"] == jobs[k].train.steps and v["cpu_seconds_per_step"] > 0
        assert v["cpu_hours"] == v["cpu_seconds_per_step"] * v["steps"] / 3600
    assert d["benchmark"] == "estimate_jobs" and d["command"] and d["machine"]["cores"]


def test_unknown_figure_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "fig99", "--out", str(tmp_path)], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "fig99" in r.stderr
    assert not list(tmp_path.iterdir())
