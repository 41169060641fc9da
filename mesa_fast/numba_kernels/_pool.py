"""The thread pool every Numba kernel wrapper runs on, and the array preparation they share.

Threads rather than ``prange``: a ``parallel=True`` wrapper cost ~17 s of extra compilation per
dtype and kernel (measured), for the same run time, because the kernels release the GIL anyway.
"""
from __future__ import annotations

import concurrent.futures
import threading

import numba
import numpy as np

from ._heap import keep_freed_memory

keep_freed_memory()      # every kernel wrapper imports this module: see _heap.py

_POOL = None
_POOL_WORKERS = 0
_POOL_LOCK = threading.Lock()


def map_chunks(fn, n, *args, min_chunk=1):
    """[fn(lo, hi, *args) for contiguous ranges [lo, hi) covering 0..n-1], one range per thread of
    ``numba.get_num_threads()`` (fewer so that each range has at least ``min_chunk`` items); the calling
    thread does the first range.  Results in range order."""
    nthreads = max(1, min(numba.get_num_threads(), n // max(1, min_chunk)))
    if nthreads <= 1:
        return [fn(0, n, *args)]
    global _POOL, _POOL_WORKERS
    with _POOL_LOCK:
        if _POOL is None or _POOL_WORKERS < nthreads - 1:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=nthreads - 1, thread_name_prefix="mesa_fast")
            _POOL_WORKERS = nthreads - 1
        pool = _POOL
    bounds = [n * i // nthreads for i in range(nthreads + 1)]
    futures = [pool.submit(fn, bounds[i], bounds[i + 1], *args) for i in range(1, nthreads)]
    first = fn(bounds[0], bounds[1], *args)
    return [first] + [f.result() for f in futures]


def run_groups(kernel, G, *args):
    """Run kernel(g0, g1, *args) over the groups 0..G-1, split into contiguous chunks across
    ``numba.get_num_threads()`` threads; the calling thread does the first chunk. Returns the chunks' results."""
    return map_chunks(kernel, G, *args)


def contiguous_writeable(x):
    """C-contiguous, writeable ``x``, copied only when needed (a read-only array is a separate Numba
    type and would trigger a recompile)."""
    x = np.ascontiguousarray(x)
    if not x.flags.writeable:
        x = x.copy()
    return x
