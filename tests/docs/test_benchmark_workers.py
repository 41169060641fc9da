"""benchmarks/timing.py: a benchmark worker for ``--baseline PATH`` imports that checkout's packages, not this one's
(the benchmark module itself puts this checkout first on the path when it is imported)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from timing import python_call  # noqa: E402


def _imported(root=None) -> str:
    cmd = python_call("bench_train_step", "sys.stdout.write(__import__('mesa_fast').__file__)", root=root)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_worker_imports_the_baseline_checkout(tmp_path):
    (tmp_path / "mesa_fast").mkdir()
    (tmp_path / "mesa_fast" / "__init__.py").write_text("")
    assert Path(_imported(tmp_path)).resolve() == (tmp_path / "mesa_fast" / "__init__.py").resolve()


def test_worker_imports_this_checkout_by_default():
    assert Path(_imported()).resolve() == (ROOT / "mesa_fast" / "__init__.py").resolve()
