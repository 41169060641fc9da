"""Smoke tests of the figure scripts fig1, fig2, fig3, fig7 and make_figures (tiny --smoke sizes, CPU, ref).

Each script runs in-process through its ``Experiment.main(argv)`` (the same code the scripts/ entry points call) with
the hidden ``--smoke`` flag (seconds); the command-line behaviour (one-line error, non-zero exit) is
checked once through a real subprocess.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow        # runs the figure scripts end to end

ROOT = Path(__file__).resolve().parents[2]


def _mains():
    from mesa_lab.experiments import depth, mesa_vs_attention, one_layer
    return {"fig1_weights": one_layer.EXPERIMENT_FIG1.main, "fig2_one_layer_gd": one_layer.EXPERIMENT_FIG2.main,
            "fig3_depth": depth.EXPERIMENT.main, "fig7_mesa_vs_attention": mesa_vs_attention.EXPERIMENT.main}


def _check_per_step(d, T):
    assert isinstance(d["per_step_loss"], dict) and d["per_step_loss"]
    for name, ys in d["per_step_loss"].items():
        assert isinstance(ys, list) and len(ys) == T, name
        assert all(isinstance(v, float) and v >= 0 for v in ys), name
        assert d["final_loss"][name] == pytest.approx(sum(ys) / T)
    for key in ("gd", "lsq"):
        assert key in d["per_step_loss"]


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("figs")
    mains = _mains()
    for name in ("fig1_weights", "fig2_one_layer_gd", "fig3_depth", "fig7_mesa_vs_attention"):
        rc = mains[name](["--smoke", "--backend", "ref", "--out", str(out), "--no-progress"])
        assert rc == 0, name
    return out


@pytest.mark.parametrize("name", ["fig1_weights", "fig2_one_layer_gd", "fig3_depth", "fig7_mesa_vs_attention"])
def test_outputs_and_contract(smoke_dir, name):
    png, js = smoke_dir / f"{name}.png", smoke_dir / f"{name}.json"
    assert png.exists() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = json.loads(js.read_text())
    for key in ("figure", "config", "seed", "backend", "command", "quick"):
        assert key in d, key
    assert d["figure"] == name and d["backend"] == "ref"
    if name == "fig1_weights":
        H = d["heads"]
        assert len(d["gd_similarity"]) == H and d["gd_similarity_max"] == pytest.approx(max(d["gd_similarity"]))
        assert -1 <= d["gd_similarity_max"] <= 1
        assert len(d["KQ"]) == H and len(d["PV"]) == H
    elif name == "fig2_one_layer_gd":
        _check_per_step(d, 12)
        assert {"model", "revalg"} <= set(d["per_step_loss"])
        it = d["interpolation"]
        assert len(it["alpha"]) == len(it["to_revalg"]) == len(it["to_gd"])
        # alpha = 0 is the trained model itself (float64 product form vs float32 forward)
        assert it["to_revalg"][0] == pytest.approx(d["final_loss"]["model"], rel=1e-3)
        assert it["to_gd"][0] == pytest.approx(it["to_revalg"][0], rel=1e-12)
    elif name == "fig3_depth":
        _check_per_step(d, 12)
        assert {"linear_L1", "linear_L2", "gd_K2", "neumann_K1"} <= set(d["per_step_loss"])
        assert len(d["depth_check"]) == 1
    else:
        _check_per_step(d, 12)
        assert {"mesa_L1", "linear_L1", "softmax_L1", "mesa_L2"} <= set(d["per_step_loss"])
        assert set(d["tasks"]) == {"T1", "T3", "T4"}
        for t in ("T3", "T4"):
            assert {"mesa_L1", "linear_L1", "softmax_L1", "lsq"} <= set(d["tasks"][t]["per_step_loss"])
        assert d["tasks"]["T1"]["per_step_loss"] == d["per_step_loss"]


def test_replot_redraws_from_json_alone(smoke_dir, tmp_path):
    mains = _mains()
    for name in mains:
        # copy only the JSON into a fresh directory: nothing else (no cache, no PNG) is there to use
        (tmp_path / f"{name}.json").write_bytes((smoke_dir / f"{name}.json").read_bytes())
        before = (tmp_path / f"{name}.json").read_bytes()
        rc = mains[name](["--replot", "--out", str(tmp_path)])
        assert rc == 0, name
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
        assert (tmp_path / f"{name}.json").read_bytes() == before
    assert not (tmp_path / ".cache").exists()


def test_fig2_reuses_fig1_job(smoke_dir):
    f1 = json.loads((smoke_dir / "fig1_weights.json").read_text())
    f2 = json.loads((smoke_dir / "fig2_one_layer_gd.json").read_text())
    key = f1["config"]["jobs"]["model"]["key"]
    assert f2["config"]["jobs"]["model"]["key"] == key        # the same job: fig2 read fig1's stored result
    assert (smoke_dir / ".cache" / "jobs" / f"{key}.npz").exists()
    assert f1["gd_similarity"] == f2["gd_similarity"]


def test_bad_out_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "fig1_weights.py"), "--smoke", "--backend", "ref",
                        "--out", str(blocker / "sub")], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr


def test_make_figures_reports_failures(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_figures.py"), "--smoke", "--only", "fig1,fig3",
                        "--backend", "ref", "--out", str(blocker / "sub")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "not writable" in lines[0], r.stderr


def test_make_figures_trains_shared_jobs_once(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_figures.py"), "--smoke", "--only", "fig1,fig2",
                        "--backend", "ref", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    starts = [ln for ln in r.stdout.splitlines() if ln.startswith("start")]
    assert len(starts) == 1, r.stdout                     # fig1 and fig2 analyse the same job
    assert r.stdout.count("(stored result)") == 2        # each figure script then read it from the store
    for name in ("fig1_weights", "fig2_one_layer_gd"):
        assert (tmp_path / f"{name}.json").exists() and (tmp_path / f"{name}.png").exists()


def test_full_figures_without_results_ask_for_training(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_figures.py"), "--full", "--only", "fig3",
                        "--backend", "ref", "--out", str(tmp_path), "--store", str(tmp_path / "empty")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "missing" in r.stderr and "--train" in r.stderr and "fig3_depth/linear_L6" in r.stderr
    assert not (tmp_path / "fig3_depth.json").exists()


def test_partial_analyses_stored_jobs_only_and_says_so(tmp_path):
    from mesa_lab.experiments import depth
    from mesa_lab.experiments.common import figure_jobs, experiment_parser
    from mesa_lab.jobs import run_jobs
    args = experiment_parser(depth.EXPERIMENT).parse_args(["--smoke"])
    jobs = figure_jobs(depth.EXPERIMENT, args, "ref")
    run_jobs([jobs["linear_L1"]], tmp_path / ".cache" / "jobs", workers=0, progress=False, log=None)
    rc = depth.EXPERIMENT.main(["--smoke", "--backend", "ref", "--out", str(tmp_path), "--partial", "--no-progress"])
    assert rc == 0
    d = json.loads((tmp_path / "partial" / "fig3_depth.json").read_text())
    assert d["complete"] is False and d["missing_jobs"] == ["linear_L2"]
    assert "linear_L1" in d["per_step_loss"] and "linear_L2" not in d["per_step_loss"]
    assert not (tmp_path / "fig3_depth.json").exists()               # nothing where a finished figure would be
    assert not (tmp_path / ".cache" / "jobs" / f"{jobs['linear_L2'].key}.npz").exists()   # and nothing trained


def test_per_step_log_plot_range_follows_the_curves_not_the_bands():
    """A band whose spread exceeds its mean (lower edge <= 0) must not stretch a log axis down to the floor."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mesa_lab.experiments.common import plot_per_step
    fig, ax = plt.subplots()
    plot_per_step(ax, {"a": [1.0, 0.1, 0.01], "b": [0.5, 0.2, 0.05]}, {"a": [2.0, 0.5, 0.001], "b": [0.1, 0.1, 0.1]})
    lo, hi = ax.get_ylim()
    plt.close(fig)
    assert lo == pytest.approx(0.005) and hi == pytest.approx(2.0)


