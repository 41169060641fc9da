"""fig9_speed: a seconds-long sweep writes the contract files, and --replot redraws from the JSON alone."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow        # runs the speed figure end to end

ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "fig9_speed.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_fig9_smoke_and_replot(tmp_path):
    r = _run("--smoke", "--backend", "fast", "--out", str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "fig9_speed.json").read_text())
    assert data["T"] == [4, 8]
    assert set(data["median_ms"]) >= {"ref", "numba"}
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in data["median_ms"].values())
    png = tmp_path / "fig9_speed.png"
    png.unlink()
    r = _run("--replot", "--out", str(tmp_path))
    assert r.returncode == 0 and png.exists() and png.stat().st_size > 1000


def test_fig9_replot_without_json_is_one_line_error(tmp_path):
    r = _run("--replot", "--out", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not found" in r.stderr
