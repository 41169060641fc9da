"""A LayerNorm and the dense layer it feeds [L4] + [L1], y = layernorm(x) W + c, on the CPU: the
``mesa_ref.ops.layernorm_dense`` op, same signatures, fused row block by row block.

Re-expresses ``mesa_ref.ops.layernorm_dense`` (the composition of ``layernorm`` and ``dense``: the QKV product of
every block, the final LayerNorm with the readout). Where ``_ln_dense_fusable`` holds, the kernels of
``kernels/simd/layernorm_dense.py`` normalise each block of rows right before its product, the rows shared out to the
thread pool; otherwise, and whenever the fused pass meets a NaN or inf, the composition of the fast ``layernorm``
and ``dense`` ops runs, so errors come out as the reference's. CuPy input, and a reference cache that is not the
composition's, go to the reference op.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mesa_ref.ops import layernorm_dense as _ref_lnd
from mesa_ref.ops._common import all_finite

from ..runtime import tuning
from ..runtime.blas import one_blas_thread
from ..runtime.pool import map_chunks, ranged
from ._common import float_numpy, ln_params_fusable, on_numpy, simd
from .dense import DenseFastCache, _narrow, dense_backward, dense_forward, xt_dy
from .layernorm import layernorm_backward, layernorm_forward

__all__ = ["LayerNormDenseFastCache", "layernorm_dense_forward", "layernorm_dense_backward"]


class LayerNormDenseFastCache(NamedTuple):
    x2: np.ndarray          # (N, D) the input, rows flattened, C-contiguous
    w: np.ndarray           # (D,) LayerNorm weight, C-contiguous
    b: np.ndarray           # (D,) LayerNorm bias, C-contiguous
    eps: float
    a2: object              # (N, D) layernorm(x), the dense layer's input (for dW = a^T dy), or None where the
                            # backward makes dW block by block (``_own_dw``)
    W: np.ndarray           # (D, O)
    has_c: bool             # whether the dense layer has a bias
    x_shape: tuple          # the input's shape (..., D)


def _ln_dense_fusable(x, w, b, W, c, eps) -> bool:
    """Whether the fused kernels take these inputs: NumPy arrays of one float dtype with the shapes the reference
    accepts (no empty axis), finite parameters, eps > 0. Anything else goes through the composition of the
    fast layernorm and dense ops, whose checks raise the reference's ValueErrors."""
    arrays = [a for a in (x, W, c) if a is not None]
    if not float_numpy(arrays):
        return False
    if x.ndim < 1 or x.size == 0 or W.ndim != 2 or W.shape[0] != x.shape[-1] or W.shape[1] == 0:
        return False
    if c is not None and c.shape != (W.shape[1],):
        return False
    return ln_params_fusable(x, w, b, eps) and all(all_finite(a) for a in arrays[1:])


def _own_dw(O) -> bool:
    """Whether the fused backward makes dW = a^T dy itself, block by block from the recomputed a (``gemm.atb_rows``,
    while a and dy are in cache; then the forward does not keep a): for outputs a multiple of 16 and at least
    ``tuning.OWN_DW_MIN_COLS`` wide (the QKV product), where that measured faster than one BLAS product over the
    stored a (docs/performance-archive/notes.md); otherwise (the readout) BLAS, as the dense op."""
    return O % 16 == 0 and O >= tuning.OWN_DW_MIN_COLS


def _ln_dense_composed_forward(x, w, b, W, c, eps):
    a, c1 = layernorm_forward(x, w, b, eps=eps)
    y, c2 = dense_forward(a, W, c)
    return y, _ref_lnd.LayerNormDenseCache(c1, c2)


def layernorm_dense_forward(x, w, b, W, c=None, *, eps=1e-5):
    """[L4] + [L1] y = layernorm(x) W + c -> (y (..., O), cache).

    Fused (``kernels/simd/layernorm_dense.py``: ``ln_dense_fwd_rows``, rows shared out to the thread pool) where
    ``_ln_dense_fusable``: each block of rows is normalised right before its product, and the LayerNorm's own cache
    is not written (nor the normalised rows, where the backward makes dW from recomputed ones: ``_own_dw``).
    Otherwise, and whenever the fused pass meets a NaN or inf in x, the composition of ``layernorm_forward`` and
    ``dense_forward`` runs instead, so errors come out as the reference's; finite inputs whose product overflows
    come back as they are, as there."""
    if not on_numpy(x, w, b, W, c):
        return _ref_lnd.layernorm_dense_forward(x, w, b, W, c, eps=eps)
    if not _ln_dense_fusable(x, w, b, W, c, eps):
        return _ln_dense_composed_forward(x, w, b, W, c, eps)
    dt = x.dtype
    D, O = W.shape
    x2 = np.ascontiguousarray(x.reshape(-1, D))
    N = x2.shape[0]
    keep_a = not _own_dw(O)
    a2 = np.empty((N, D) if keep_a else (0, D), dt)
    y2 = np.empty((N, O), dt)
    wf, bf, Wc = np.ascontiguousarray(w), np.ascontiguousarray(b), np.ascontiguousarray(W)
    cf = c if c is not None else np.zeros(O, dt)
    e = dt.type(eps)
    rows = ranged(simd("layernorm_dense").ln_dense_fwd_rows, x=x2.reshape(-1), lw=wf, lb=bf, eps=e, keep_a=keep_a,
                  a=a2.reshape(-1), a2=a2, W=Wc, c=cf, has_c=c is not None, y2=y2, D=D)
    with one_blas_thread():
        ok = map_chunks(rows, N, min_chunk=tuning.DENSE_MIN_ROWS)
    if not all(ok):
        return _ln_dense_composed_forward(x, w, b, W, c, eps)
    return (y2.reshape(x.shape[:-1] + (O,)),
            LayerNormDenseFastCache(x2, wf, bf, eps, a2 if keep_a else None, Wc, c is not None, tuple(x.shape)))


