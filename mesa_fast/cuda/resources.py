"""What the mesa-layer's CUDA kernels cost a GPU, found without one: compile to PTX, assemble with ptxas -v.

    from mesa_fast.cuda import resources
    rows = resources.kernel_resources(ccs=((8, 0), (9, 0)))     # one dict per (kernel, dtype, target)

Each kernel of mesa_fast/cuda/mesa.py ([M2]-[M4] forward, [M3]/[M4] backward), in float32 and float64, is compiled
by ``numba.cuda.compile_ptx`` (NVVM from the CUDA toolkit wheels of the ``dev`` / ``gpu`` extras; no driver or GPU
needed) and assembled by the ``ptxas`` of the nvidia-cuda-nvcc wheel, whose ``-v`` report gives registers per
thread, spill stores and loads, stack frame and static shared memory. The kernels' shared memory is dynamic, sized
per launch (``mesa.shared_bytes``); ``shared_table`` gives it at chosen shapes.

Used by tests/gpu/test_cuda_compile.py (a kernel that does not compile or spills fails it) and by
benchmarks/cuda_resources.py (the recorded table).
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import mesa

__all__ = ["ptxas_path", "toolkit_versions", "compile_kernel", "parse_ptxas", "kernel_resources", "shared_table"]

DTYPES = (np.float32, np.float64)
KINDS = ("fwd", "bwd")


def ptxas_path() -> str:
    """The ptxas of the nvidia-cuda-nvcc wheel (else one on PATH); RuntimeError naming the extra if neither."""
    spec = importlib.util.find_spec("nvidia.cuda_nvcc")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            p = Path(root) / "bin" / "ptxas"
            if p.is_file():
                return str(p)
    found = shutil.which("ptxas")
    if found:
        return found
    raise RuntimeError("ptxas not found: install the dev extra (numba-cuda[cu12] brings nvidia-cuda-nvcc-cu12), "
                       "e.g. make venv")


def toolkit_versions() -> dict:
    """NVVM's version (numba-cuda's compiler) and ptxas's version line."""
    from numba.cuda.cudadrv import nvvm  # noqa: PLC0415
    out = subprocess.run([ptxas_path(), "--version"], capture_output=True, text=True, check=True).stdout
    release = [ln.strip() for ln in out.splitlines() if "release" in ln]
    return {"nvvm": ".".join(map(str, nvvm.NVVM().get_version())),
            "ptxas": release[0] if release else out.strip().splitlines()[-1]}


def compile_kernel(kind, dtype, cc):
    """PTX text of kernel ``kind`` ("fwd" | "bwd") for ``dtype`` and compute capability ``cc`` (e.g. (9, 0))."""
    from numba import cuda  # noqa: PLC0415
    pyfunc = mesa.kernels(dtype)[kind][0]
    ptx, _ = cuda.compile_ptx(pyfunc, mesa.signature(kind, dtype), cc=cc)
    return ptx


_NUM = {
    "registers": r"Used (\d+) registers",
    "stack_frame": r"(\d+) bytes stack frame",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
    "static_smem": r"(\d+) bytes smem",
}


def parse_ptxas(text):
    """{function name: {registers, stack_frame, spill_stores, spill_loads, static_smem}} from ``ptxas -v`` output.

    ptxas prints, per function, a "Function properties for NAME" line, then the stack / spill line, then (entry
    functions) "Used N registers[, M bytes smem]...". A missing number is 0 (no smem part: no static shared memory).
    """
    blocks = re.split(r"ptxas info\s*: Function properties for ", text)[1:]
    result = {}
    for blk in blocks:
        name, _, body = blk.partition("\n")
        body = body.split("ptxas info    : Compile time")[0]
        body = re.split(r"ptxas info\s*: Compiling entry function", body)[0]
        row = {}
        for key, pat in _NUM.items():
            m = re.search(pat, body)
            row[key] = int(m.group(1)) if m else 0
        result[name.strip()] = row
    return result


def _assemble(ptx, cc):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        r = subprocess.run([ptxas_path(), "-v", f"-arch=sm_{cc[0]}{cc[1]}", str(src), "-o", str(Path(tmp) / "k.o")],
                           capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ptxas failed for sm_{cc[0]}{cc[1]}:\n{r.stderr[-4000:]}")
    return r.stdout + r.stderr


def kernel_resources(ccs=((8, 0), (9, 0)), dtypes=DTYPES, kinds=KINDS):
    """Compile and assemble every kernel; one dict per (kind, dtype, cc) with the entry function's ptxas numbers."""
    rows = []
    for kind in kinds:
        for dt in dtypes:
            for cc in ccs:
                ptx = compile_kernel(kind, dt, cc)
                report = parse_ptxas(_assemble(ptx, cc))
                entry = [n for n in report if f"mesa_{kind}" in n]
                if len(entry) != 1:
                    raise RuntimeError(f"ptxas report: expected one entry function for mesa_{kind}, got {list(report)}")
                rows.append({"kernel": f"mesa_{kind}", "dtype": np.dtype(dt).name, "arch": f"sm_{cc[0]}{cc[1]}",
                             **report[entry[0]]})
    return rows


def shared_table(shapes, dtypes=DTYPES):
    """Dynamic shared memory per block (bytes) at the default block size: one dict per (shape, dtype, kernel, gamma)."""
    rows = []
    for label, d, dv in shapes:
        threads = mesa.default_threads(d, dv)
        for dt in dtypes:
            item = np.dtype(dt).itemsize
            for kind in KINDS:
                for gamma in (False, True):
                    rows.append({"shape": label, "d": d, "dv": dv, "threads": threads, "dtype": np.dtype(dt).name,
                                 "kernel": f"mesa_{kind}", "gamma": gamma,
                                 "shared_bytes": mesa.shared_bytes(kind, d, dv, gamma, item, threads)})
    return rows
