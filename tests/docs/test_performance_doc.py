"""docs/performance.md (today's run of each benchmark) and docs/performance-archive/index.md (the older runs) are
generated from benchmarks/results/ and benchmarks/notes.md; both must be up to date, and the page short."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "make_performance_doc.py"
DOC = ROOT / "docs" / "performance.md"
ARCHIVE_DOC = ROOT / "docs" / "performance-archive" / "index.md"
RESULTS = ROOT / "benchmarks" / "results"
NOTES = ROOT / "benchmarks" / "notes.md"


def _module():
    spec = importlib.util.spec_from_file_location("make_performance_doc", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod        # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _copy(tmp_path):
    res = tmp_path / "results"
    shutil.copytree(RESULTS, res)
    notes = tmp_path / "notes.md"
    shutil.copy(NOTES, notes)
    return res, notes


def test_committed_docs_are_up_to_date(tmp_path):
    page, archive = tmp_path / "performance.md", tmp_path / "index.md"
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(page), "--archive-out", str(archive)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert page.read_text() == DOC.read_text(), (
        "docs/performance.md is out of date: run python benchmarks/make_performance_doc.py")
    assert archive.read_text() == ARCHIVE_DOC.read_text(), (
        "docs/performance-archive/index.md is out of date: run python benchmarks/make_performance_doc.py")
    r = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_the_page_is_one_short_page():
    assert len(DOC.read_text().splitlines()) <= 160       # one section per benchmark, today's run only


def test_every_run_is_on_the_page_or_in_the_archive_with_its_command_and_date():
    mod = _module()
    doc, archive = DOC.read_text(), ARCHIVE_DOC.read_text()
    today, older = sorted(RESULTS.glob("*.json")), sorted((RESULTS / "archive").glob("*.json"))
    assert today and older
    for f in today + older:
        d = json.loads(f.read_text())
        meta = d.get("meta", d)
        where = archive if f in older or f.name in mod.PINNED else doc
        assert f"`{f.name}`" in where and f"`{meta['command']}`" in where and str(meta["date"]) in where, f.name
    for f in older:
        assert f"(../../benchmarks/results/archive/{f.name})" in archive
        assert f"`{f.name}`" not in doc          # the page shows today's runs only


def test_todays_run_is_the_newest_that_measured_the_whole_benchmark():
    mod = _module()
    runs = mod.load_runs(RESULTS)
    today = mod.todays(runs)
    for r in runs:
        t = today[r.bench]
        full = frozenset().union(*(x.cells for x in runs if x.bench == r.bench))
        if r.bench == "bench_train_step:baseline":      # each run times one code change: the newest is today's
            assert (r.when, r.name) <= (t.when, t.name)
        else:
            assert t.cells == full
        if r.cells >= full:
            assert (r.when, r.name) <= (t.when, t.name)
        assert r.archived == (r is not t and r.name not in mod.PINNED), r.name
    assert today["bench_train_step:jax"].name == "bench_train_step_cpu_dw_b.json"


def test_a_newer_run_takes_over_only_once_the_older_one_is_archived(tmp_path):
    mod = _module()
    res, notes = _copy(tmp_path)
    d = json.loads((res / "bench_train_step_cpu_dw_b.json").read_text())
    d["date"] = "2099-01-01 00:00 UTC"
    d["results"][0]["wall_ms_median"] = 111.1
    (res / "bench_train_step_cpu_new.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"git mv benchmarks/results/bench_train_step_cpu_dw_b\.\{json,md\} "
                                         r"benchmarks/results/archive/"):
        mod.build_all(res, notes)
    (res / "bench_train_step_cpu_dw_b.json").rename(res / "archive" / "bench_train_step_cpu_dw_b.json")
    texts = mod.build_all(res, notes)
    assert "`bench_train_step_cpu_new.json`" in texts["page"] and "| 111.1 |" in texts["page"]
    assert "`bench_train_step_cpu_dw_b.json`" in texts["archive"]
    # a GPU run of the mesa layer is a benchmark of its own: the CPU run stays today's
    g = json.loads((res / "bench_mesa_cpu_xeon.json").read_text())
    g["date"] = "2099-01-01T00:00:00"
    for row in g["results"]:
        row["timings"]["cupy"] = {"median_ms": 0.5, "speedup_vs_ref": 800.0}
    (res / "bench_mesa_gpu.json").write_text(json.dumps(g))
    texts = mod.build_all(res, notes)
    assert "`bench_mesa_cpu_xeon.json`" in texts["page"] and "`bench_mesa_gpu.json`" in texts["page"]
    # a newer run of some of the models only is not today's: it belongs in the archive
    d["date"], d["results"] = "2099-02-01 00:00 UTC", d["results"][:2]
    (res / "bench_train_step_cpu_part.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"git mv benchmarks/results/bench_train_step_cpu_part\.\{json,md\}"):
        mod.build_all(res, notes)


def test_a_changed_result_or_note_changes_the_docs(tmp_path):
    """The up-to-date test can fail: one number of today's run, of an archived run, or the notes."""
    mod = _module()
    res, notes = _copy(tmp_path)
    base = mod.build_all(res, notes)
    assert base["page"] == DOC.read_text() and base["archive"] == ARCHIVE_DOC.read_text()
    for name, where in (("bench_train_step_cpu_dw_b.json", "page"), ("archive/bench_train_step_cpu_xeon.json",
                                                                     "archive")):
        f = res / name
        d = json.loads(f.read_text())
        d["results"][1]["wall_ms_median"] = 1234.5
        f.write_text(json.dumps(d))
        changed = mod.build_all(res, notes)
        assert changed[where] != base[where], name
    notes.write_text(notes.read_text() + "\n- one more note\n")
    assert mod.build_all(res, notes)["page"].endswith("- one more note\n")


