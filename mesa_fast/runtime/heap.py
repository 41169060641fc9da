"""Keep freed memory in the process heap (glibc), so that a training step's large temporaries do not page-fault.

    import mesa_fast
    mesa_fast.keep_freed_memory()       # once, in a program's entry point; importing mesa_fast does not do it

Every step of a training run allocates and frees the same few dozen arrays of 0.1-12 MB (activations, the
fused QKV buffer, gradients). With glibc's defaults, an allocation above the (dynamic) mmap threshold gets
fresh pages from the kernel and gives them back when freed, and the top of the heap is trimmed when more than
``M_TRIM_THRESHOLD`` of it is free; either way the next step touches new pages and takes a page fault per
4 KB. Keeping the memory makes a CPU training step markedly faster, through either backend, at the same peak
resident memory (docs/performance.md has the measurements).

``keep_freed_memory()`` sets ``M_MMAP_THRESHOLD`` to glibc's maximum (32 MB: smaller blocks come from the
heap) and ``M_TRIM_THRESHOLD`` to 1 GiB (the heap is not shrunk until that much of it is free); the two values are
``tuning.HEAP_MMAP_THRESHOLD`` and ``tuning.HEAP_TRIM_THRESHOLD``. Cost: the
process keeps its peak heap instead of returning it between steps. It is a process-wide setting of the C
allocator, so it is never made on import: the training entry points call it (``python -m mesa_ref.train
--backend fast``, ``python -m mesa_fast.train``, the benchmarks), and a library user calls it if they want it.

Environment: ``MESA_FAST_KEEP_HEAP=0`` turns the call into a no-op (to compare with glibc's defaults without
editing an entry point); unset or ``1``, the call applies the settings; any other value is a ValueError at the
call. Not Linux/glibc (macOS, musl): nothing happens and the call returns False.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from . import tuning

M_TRIM_THRESHOLD = -1                  # mallopt's parameter numbers (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
ENV_VAR = "MESA_FAST_KEEP_HEAP"

applied = False      # True once the settings took effect (read it as mesa_fast.runtime.heap.applied)


def keep_freed_memory() -> bool:
    """Apply the heap settings above to this process (once; later calls do nothing). Returns whether they are
    in effect. ``MESA_FAST_KEEP_HEAP=0`` makes this a no-op; a value other than 0 or 1 raises ValueError."""
    global applied
    env = os.environ.get(ENV_VAR, "1").strip()
    if env not in ("0", "1", ""):
        raise ValueError(f"{ENV_VAR}: expected 0 (leave the allocator alone) or 1 (keep freed memory), got {env!r}")
    if applied or env == "0" or not sys.platform.startswith("linux"):
        return applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.restype, mallopt.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int]
    applied = (bool(mallopt(M_MMAP_THRESHOLD, tuning.HEAP_MMAP_THRESHOLD))
               and bool(mallopt(M_TRIM_THRESHOLD, tuning.HEAP_TRIM_THRESHOLD)))
    return applied