def _ln_dense_composed_cache(cache: LayerNormDenseFastCache):
    """The composition's cache rebuilt from a fused forward's: the LayerNorm run again on x (the same values)."""
    x2, w, b, eps, a2, W, has_c, x_shape = cache
    a, c1 = layernorm_forward(x2.reshape(x_shape), w, b, eps=eps)
    if a2 is None:
        a2 = np.ascontiguousarray(a.reshape(x2.shape))
    return _ref_lnd.LayerNormDenseCache(c1, DenseFastCache(a2, W, has_c, x_shape))


def layernorm_dense_backward(dy, cache):
    """Returns (dx (..., D), dw, db (D,), dW (D, O), dc (O,) or None).  Fused (``kernels/simd/layernorm_dense.py``:
    ``ln_dense_bwd_rows``: da = dy W^T never leaves the cache; dW = a^T dy block by block there (``_own_dw``), or
    one product per range of rows over the stored a, as the dense op's) for a fused forward's cache and a
    well-formed NumPy dy; the composition of ``dense_backward`` and ``layernorm_backward`` for anything else, and
    when the LayerNorm's sums find a NaN or inf in da (a NaN or inf in dy puts one there), so errors come out as the
    reference's."""
    if not isinstance(cache, LayerNormDenseFastCache):
        if isinstance(cache, _ref_lnd.LayerNormDenseCache):
            da, dW, dc = dense_backward(dy, cache.dense)
            dx, dw, db = layernorm_backward(da, cache.ln)
            return dx, dw, db, dW, dc
        return _ref_lnd.layernorm_dense_backward(dy, cache)
    x2, w, b, eps, a2, W, has_c, x_shape = cache
    D, O = W.shape
    dt = x2.dtype
    if not (isinstance(dy, np.ndarray) and dy.dtype == dt and tuple(dy.shape) == x_shape[:-1] + (O,)):
        return layernorm_dense_backward(dy, _ln_dense_composed_cache(cache))
    kernel = simd("layernorm_dense").ln_dense_bwd_rows
    dy2 = np.ascontiguousarray(dy.reshape(-1, O))
    N = dy2.shape[0]
    dx = np.empty(N * D, dt)
    Wt = np.ascontiguousarray(W.T)
    Wtf = _narrow(W.T, dt)
    narrow = Wtf is not None
    if not narrow:
        Wtf = Wt.reshape(-1)
    e = dt.type(eps)

    own = a2 is None

    def rows(lo, hi):
        sw, sb = np.zeros(D), np.zeros(D)
        dWp = np.zeros(D * O if own else 0, dt)
        kernel(dy2=dy2, dyf=dy2.reshape(-1), x=x2.reshape(-1), lw=w, lb=b, eps=e, Wt=Wt, Wtf=Wtf, narrow=narrow,
               own_dw=own, dW=dWp, dx=dx, D=D, lo=lo, hi=hi, sw=sw, sb=sb)
        return sw, sb, (dWp.reshape(D, O) if own else xt_dy(a2, dy2, lo, hi))

    with one_blas_thread():
        parts = map_chunks(rows, N, min_chunk=tuning.DENSE_MIN_ROWS)
    sw, sb, dW = parts[0]
    dW = np.array(dW, order="C")
    for p in parts[1:]:                     # partial sums in range order: the same result on every run
        sw += p[0]
        sb += p[1]
        dW += p[2]
    if not all_finite(sb):                  # sb: column sums of da = dy W^T
        return layernorm_dense_backward(dy, _ln_dense_composed_cache(cache))
    dc = dy2.sum(axis=0) if has_c else None
    return dx.reshape(x_shape), sw.astype(dt), sb.astype(dt), dW, dc
