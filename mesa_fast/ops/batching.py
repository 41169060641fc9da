"""``batch_map`` on the CPU: one shard of the batch per thread (mesa_ref/ops/batching.py says why that is exact).

Each thread runs the whole forward and backward of its shard with one Numba thread, instead of every op splitting
its rows over the threads (``runtime.pool.map_chunks``). That removes the threads' wait for each other at the end of
every op, and the Python between the ops of one thread overlaps with the other thread's kernels. The BLAS libraries
are held at one thread while the shards run (``runtime.blas.one_blas_thread``), so that a NumPy product inside a
shard does not start BLAS threads that would compete with the shards. CuPy input, one Numba thread, or a batch too
small for two shards of ``tuning.SHARD_MIN_POSITIONS`` positions (samples x sequence length: the work of a shard,
and what pays for its share of the per-op Python): one shard on the calling thread, as the reference."""
from __future__ import annotations

import numba
import numpy as np

from mesa_ref.ops.batching import batch_size

from ..runtime import tuning
from ..runtime.blas import one_blas_thread
from ..runtime.pool import map_shards

__all__ = ["batch_map"]


def batch_map(fn, x):
    """[(lo, hi, fn(lo, hi))] over contiguous shards of the batch x's leading axis, one per Numba thread
    (``runtime.pool.shard_bounds``), in order; ``fn`` runs with one Numba thread inside each shard."""
    n = batch_size(x)
    min_shard = min_samples(x)
    if not isinstance(x, np.ndarray) or n < 2 * min_shard or numba.get_num_threads() < 2:
        return [(0, n, fn(0, n))]
    with one_blas_thread():
        return map_shards(fn, n, min_shard=min_shard)


def min_samples(x) -> int:
    """Samples per shard that make ``tuning.SHARD_MIN_POSITIONS`` positions, for a batch x (B, T, ...) or (B, T)
    (token ids); (B,) counts one position per sample."""
    T = int(x.shape[1]) if x.ndim >= 2 else 1
    return max(1, -(-tuning.SHARD_MIN_POSITIONS // max(1, T)))
