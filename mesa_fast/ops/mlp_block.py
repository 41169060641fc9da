"""The pre-LayerNorm MLP sub-block with its residual [L4] + [L1] + [L5], y = x + mlp(layernorm(x)), on the CPU: the
``mesa_ref.ops.mlp_block`` op, same signatures, fused row block by row block.

Re-expresses ``mesa_ref.ops.mlp_block`` (the composition of ``layernorm``, ``mlp`` and the addition). Where
``_block_fusable`` holds, the kernels of ``kernels/simd/mlp_block.py`` normalise each block of rows, run the MLP on
it and add the residual as its output is written, the rows shared out to the thread pool; otherwise, and whenever
the fused pass meets a NaN or inf, the composition of the fast ``layernorm`` and ``mlp`` ops and the addition runs,
so errors come out as the reference's. CuPy input, and a reference cache that is not the composition's, go to the
reference op.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mesa_ref.ops import mlp_block as _ref_block
from mesa_ref.ops._common import all_finite

from ..runtime import tuning
from ..runtime.pool import map_chunks, ranged
from ._common import ln_params_fusable, on_numpy, simd
from .layernorm import layernorm_backward, layernorm_forward
from .mlp import MLPFastCache, _mlp_fusable, mlp_backward, mlp_forward

__all__ = ["MLPBlockFastCache", "mlp_block_forward", "mlp_block_backward"]


class MLPBlockFastCache(NamedTuple):
    x2: np.ndarray          # (N, D) the input (the residual stream), rows flattened, C-contiguous
    w: np.ndarray           # (D,) LayerNorm weight, C-contiguous
    b: np.ndarray           # (D,) LayerNorm bias, C-contiguous
    eps: float
    W1: np.ndarray          # (D, M)
    b1: object              # (M,) or None
    W2: np.ndarray          # (M, D)
    b2: object              # (D,) or None
    x_shape: tuple          # the input's shape (..., D)
    z: np.ndarray           # (N, M) layernorm(x) W1 + b1
    t: np.ndarray           # (N, M) tanh(sqrt(2/pi) (z + 0.044715 z^3))


def _block_fusable(x, w, b, W1, b1, W2, b2, eps) -> bool:
    """Whether the fused kernels take these inputs: the MLP's conditions (``_mlp_fusable``), an MLP that maps back
    to the width D, finite LayerNorm parameters of shape (D,) and x's dtype, eps > 0. Anything else goes through
    the composition of the fast layernorm and mlp ops, whose checks raise the reference's ValueErrors."""
    return (_mlp_fusable(x, W1, b1, W2, b2) and W2.shape[1] == x.shape[-1]
            and ln_params_fusable(x, w, b, eps))


def _block_composed_forward(x, w, b, W1, b1, W2, b2, eps):
    m, c1 = layernorm_forward(x, w, b, eps=eps)
    delta, c2 = mlp_forward(m, W1, b1, W2, b2)
    _ref_block.check_residual_width(x, W2)
    return x + delta, _ref_block.MLPBlockCache(c1, c2)


def mlp_block_forward(x, w, b, W1, b1, W2, b2, *, eps=1e-5):
    """[L4] + [L1] + [L5] y = x + gelu(layernorm(x) W1 + b1) W2 + b2 -> (y (..., D), cache).

    Fused (``kernels/simd/mlp_block.py``: ``ln_mlp_fwd_rows``, rows shared out to the thread pool) where
    ``_block_fusable``: the normalised input and the MLP's output stay in cache, block by block. Otherwise, and
    whenever the fused pass meets a NaN or inf in x or in z = layernorm(x) W1 + b1, the composition of
    ``layernorm_forward``, ``mlp_forward`` and the addition runs instead, so errors and overflow come out as the
    reference's."""
    if not on_numpy(x, w, b, W1, b1, W2, b2):
        return _ref_block.mlp_block_forward(x, w, b, W1, b1, W2, b2, eps=eps)
    if not _block_fusable(x, w, b, W1, b1, W2, b2, eps):
        return _block_composed_forward(x, w, b, W1, b1, W2, b2, eps)
    dt = x.dtype
    D, M = W1.shape
    x2 = np.ascontiguousarray(x.reshape(-1, D))
    N = x2.shape[0]
    z = np.empty((N, M), dt)
    t = np.empty((N, M), dt)
    y = np.empty((N, D), dt)
    wf, bf = np.ascontiguousarray(w), np.ascontiguousarray(b)
    b1f = b1 if b1 is not None else np.zeros(M, dt)
    b2f = b2 if b2 is not None else np.zeros(D, dt)
    W1f, W2f = np.ascontiguousarray(W1).reshape(-1), np.ascontiguousarray(W2).reshape(-1)
    e = dt.type(eps)
    rows = ranged(simd("mlp_block").ln_mlp_fwd_rows, x=x2.reshape(-1), lw=wf, lb=bf, eps=e, W1=W1f, b1=b1f, W2=W2f,
                  b2=b2f, D=D, M=M, z=z.reshape(-1), t=t.reshape(-1), y=y.reshape(-1))
    ok = map_chunks(rows, N, min_chunk=tuning.DENSE_MIN_ROWS)
    if not all(ok):
        return _block_composed_forward(x, w, b, W1, b1, W2, b2, eps)
    return y.reshape(x.shape), MLPBlockFastCache(x2, wf, bf, eps, W1, b1, W2, b2, tuple(x.shape), z, t)


