"""The arrows between the packages point down only: mesa_lab -> mesa_fast -> mesa_ref.

The reference must stay readable and installable on NumPy and SciPy alone, so importing it, with every one of
its submodules, must pull in none of the fast backend, the lab, Dask or matplotlib.  Run in a fresh
interpreter, because this test session has long since imported all of them."""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import mesa_ref

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("mesa_fast", "mesa_lab", "distributed", "dask", "matplotlib", "numba", "cupy")


def _imported_after(modules: list[str]) -> list[str]:
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}:\n    importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


def _reference_modules() -> list[str]:
    names = ["mesa_ref"]
    for info in pkgutil.walk_packages(mesa_ref.__path__, "mesa_ref."):
        names.append(info.name)
    return names


def test_the_walk_finds_the_reference_modules():
    names = _reference_modules()
    for m in ("mesa_ref.train", "mesa_ref.model", "mesa_ref.ops.mesa", "mesa_ref.probing", "mesa_ref.runio"):
        assert m in names
    assert not any(n.startswith("mesa_ref.experiments") or n in ("mesa_ref.jobs", "mesa_ref.backends")
                   for n in names), "the lab's modules are back in the reference"


def test_reference_imports_nothing_above_it():
    loaded = _imported_after(_reference_modules())
    bad = sorted({m.split(".")[0] for m in loaded} & set(FORBIDDEN))
    assert bad == [], f"importing mesa_ref pulled in {bad}"


def test_fast_backend_imports_no_lab():
    loaded = _imported_after(["mesa_fast", "mesa_fast.train", "mesa_fast.model"])
    assert "mesa_fast" in loaded                  # the probe itself works
    bad = sorted({m.split(".")[0] for m in loaded} & {"mesa_lab", "distributed", "dask", "matplotlib"})
    assert bad == [], f"importing mesa_fast pulled in {bad}"


def test_reference_trainer_points_to_the_fast_one(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mesa_ref.train", "--backend", "fast", "--steps", "1",
                          "--out", str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "mesa_fast.train" in lines[0], res.stderr
    assert not (tmp_path / "run").exists()
