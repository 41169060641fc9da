"""The thread pool every Numba kernel wrapper runs on, and the array preparation they share.

Threads rather than ``prange``: a ``parallel=True`` wrapper added many seconds of compilation per dtype and
kernel for the same run time, and the kernels release the GIL anyway (docs/performance.md).
"""
from __future__ import annotations

import concurrent.futures
import threading

import numba
import numpy as np

_POOL = None
_POOL_WORKERS = 0
_POOL_LOCK = threading.Lock()


GUIDE = 2      # map_chunks: each range is 1/(GUIDE * threads) of what is left; the threads take them in turn


def chunk_bounds(n, nthreads, min_chunk=1):
    """Boundaries 0 = b_0 < b_1 < ... = n of the ranges ``map_chunks`` shares out: "guided" sizes, each range
    ceil(left / (GUIDE * nthreads)) items but at least ``min_chunk``, except that a rest too short for two
    ranges of min_chunk is split into two halves (so every range has at least min_chunk // 2 items, and n
    < min_chunk gives one range). Big ranges first, small ones last, so that the thread that finishes first
    waits at most about one small range for the other. Depends on its arguments only."""
    m = max(1, min_chunk)
    bounds = [0]
    left = n
    while left > 0:
        size = min(left, max(m, -(-left // (GUIDE * nthreads))))
        if 0 < left - size < m:
            size = left - left // 2 if left >= m else left
        bounds.append(bounds[-1] + size)
        left -= size
    return bounds


def map_chunks(fn, n, *args, min_chunk=1):
    """[fn(lo, hi, *args) for contiguous ranges [lo, hi) covering 0..n-1], in range order.

    The ranges are ``chunk_bounds(n, nthreads, min_chunk)``, nthreads = ``numba.get_num_threads()`` (fewer
    when n < nthreads * min_chunk), fixed by these numbers alone, and the threads (the calling one and the
    pool's) take the next one not yet started until none is left, so a thread that starts late or runs slow
    does less and nobody waits long for it. (With one fixed range per thread the pool's thread, starting later
    and without the caller's data in its cache, finished well after the calling thread, which then sat idle;
    docs/performance.md.) Each result
    depends on its range only, never on which thread ran it, so the results (and a sum of partial
    products taken in range order) are the same on every run."""
    nthreads = max(1, min(numba.get_num_threads(), n // max(1, min_chunk)))
    if nthreads <= 1:
        return [fn(0, n, *args)]
    global _POOL, _POOL_WORKERS
    with _POOL_LOCK:
        if _POOL is None or _POOL_WORKERS < nthreads - 1:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=nthreads - 1, thread_name_prefix="mesa_fast")
            _POOL_WORKERS = nthreads - 1
        pool = _POOL
    bounds = chunk_bounds(n, nthreads, min_chunk)
    pieces = len(bounds) - 1
    results = [None] * pieces
    turn = iter(range(pieces))
    turn_lock = threading.Lock()

    def take():
        while True:
            with turn_lock:
                i = next(turn, None)
            if i is None:
                return
            results[i] = fn(bounds[i], bounds[i + 1], *args)

    futures = [pool.submit(take) for _ in range(nthreads - 1)]
    try:
        take()
    finally:
        for f in futures:                  # also when take() raised: no thread is left writing to the outputs
            f.exception()
    for f in futures:
        f.result()                         # re-raises a pool thread's exception
    return results


def run_groups(kernel, G, *args):
    """Run kernel(g0, g1, *args) over the groups 0..G-1 in contiguous chunks shared out to
    ``numba.get_num_threads()`` threads (``map_chunks``). Returns the chunks' results in order."""
    return map_chunks(kernel, G, *args)


def contiguous_writeable(x):
    """C-contiguous, writeable ``x``, copied only when needed (a read-only array is a separate Numba
    type and would trigger a recompile)."""
    x = np.ascontiguousarray(x)
    if not x.flags.writeable:
        x = x.copy()
    return x
