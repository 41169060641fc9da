"""docs/performance.md is generated from benchmarks/results/*.json and benchmarks/notes.md; it must be up to date."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "make_performance_doc.py"
DOC = ROOT / "docs" / "performance.md"
RESULTS = ROOT / "benchmarks" / "results"


def _module():
    spec = importlib.util.spec_from_file_location("make_performance_doc", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_doc_is_up_to_date(tmp_path):
    out = tmp_path / "performance.md"
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == DOC.read_text(), (
        "docs/performance.md is out of date: run python benchmarks/make_performance_doc.py")


def test_every_result_is_listed_with_its_command_date_and_machine():
    doc = DOC.read_text()
    files = sorted(RESULTS.glob("*.json"))
    assert files
    for f in files:
        d = json.loads(f.read_text())
        meta = d.get("meta", d)
        assert f"`{f.name}`" in doc
        assert f"`{meta['command']}`" in doc and str(meta["date"]) in doc
    assert "## Measurements moved out of the code" in doc      # the notes are in


def test_a_changed_result_or_note_changes_the_doc(tmp_path):
    """The up-to-date test can fail: editing one number of one result, or the notes, changes the output."""
    mod = _module()
    res = tmp_path / "results"
    shutil.copytree(RESULTS, res)
    notes = tmp_path / "notes.md"
    shutil.copy(ROOT / "benchmarks" / "notes.md", notes)
    base = mod.build(res, notes)
    assert base == DOC.read_text()
    f = res / "bench_train_step_cpu_xeon.json"
    d = json.loads(f.read_text())
    d["results"][1]["wall_ms_median"] = 1234.5
    f.write_text(json.dumps(d))
    changed = mod.build(res, notes)
    assert changed != base and "1234.5" in changed
    notes.write_text(notes.read_text() + "\n- one more note\n")
    assert mod.build(res, notes).endswith("- one more note\n")


def test_bad_input_is_a_clear_error(tmp_path):
    mod = _module()
    notes = tmp_path / "notes.md"
    notes.write_text("## notes\n")
    with pytest.raises(ValueError, match="no \\*.json"):
        mod.build(tmp_path, notes)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        mod.build(tmp_path, notes)
    (tmp_path / "broken.json").write_text(json.dumps({"meta": {"date": "x"}, "rows": []}))
    with pytest.raises(ValueError, match="missing \\['command'\\]"):
        mod.build(tmp_path, notes)
    with pytest.raises(ValueError, match="notes file not found"):
        mod.build(RESULTS, tmp_path / "absent.md")
    r = subprocess.run([sys.executable, str(SCRIPT), "--check", "--out", str(tmp_path / "stale.md")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "out of date" in r.stderr
