"""A LayerNorm and the dense layer it feeds [L4] + [L1], y = layernorm(x) W (+ c), row block by row block.

Plain twin: none; the readable statement is the reference's composition, which these kernels re-express (below).

Re-expresses ``mesa_ref.ops.layernorm_dense`` (the composition of ``layernorm`` and ``dense``). What differs:

* Forward: each block of R rows is normalised (``layernorm.layernorm_fwd`` on the block's rows) and multiplied
  right away, so the product reads the normalised rows from cache. The LayerNorm's own cache (xhat) is not
  written, and where the backward makes dW itself (``own_dw``, below) neither is the normalised input a. R is
  ``runtime.tuning.LN_DENSE_BLOCK_ROWS``.
* Backward: per block, da = dy W^T goes into a buffer, the block is normalised again from x (the same operations
  on the same rows: bit for bit the forward's a, xhat and rstd) and the LayerNorm's backward of da writes dx, so da
  never goes out to memory. With ``own_dw`` (a wide output, O a multiple of 16 and at least
  ``tuning.OWN_DW_MIN_COLS``: the QKV product) the block's dW = a^T dy is added too (``gemm.atb_rows``) while a and
  dy are in cache; otherwise (the readout, 10 columns) the forward keeps a and the caller makes dW as one product
  over all rows (``mesa_fast.ops.dense.xt_dy``), as the dense op does.
* The products inside the blocks are ``np.dot`` (BLAS, through Numba; on one thread while the caller holds
  ``runtime.blas.one_blas_thread``), and da = dy W^T is ``gemm.ab_rows`` where the caller says the output is narrow
  (``mesa_fast.ops.dense._narrow``), as the dense op does.

The LayerNorm sees the rows in the groups of 16 that one call on rows lo..hi would (R is a multiple of 16). At the
model's shapes y, dx and the LayerNorm's gradients are the composition's bit for bit, and so is dW where the caller
makes it; dW made here sums in another order than BLAS (float32 rounding only). Elsewhere the per-block np.dot may
round differently from NumPy's one product over all rows (tests/ops/test_layernorm_dense_op.py).
Shapes: x, a, dx flat (N*D,) and a2 its (N, D) view; y2, dy2 (N, O); W (D, O); Wt = W^T (O, D), Wtf its flat view;
dW flat (D*O,).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ...runtime.tuning import LN_DENSE_BLOCK_ROWS as R     # rows per block
from .gemm import ab_rows, atb_rows
from .layernorm import layernorm_bwd, layernorm_fwd


@njit(cache=True, nogil=True)
def ln_dense_fwd_rows(x, lw, lb, eps, keep_a, a, a2, W, c, has_c, y2, D, lo, hi):
    """Rows lo..hi-1: a = layernorm(x; lw, lb), y = a W (+ c); a written out when ``keep_a`` (else a, a2 are not
    touched). Returns False when some x is NaN or inf."""
    Ab = np.empty(R * D, x.dtype)
    A2 = Ab.reshape(R, D)
    Hb = np.empty(R * D, x.dtype)
    Rb = np.empty(R, x.dtype)
    O = W.shape[1]
    ok = True
    for s0 in range(lo, hi, R):
        s1 = min(hi, s0 + R)
        r = s1 - s0
        yb = y2[s0:s1]
        if keep_a:
            ok &= layernorm_fwd(x[s0 * D:s1 * D], lw, lb, eps, D, a[s0 * D:s1 * D], Hb[:r * D], Rb[:r])
            np.dot(a2[s0:s1], W, yb)
        else:
            ok &= layernorm_fwd(x[s0 * D:s1 * D], lw, lb, eps, D, Ab[:r * D], Hb[:r * D], Rb[:r])
            np.dot(A2[:r], W, yb)
        if has_c:
            for i in range(r):
                for j in range(O):
                    yb[i, j] += c[j]
    return ok


@njit(cache=True, nogil=True)
def ln_dense_bwd_rows(dy2, dyf, x, lw, lb, eps, Wt, Wtf, narrow, own_dw, dW, dx, D, lo, hi, sw, sb):
    """Rows lo..hi-1: da = dy W^T (a buffer), then dx = the LayerNorm's backward of da, with a, xhat and rstd
    recomputed from x; sw, sb += the LayerNorm's sums of da xhat and of da (float64); with ``own_dw``, dW (D*O
    flat) += a^T dy of the rows."""
    O = dy2.shape[1]
    Ab = np.empty(R * D, x.dtype)
    Hb = np.empty(R * D, x.dtype)
    DA = np.empty(R * D, x.dtype)
    DA2 = DA.reshape(R, D)
    Rb = np.empty(R, x.dtype)
    for s0 in range(lo, hi, R):
        s1 = min(hi, s0 + R)
        r = s1 - s0
        dyb = dyf[s0 * O:s1 * O]
        if narrow:
            ab_rows(dyb, Wtf, O, D, 0, r, DA)
        else:
            np.dot(dy2[s0:s1], Wt, DA2[:r])
        layernorm_fwd(x[s0 * D:s1 * D], lw, lb, eps, D, Ab[:r * D], Hb[:r * D], Rb[:r])
        if own_dw:
            atb_rows(Ab, dyb, D, O, 0, r, dW)
        layernorm_bwd(DA[:r * D], Hb[:r * D], Rb[:r], lw, D, dx[s0 * D:s1 * D], sw, sb)
