"""The MLP [L1] + [L5], y = gelu(x W1 + b1) W2 + b2, on the CPU: the ``mesa_ref.ops.mlp`` op, same signatures,
fused row block by row block.

Re-expresses ``mesa_ref.ops.mlp`` (the composition of ``dense_gelu`` and ``dense``). Where ``_mlp_fusable`` holds,
the kernels of ``kernels/simd/mlp.py`` run both products and the GELU for a block of rows before the next block
(the hidden activations never leave the cache), the rows shared out to the thread pool; otherwise, and whenever the
fused pass meets a NaN or inf, the composition of the fast ``dense_gelu`` and ``dense`` ops runs, so errors come out
as the reference's. CuPy input, and a reference cache that is not the composition's, go to the reference op.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mesa_ref.ops import mlp as _ref_mlp
from mesa_ref.ops._common import all_finite

from ..runtime import tuning
from ..runtime.blas import one_blas_thread
from ..runtime.pool import map_chunks, ranged
from ._common import float_numpy, on_numpy, simd
from .dense import DenseFastCache, dense_backward, dense_forward
from .dense_gelu import DenseGeluFastCache, dense_gelu_backward, dense_gelu_forward

__all__ = ["MLPFastCache", "mlp_forward", "mlp_backward"]


class MLPFastCache(NamedTuple):
    x2: np.ndarray          # (N, D) the input, rows flattened, C-contiguous
    W1: np.ndarray          # (D, M)
    b1: object              # (M,) or None
    W2: np.ndarray          # (M, E)
    b2: object              # (E,) or None
    x_shape: tuple          # the input's shape (..., D)
    z: np.ndarray           # (N, M) x W1 + b1
    t: np.ndarray           # (N, M) tanh(sqrt(2/pi) (z + 0.044715 z^3)); gelu(z) = 0.5 z (1 + t)


def _mlp_fusable(x, W1, b1, W2, b2) -> bool:
    """Whether the fused kernels take these inputs: NumPy arrays of one float dtype with the shapes the reference
    accepts, D, M and E multiples of 8 (whole lane vectors in the products), finite weights and biases. Anything
    else goes through the composition of the fast dense_gelu and dense ops, whose checks raise the
    reference's ValueErrors."""
    arrays = [a for a in (x, W1, b1, W2, b2) if a is not None]
    if not float_numpy(arrays):
        return False
    if x.ndim < 1 or W1.ndim != 2 or W2.ndim != 2 or x.shape[-1] != W1.shape[0] or W2.shape[0] != W1.shape[1]:
        return False
    D, M, E = W1.shape[0], W1.shape[1], W2.shape[1]
    if D % 8 or M % 8 or E % 8 or D == 0 or M == 0 or E == 0 or x.size == 0:
        return False
    if (b1 is not None and b1.shape != (M,)) or (b2 is not None and b2.shape != (E,)):
        return False
    return all(all_finite(a) for a in arrays[1:])


def _mlp_composed_forward(x, W1, b1, W2, b2):
    g, c1 = dense_gelu_forward(x, W1, b1)
    y, c2 = dense_forward(g, W2, b2)
    return y, _ref_mlp.MLPCache(c1, c2)


def mlp_forward(x, W1, b1, W2, b2):
    """[L1] + [L5] y = gelu(x W1 + b1) W2 + b2.  x (..., D), W1 (D, M), b1 (M,) or None, W2 (M, E), b2 (E,) or None
    -> (y (..., E), cache).

    Fused (``kernels/simd/mlp.py``: ``mlp_fwd_rows``, rows shared out to the thread pool) where ``_mlp_fusable``;
    otherwise, and whenever the fused pass meets a NaN or inf in z = x W1 + b1 (a NaN or inf in x puts one there),
    the composition of ``dense_gelu_forward`` and ``dense_forward`` runs instead, so errors and overflow come out as
    the reference's. Finite g whose product with W2 overflows passes, as there."""
    if not on_numpy(x, W1, b1, W2, b2):
        return _ref_mlp.mlp_forward(x, W1, b1, W2, b2)
    if not _mlp_fusable(x, W1, b1, W2, b2):
        return _mlp_composed_forward(x, W1, b1, W2, b2)
    dt = x.dtype
    D, M, E = W1.shape[0], W1.shape[1], W2.shape[1]
    x2 = np.ascontiguousarray(x.reshape(-1, D))
    N = x2.shape[0]
    z = np.empty((N, M), dt)
    t = np.empty((N, M), dt)
    y = np.empty((N, E), dt)
    b1f = b1 if b1 is not None else np.zeros(M, dt)
    b2f = b2 if b2 is not None else np.zeros(E, dt)
    W1f, W2f = np.ascontiguousarray(W1).reshape(-1), np.ascontiguousarray(W2).reshape(-1)
    rows = ranged(simd("mlp").mlp_fwd_rows, x=x2.reshape(-1), W1=W1f, b1=b1f, W2=W2f, b2=b2f, D=D, M=M, E=E,
                  z=z.reshape(-1), t=t.reshape(-1), y=y.reshape(-1))
    with one_blas_thread():
        ok = map_chunks(rows, N, min_chunk=tuning.DENSE_MIN_ROWS)
    if not all(ok):
        return _mlp_composed_forward(x, W1, b1, W2, b2)
    return y.reshape(x.shape[:-1] + (E,)), MLPFastCache(x2, W1, b1, W2, b2, tuple(x.shape), z, t)


