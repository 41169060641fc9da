"""docs/reproduction.md's numbers are the full-size figure JSON's, and the report script notices a change."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "report_full.py"


def test_generated_block_matches_the_shipped_json():
    r = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_a_changed_number_changes_the_block(tmp_path):
    src = ROOT / "figures" / "full" / "fig2_one_layer_gd.json"
    d = json.loads(src.read_text())
    (tmp_path / "fig2_one_layer_gd.json").write_text(json.dumps({**d, "model_vs_gd_ratio_t10": 123.0}))
    out = subprocess.run([sys.executable, str(SCRIPT), "--print", "--dir", str(tmp_path)], capture_output=True,
                         text=True, timeout=120).stdout
    assert "| fig2_one_layer_gd | model / one tuned GD step, mean over t >= 10 | 123 | full |" in out
    assert "| fig3_depth | - | not run yet | - |" in out
    shutil.rmtree(tmp_path)


def test_the_authors_estimate_is_recomputed_from_the_job_records(tmp_path):
    """A stale estimate in a figure JSON is neither printed nor kept: the block and the refreshed JSON both carry
    the job records' estimate from mesa_lab/cost.py; a second refresh changes nothing."""
    from mesa_lab import report
    from mesa_lab.cost import jax_hours
    d = json.loads((ROOT / "figures" / "full" / "fig2_one_layer_gd.json").read_text())
    d["cost"]["jax_hours_estimate"] = 999.0
    path = tmp_path / "fig2_one_layer_gd.json"
    path.write_text(json.dumps(d))
    expected = sum({j["key"]: jax_hours(j["record"])[0] for j in d["config"]["jobs"].values()}.values())
    assert "| 999 |" not in report.block(tmp_path)
    assert f"| {report.f(expected)} | full |" in report.block(tmp_path)
    assert report.refresh_costs(tmp_path) == [path]
    assert json.loads(path.read_text())["cost"]["jax_hours_estimate"] == expected
    assert report.refresh_costs(tmp_path) == []


def test_seed_rows_give_scalars_short_lists_by_entry_and_curves_by_their_last_value():
    from mesa_lab.experiments.seeds import seed_spread
    from mesa_lab.report import seed_rows
    per_seed = {s: {"x": x, "probe": [1.0, p], "curve": [9.0] * 9 + [c]}
                for s, x, p, c in ((0, 1.0, 0.5, 1.0), (1, 2.0, 0.7, 2.0), (2, 3.0, 0.9, 6.0))}
    ts = seed_spread(per_seed, ("x", "probe", "curve"))          # the record a figure's JSON carries
    rows = dict(seed_rows({"training_seeds": ts}))
    assert rows["x, over 3 training seeds"] == "2 +- 1 (1, 2, 3)"
    assert rows["probe by entry, mean over 3 training seeds"] == "1, 0.7 (largest std 0.2)"
    assert rows["curve, last value, over 3 training seeds"] == "3 +- 2.6 (1, 2, 6)"