def _copy_run(src, dst, name):
    import shutil
    shutil.copytree(src / ".cache", dst / ".cache")
    for suffix in (".json", ".png"):
        shutil.copy(src / f"{name}{suffix}", dst / f"{name}{suffix}")


def test_a_redraw_with_unchanged_numbers_leaves_the_files_byte_identical(smoke_dir, tmp_path, capsys):
    """Recomputing a figure whose numbers did not change rewrites neither its JSON (whose date, timing and command
    do change) nor its PNG, and says so."""
    name = "fig2_one_layer_gd"
    _copy_run(smoke_dir, tmp_path, name)
    before = {s: (tmp_path / f"{name}{s}").read_bytes() for s in (".json", ".png")}
    capsys.readouterr()
    assert _mains()[name](["--smoke", "--backend", "ref", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"kept {tmp_path / name}.json" in out and f"kept {tmp_path / name}.png" in out and "rewrote" not in out
    assert {s: (tmp_path / f"{name}{s}").read_bytes() for s in (".json", ".png")} == before


@pytest.mark.parametrize("factor, rewritten", [(1 + 1e-6, False), (1 + 1e-3, True)])
def test_a_figure_is_rewritten_only_when_its_numbers_moved(smoke_dir, tmp_path, capsys, factor, rewritten):
    """The committed-file rule: a number off by 1e-6 relative (rounding) is kept as it is; one off by 1e-3 makes
    the recomputation replace the file, and the message names the largest change."""
    name = "fig2_one_layer_gd"
    _copy_run(smoke_dir, tmp_path, name)
    path = tmp_path / f"{name}.json"
    d = json.loads(path.read_text())
    d["per_step_loss"]["model"][3] *= factor
    path.write_text(json.dumps(d))
    stamped = path.read_bytes()
    capsys.readouterr()
    assert _mains()[name](["--smoke", "--backend", "ref", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    if rewritten:
        assert f"rewrote {path} (largest relative change 0.001, at per_step_loss.model[3])" in out, out
        fresh = json.loads(path.read_text())
        assert fresh["per_step_loss"]["model"][3] == pytest.approx(d["per_step_loss"]["model"][3] / factor, rel=1e-12)
    else:
        assert f"kept {path}" in out and path.read_bytes() == stamped


def test_largest_change_ignores_when_and_where_only():
    from mesa_lab.experiments.common import REDRAW_RTOL, largest_change
    old = {"a": [1.0, 2.0], "b": {"c": 3}, "date": "2026-01-01", "seconds": 5.0,
           "config": {"store": "figures/jobs", "mode": "full"}, "cost": {"cpu_hours": 1.0, "code": "abc"}}
    new = {"a": [1.0, 2.0 * (1 + 1e-10)], "b": {"c": 3}, "date": "2026-12-07", "seconds": 9.0,
           "config": {"store": "/tmp/jobs", "mode": "full"}, "cost": {"cpu_hours": 2.0, "code": "def"}}
    change, where = largest_change(old, new)
    assert change < REDRAW_RTOL and where == "a[1]"
    assert largest_change(old, {**new, "config": {"store": "x", "mode": "quick"}})[0] == float("inf")
    assert largest_change(old, {**new, "a": [1.0]})[0] == float("inf")
    assert largest_change(old, {**new, "extra": 1})[0] == float("inf")
    assert largest_change({"x": 0.0}, {"x": 1e-13})[0] == 0.0                # below the absolute floor
    timed = {"train_metrics": {"m": {"loss": [1.0], "seconds": [0.5]}}, "eq": {"loss_at_time_budget": {"a": 1.0}}}
    retimed = {"train_metrics": {"m": {"loss": [1.0], "seconds": [0.9]}}, "eq": {"loss_at_time_budget": {"a": None}}}
    assert largest_change(timed, retimed)[0] == 0.0                           # wall-clock numbers, at any depth
    assert largest_change({"x": 1.0}, {"x": 1.01})[0] == pytest.approx(0.01 / 1.01)


def test_make_figures_replot_passes_through(smoke_dir, tmp_path):
    name = "fig1_weights"
    for suffix in (".json", ".png"):
        (tmp_path / f"{name}{suffix}").write_bytes((smoke_dir / f"{name}{suffix}").read_bytes())
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_figures.py"), "--smoke", "--replot", "--only",
                        "fig1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"kept {tmp_path / name}.png: unchanged" in r.stdout and ".json" not in r.stdout.replace(
        f"== {name}", ""), r.stdout
    assert not (tmp_path / ".cache").exists()                         # nothing trained, nothing recomputed


def test_full_figures_redraw_from_the_shipped_store_into_another_folder(tmp_path):
    """--full --out ELSEWHERE reads figures/full/jobs by default: the figure is redrawn, nothing is trained."""
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_figures.py"), "--full", "--only", "fig1",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "(stored result)" in r.stdout and "start " not in r.stdout
    shipped = json.loads((ROOT / "figures" / "full" / "fig1_weights.json").read_text())
    redrawn = json.loads((tmp_path / "fig1_weights.json").read_text())
    assert redrawn["config"]["jobs"] == shipped["config"]["jobs"]
    assert redrawn["gd_similarity"] == pytest.approx(shipped["gd_similarity"], rel=1e-6)
    assert not (tmp_path / "jobs").exists()