def _mlp_composed_caches(cache: MLPFastCache):
    """The composition's caches (DenseGeluFastCache, DenseFastCache) rebuilt from a fused forward's: g = 0.5 z
    (1 + t) as the forward computed it."""
    x2, W1, b1, W2, b2, x_shape, z, t = cache
    g = (z.dtype.type(0.5) * z) * (z.dtype.type(1.0) + t)
    c1 = DenseGeluFastCache(x2, W1, b1 is not None, x_shape, z, t)
    c2 = DenseFastCache(g, W2, b2 is not None, x_shape[:-1] + (W1.shape[1],))
    return c1, c2


def mlp_backward(dy, cache):
    """Returns (dx (..., D), dW1 (D, M), db1 (M,) or None, dW2 (M, E), db2 (E,) or None).  Fused
    (``kernels/simd/mlp.py``: ``mlp_bwd_rows``: dg = dy W2^T never leaves the cache) for a fused forward's cache and
    a well-formed NumPy dy; the composition of ``dense_backward`` and ``dense_gelu_backward`` for anything else, and
    when the fused pass meets a NaN or inf in dg (a NaN or inf in dy puts one there), so errors and overflow come
    out as the reference's."""
    if not isinstance(cache, MLPFastCache):
        if isinstance(cache, _ref_mlp.MLPCache):
            dg, dW2, db2 = dense_backward(dy, cache.fc2)
            dx, dW1, db1 = dense_gelu_backward(dg, cache.fc1)
            return dx, dW1, db1, dW2, db2
        return _ref_mlp.mlp_backward(dy, cache)
    x2, W1, b1, W2, b2, x_shape, z, t = cache
    D, M, E = W1.shape[0], W1.shape[1], W2.shape[1]
    if not (isinstance(dy, np.ndarray) and dy.dtype == z.dtype and tuple(dy.shape) == x_shape[:-1] + (E,)):
        c1, c2 = _mlp_composed_caches(cache)
        return mlp_backward(dy, _ref_mlp.MLPCache(c1, c2))
    kernel = simd("mlp").mlp_bwd_rows
    dt = z.dtype
    dy2 = np.ascontiguousarray(dy.reshape(-1, E))
    N = dy2.shape[0]
    dx = np.empty((N, D), dt)
    W1t = np.ascontiguousarray(W1.T).reshape(-1)
    W2t = np.ascontiguousarray(W2.T).reshape(-1)

    def rows(lo, hi):
        dW1 = np.zeros(D * M, dt)
        dW2t = np.zeros(E * M, dt)
        db1 = np.zeros(M)
        db2 = np.zeros(E)
        ok = kernel(dy=dy2.reshape(-1), x=x2.reshape(-1), z=z.reshape(-1), t=t.reshape(-1), W1t=W1t, W2t=W2t, D=D, M=M,
                    E=E, lo=lo, hi=hi, dx=dx.reshape(-1), dW1=dW1, dW2t=dW2t, db1=db1, db2=db2)
        return dW1, dW2t, db1, db2, ok

    with one_blas_thread():
        parts = map_chunks(rows, N, min_chunk=tuning.DENSE_MIN_ROWS)
    if not all(p[4] for p in parts):
        c1, c2 = _mlp_composed_caches(cache)
        return mlp_backward(dy, _ref_mlp.MLPCache(c1, c2))
    dW1, dW2t, db1, db2, _ = parts[0]
    for p in parts[1:]:                     # partial sums in range order: the same result on every run
        dW1 += p[0]
        dW2t += p[1]
        db1 += p[2]
        db2 += p[3]
    return (dx.reshape(x_shape), dW1.reshape(D, M), (db1.astype(dt) if b1 is not None else None),
            np.ascontiguousarray(dW2t.reshape(E, M).T), (db2.astype(dt) if b2 is not None else None))
