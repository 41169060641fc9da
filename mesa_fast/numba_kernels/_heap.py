"""Keep freed memory in the process heap (glibc), so that a training step's large temporaries do not page-fault.

Every step of a training run allocates and frees the same few dozen arrays of 0.1-12 MB (activations, the
fused QKV buffer, gradients). With glibc's defaults, an allocation above the (dynamic) mmap threshold gets
fresh pages from the kernel and gives them back when freed, and the top of the heap is trimmed when more than
``M_TRIM_THRESHOLD`` of it is free; either way the next step touches new pages and takes a page fault per
4 KB. Measured on the 2-core Xeon VM (2026-11-29, ``MESA_FAST_KEEP_HEAP=1|0 python
benchmarks/profile_train_step.py --backend fast|ref --steps 20``, default model, batch 256, two alternating
rounds): mesa_fast 56-69 ms per step with glibc's defaults against 41-43 ms with freed memory kept; mesa_ref
(which gets the setting too when mesa_fast is imported) 106-118 against 93-96 ms. Peak resident memory stayed at
276-338 MB either way.

``keep_freed_memory()`` sets ``M_MMAP_THRESHOLD`` to glibc's maximum (32 MB: smaller blocks come from the
heap) and ``M_TRIM_THRESHOLD`` to 1 GiB (the heap is not shrunk until that much of it is free). Cost: the
process keeps its peak heap instead of returning it between steps (the peak itself does not grow, see
above). It is a process-wide setting, applied once on ``import mesa_fast`` (by ``_pool.py``, which the
dense op's module imports); ``MESA_FAST_KEEP_HEAP=0`` in the environment leaves the allocator alone. Not glibc
(macOS, musl): nothing happens.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024      # glibc's largest accepted value on 64-bit
TRIM_THRESHOLD = 1 << 30

applied = False      # True once the settings took effect (users can read mesa_fast.numba_kernels._heap.applied)


def keep_freed_memory() -> bool:
    """Apply the settings above (once); returns whether they are in effect."""
    global applied
    if applied or os.environ.get("MESA_FAST_KEEP_HEAP", "1") == "0" or not sys.platform.startswith("linux"):
        return applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.restype, mallopt.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int]
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return applied