def _block_composed_cache(cache: MLPBlockFastCache):
    """The composition's cache rebuilt from a fused forward's: the LayerNorm run again on x (the same values)."""
    x2, w, b, eps, W1, b1, W2, b2, x_shape, z, t = cache
    m, c1 = layernorm_forward(x2.reshape(x_shape), w, b, eps=eps)
    m2 = np.ascontiguousarray(m.reshape(x2.shape))
    return _ref_block.MLPBlockCache(c1, MLPFastCache(m2, W1, b1, W2, b2, x_shape, z, t))


def mlp_block_backward(dy, cache):
    """Returns (dx (..., D), dw, db (D,), dW1 (D, M), db1 (M,) or None, dW2 (M, D), db2 (D,) or None).  Fused
    (``kernels/simd/mlp_block.py``: ``ln_mlp_bwd_rows``) for a fused forward's cache and a well-formed NumPy dy; the
    composition of ``mlp_backward``, ``layernorm_backward`` and the addition for anything else, and when the fused
    pass meets a NaN or inf in dy W2^T or in the LayerNorm's input gradient, so errors come out as the reference's."""
    if not isinstance(cache, MLPBlockFastCache):
        if isinstance(cache, _ref_block.MLPBlockCache):
            dm, dW1, db1, dW2, db2 = mlp_backward(dy, cache.mlp)
            dx, dw, db = layernorm_backward(dm, cache.ln)
            return dy + dx, dw, db, dW1, db1, dW2, db2
        return _ref_block.mlp_block_backward(dy, cache)
    x2, w, b, eps, W1, b1, W2, b2, x_shape, z, t = cache
    D, M = W1.shape
    dt = z.dtype
    if not (isinstance(dy, np.ndarray) and dy.dtype == dt and tuple(dy.shape) == x_shape):
        return mlp_block_backward(dy, _block_composed_cache(cache))
    kernel = simd("mlp_block").ln_mlp_bwd_rows
    dy2 = np.ascontiguousarray(dy.reshape(-1, D))
    N = dy2.shape[0]
    dx = np.empty((N, D), dt)
    W1t = np.ascontiguousarray(W1.T).reshape(-1)
    W2t = np.ascontiguousarray(W2.T).reshape(-1)
    e = dt.type(eps)

    def rows(lo, hi):
        dW1 = np.zeros(D * M, dt)
        dW2t = np.zeros(D * M, dt)
        db1, db2, sw, sb = np.zeros(M), np.zeros(D), np.zeros(D), np.zeros(D)
        ok = kernel(dy=dy2.reshape(-1), x=x2.reshape(-1), lw=w, lb=b, eps=e, z=z.reshape(-1), t=t.reshape(-1),
                    W1t=W1t, W2t=W2t, D=D, M=M, lo=lo, hi=hi, dx=dx.reshape(-1), dW1=dW1, dW2t=dW2t, db1=db1, db2=db2,
                    sw=sw, sb=sb)
        return dW1, dW2t, db1, db2, sw, sb, ok

    parts = map_chunks(rows, N, min_chunk=tuning.DENSE_MIN_ROWS)
    dW1, dW2t, db1, db2, sw, sb, _ = parts[0]
    for p in parts[1:]:                     # partial sums in range order: the same result on every run
        dW1 += p[0]
        dW2t += p[1]
        db1 += p[2]
        db2 += p[3]
        sw += p[4]
        sb += p[5]
    if not (all(p[6] for p in parts) and all_finite(sb)):     # sb: column sums of the LayerNorm's input gradient
        return mlp_block_backward(dy, _block_composed_cache(cache))
    return (dx.reshape(x_shape), sw.astype(dt), sb.astype(dt), dW1.reshape(D, M),
            (db1.astype(dt) if b1 is not None else None), np.ascontiguousarray(dW2t.reshape(D, M).T),
            (db2.astype(dt) if b2 is not None else None))
