"""The thread pool every Numba kernel wrapper runs on, and how a wrapper calls a kernel with many parameters.

Threads rather than ``prange``: a ``parallel=True`` wrapper added many seconds of compilation per dtype and
kernel for the same run time, and the kernels release the GIL anyway (docs/performance.md).

Kernels with many positional parameters (up to 23) are called from Python by name: ``run_groups(kernel, G, q=q,
...)``, ``ranged(kernel, ...)`` and ``in_order(kernel, ...)`` put the named arguments in the kernel's own parameter
order once per op call (a missing or unknown name is a TypeError before any work), so a wrapper cannot pass them
in a drifted order, and each range's call of the compiled kernel is still positional.
"""
from __future__ import annotations

import concurrent.futures
import threading

import numba

from . import tuning

_POOL = None
_POOL_WORKERS = 0
_POOL_LOCK = threading.Lock()


def chunk_bounds(n, nthreads, min_chunk=1):
    """Boundaries 0 = b_0 < b_1 < ... = n of the ranges ``map_chunks`` shares out: "guided" sizes, each range
    ceil(left / (GUIDE * nthreads)) items (GUIDE: ``tuning.GUIDE``) but at least ``min_chunk``, except that a rest
    too short for two ranges of min_chunk is split into two halves (so every range has at least min_chunk // 2
    items, and n < min_chunk gives one range). Big ranges first, small ones last, so that the thread that finishes first
    waits at most about one small range for the other. Depends on its arguments only."""
    m = max(1, min_chunk)
    guide = tuning.GUIDE
    bounds = [0]
    left = n
    while left > 0:
        size = min(left, max(m, -(-left // (guide * nthreads))))
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
    pool = _pool_for(nthreads)
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


def _pool_for(nthreads):
    """The shared executor, with at least nthreads - 1 worker threads."""
    global _POOL, _POOL_WORKERS
    with _POOL_LOCK:
        if _POOL is None or _POOL_WORKERS < nthreads - 1:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=nthreads - 1, thread_name_prefix="mesa_fast")
            _POOL_WORKERS = nthreads - 1
        return _POOL


def shard_bounds(n, nthreads, min_shard):
    """Boundaries 0 = b_0 < ... < b_s = n of ``map_shards``: s = min(nthreads, n // min_shard) (at least 1)
    near-equal contiguous shards, the first ones one sample larger where n does not divide. Depends on its
    arguments only."""
    s = max(1, min(nthreads, n // max(1, min_shard)))
    return [n * i // s for i in range(s + 1)]


def _one_thread(fn, lo, hi):
    """fn(lo, hi) with ``numba.get_num_threads()`` at 1 on this thread (so every op inside runs its ranges
    inline, ``map_chunks``), the thread's previous count put back afterwards (the count is thread-local)."""
    prev = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return fn(lo, hi)
    finally:
        numba.set_num_threads(prev)


def map_shards(fn, n, min_shard=1):
    """[(lo, hi, fn(lo, hi))] over the shards ``shard_bounds(n, numba.get_num_threads(), min_shard)``, one
    shard per thread (the calling one takes the first), every shard with one Numba thread inside, in shard
    order. The coarse-grained counterpart of ``map_chunks``: a whole training step per thread instead of one
    op's rows, so the threads never wait for each other between ops and the Python between the ops overlaps
    with the other thread's kernels. One shard runs on the calling thread as it is (its thread count
    unchanged)."""
    bounds = shard_bounds(n, numba.get_num_threads(), min_shard)
    if len(bounds) == 2:
        return [(0, n, fn(0, n))]
    pool = _pool_for(len(bounds) - 1)
    futures = [pool.submit(_one_thread, fn, bounds[i], bounds[i + 1]) for i in range(1, len(bounds) - 1)]
    try:
        first = _one_thread(fn, bounds[0], bounds[1])
    finally:
        for f in futures:                  # also when the first shard raised: no shard is left running
            f.exception()
    rest = [f.result() for f in futures]   # re-raises a pool thread's exception
    return [(bounds[i], bounds[i + 1], r) for i, r in enumerate([first] + rest)]


def run_groups(kernel, G, **args):
    """Run kernel(g0, g1, ...) over the groups 0..G-1 in contiguous chunks shared out to
    ``numba.get_num_threads()`` threads (``map_chunks``), the kernel's other parameters given by name (``ranged``).
    Returns the chunks' results in order."""
    return map_chunks(ranged(kernel, **args), G)


_RANGES = (("g0", "g1"), ("lo", "hi"))
_SIGNATURES = {}        # kernel -> (parameter names, index of its range (g0, g1) or (lo, hi) or None, the others)


def _signature(kernel):
    sig = _SIGNATURES.get(kernel)
    if sig is None:
        code = getattr(kernel, "py_func", kernel).__code__          # a Numba dispatcher's Python function
        names = code.co_varnames[:code.co_argcount]
        at = next((i for i in range(len(names) - 1) if names[i:i + 2] in _RANGES), None)
        sig = _SIGNATURES[kernel] = (names, at, names if at is None else names[:at] + names[at + 2:])
    return sig


def _ordered(kernel, names, args):
    """The values of ``args`` in the order of ``names`` (TypeError unless every name is there exactly once)."""
    if len(args) == len(names):
        try:
            return tuple(map(args.__getitem__, names))
        except KeyError:
            pass
    unknown = sorted(set(args) - set(names))
    missing = [n for n in names if n not in args]
    raise TypeError(f"{kernel.__name__}: " + ", ".join(([f"unknown argument(s) {unknown}"] if unknown else []) +
                                                       ([f"missing argument(s) {missing}"] if missing else [])))


def in_order(kernel, **args):
    """The values of ``args`` as a tuple in ``kernel``'s parameter order (every parameter named exactly once;
    TypeError otherwise): for launching a kernel that takes positional arguments only (the CUDA kernels)."""
    return _ordered(kernel, _signature(kernel)[0], args)


def ranged(kernel, **args):
    """``kernel`` as a function of its range alone: (lo, hi) -> kernel(..., lo, hi, ...) with every other parameter
    from ``args`` by name. The range is the kernel's adjacent parameters (g0, g1) or (lo, hi). The arguments are put
    in the kernel's parameter order here, once (TypeError for a missing or unknown name), so each range's call is
    positional."""
    names, at, rest = _signature(kernel)
    if at is None:
        raise TypeError(f"{kernel.__name__}: no range parameters (g0, g1) or (lo, hi) in {names}")
    values = _ordered(kernel, rest, args)
    if not at:
        return lambda lo, hi: kernel(lo, hi, *values)
    before, after = values[:at], values[at:]
    return lambda lo, hi: kernel(*before, lo, hi, *after)