def test_pinned_runs_are_still_cited_where_the_pin_says():
    """An older run stays in benchmarks/results/ only while the code that the pin names still mentions it there."""
    mod = _module()
    for name, (path, _why) in mod.PINNED.items():
        assert (RESULTS / name).is_file(), name
        assert name in (ROOT / path).read_text(), f"{path} no longer mentions {name}: unpin it and archive it"


def test_bad_input_is_a_clear_error(tmp_path):
    mod = _module()
    notes = tmp_path / "notes.md"
    notes.write_text("## notes\n")
    with pytest.raises(ValueError, match="no \\*.json"):
        mod.build_all(tmp_path, notes)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        mod.build_all(tmp_path, notes)
    (tmp_path / "broken.json").write_text(json.dumps({"meta": {"date": "2026-01-01"}, "rows": []}))
    with pytest.raises(ValueError, match="missing \\['command'\\]"):
        mod.build_all(tmp_path, notes)
    (tmp_path / "broken.json").write_text(json.dumps({"benchmark": "huge_pages", "date": "yesterday",
                                                      "command": "x", "machine": {}, "results": []}))
    with pytest.raises(ValueError, match="does not start with YYYY-MM-DD"):
        mod.build_all(tmp_path, notes)
    with pytest.raises(ValueError, match="notes file not found"):
        mod.build_all(RESULTS, tmp_path / "absent.md")
    shutil.copy(DOC, tmp_path / "page.md")
    shutil.copy(ARCHIVE_DOC, tmp_path / "index.md")
    for stale in ("page.md", "index.md"):       # --check covers both files
        (tmp_path / stale).write_text("stale\n")
        r = subprocess.run([sys.executable, str(SCRIPT), "--check", "--out", str(tmp_path / "page.md"),
                            "--archive-out", str(tmp_path / "index.md")], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 1 and f"{stale} is out of date" in r.stderr
        shutil.copy(DOC if stale == "page.md" else ARCHIVE_DOC, tmp_path / stale)


def test_a_code_change_timed_against_an_earlier_checkout_is_a_section_of_ratios(tmp_path):
    """bench_train_step.py --baseline: a benchmark of its own (peer "baseline"), shown as one line of earlier /
    this ratios per model, not as another table of the step against JAX; a run whose two backends imported the
    same checkout says it compares nothing."""
    mod = _module()
    res, notes = _copy(tmp_path)
    path = res / "bench_train_step_cpu_l2norm.json"
    d = json.loads(path.read_text())
    for row in d["results"]:
        row["wall_ms_median"] = 20.0 if row["backend"] == "mesa_fast" else 30.0
    path.write_text(json.dumps(d))

    def section():
        page = mod.build_all(res, notes)["page"]
        return page, page.split("## Training step, this commit against an earlier checkout", 1)[1].split("\n## ")[0]

    page, text = section()
    assert "t4_softmax7_authors 1.50x" in text and "commit " in text and "not a comparison" not in text
    for row in d["results"]:
        row["package"] = "/same/checkout"
    path.write_text(json.dumps(d))
    page, text = section()
    assert "not a comparison: both backends imported /same/checkout" in text and "1.50x" not in text
    assert "`bench_train_step_cpu_dw_b.json`" in page                    # the JAX comparison is still today's
