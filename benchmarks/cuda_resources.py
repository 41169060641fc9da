"""Registers, spills and shared memory of the mesa layer's CUDA kernels (mesa_fast/cuda/mesa.py), without a GPU.

    .venv/bin/python benchmarks/cuda_resources.py            # -> benchmarks/results/cuda_resources.{json,md}

Compiles each kernel ([M2]/[M4] forward, [M3]/[M4] backward) in float32 and float64 to PTX for sm_80 and sm_90
(``numba.cuda.compile_ptx``), assembles it with the ``ptxas -v`` of the nvidia-cuda-nvcc wheel and records registers
per thread, spill stores / loads, stack frame and static shared memory (mesa_fast/cuda/resources.py), and the
dynamic shared memory per block at the paper's shape (d = dv = 20) and the language model's (d = dv = 64) with the
default block size. Then run ``python benchmarks/make_performance_doc.py`` to put the table in docs/performance.md.
The same numbers are checked by tests/gpu/test_cuda_compile.py (no spills).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = (("paper", 20, 20), ("lm", 64, 64))


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cuda_resources"),
                    help="output path without extension (.json and .md are written)")
    args = ap.parse_args(argv)

    import numba
    import numba_cuda
    import numpy

    from mesa_fast.cuda import resources

    kernels = resources.kernel_resources(ccs=((8, 0), (9, 0)))
    result = {
        "benchmark": "cuda_resources",
        "date": datetime.date.today().isoformat(),
        "git_commit": _commit(),
        "command": "python benchmarks/cuda_resources.py" + ("" if argv is None and len(sys.argv) == 1
                                                            else " " + " ".join(sys.argv[1:] if argv is None else argv)),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "numpy": numpy.__version__, "numba": numba.__version__},
        "toolkit": {**resources.toolkit_versions(), "numba_cuda": numba_cuda.__version__},
        "kernels": kernels,
        "shared": resources.shared_table(SHAPES),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")

    spec = importlib.util.spec_from_file_location("mpd", ROOT / "benchmarks" / "make_performance_doc.py")
    mpd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mpd)
    md = "\n".join(mpd.render_cuda_resources(result, out.with_suffix(".json").name)) + "\n"
    out.with_suffix(".md").write_text(md)
    print(md)
    spills = [r for r in kernels if r["spill_stores"] or r["spill_loads"]]
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
