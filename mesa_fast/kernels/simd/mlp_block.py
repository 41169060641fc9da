"""The pre-LayerNorm MLP sub-block with its residual [L4] + [L1] + [L5], y = x + mlp(layernorm(x)), row block by
row block (float32 or float64).

Plain twin: none; the readable statement is the reference's ``mesa_ref.ops.mlp_block`` (the composition of
``layernorm``, ``mlp`` and the addition), which these kernels re-express, and the fast op checks them bit for bit
against the fast composition (tests/ops/test_mlp_block_op.py).

The sub-block goes the same way as the MLP (``mlp.py``, whose block kernels it calls): each block of rows is
normalised into a buffer right before its products (``layernorm.layernorm_fwd`` on the block's rows), and the
residual is added as the block's output is written, so neither the normalised input nor the MLP's output goes out
to memory. The backward normalises the block again (the same operations on the same rows: bit for bit the forward's
values) instead of reading a stored copy, and runs the LayerNorm's backward and the residual addition on the block
while its gradient is in cache. The LayerNorm sees the rows in the groups of 16 that one call on rows lo..hi would
(R is a multiple of 16), so with lo = 0 the results are those of the three ops one after the other, bit for bit.
Blocks of R rows (``runtime.tuning.MLP_BLOCK_ROWS``); shapes as in ``mlp.py`` with E = D, and lw, lb (D,) the
LayerNorm's parameters, sw, sb (D,) float64 accumulators of their gradients.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ...runtime.tuning import MLP_BLOCK_ROWS as R     # rows per block
from .layernorm import layernorm_bwd, layernorm_fwd
from .mlp import _block_bwd, _block_fwd


@njit(cache=True, nogil=True)
def ln_mlp_fwd_rows(x, lw, lb, eps, W1, b1, W2, b2, D, M, lo, hi, z, t, y):
    """Rows lo..hi-1: m = layernorm(x; lw, lb), z = m W1 + b1, t, y = x + (gelu(z) W2 + b2) (E = D). Returns False
    when some x or z is NaN or inf (the LayerNorm's row sums find the first, the GELU the second)."""
    G = np.empty(R * M, x.dtype)
    Mb = np.empty(R * D, x.dtype)
    Hb = np.empty(R * D, x.dtype)
    Rb = np.empty(R, x.dtype)
    ok = True
    for s0 in range(lo, hi, R):
        s1 = min(hi, s0 + R)
        r = s1 - s0
        xb = x[s0 * D:s1 * D]
        ok &= layernorm_fwd(xb, lw, lb, eps, D, Mb[:r * D], Hb[:r * D], Rb[:r])
        yb = y[s0 * D:s1 * D]
        ok &= _block_fwd(Mb, W1, b1, W2, D, M, D, r, z[s0 * M:s1 * M], G, t[s0 * M:s1 * M], yb)
        for i in range(r):
            for j in range(D):
                yb[i * D + j] = xb[i * D + j] + (yb[i * D + j] + b2[j])
    return ok


@njit(cache=True, nogil=True)
def ln_mlp_bwd_rows(dy, x, lw, lb, eps, z, t, W1t, W2t, D, M, lo, hi, dx, dW1, dW2t, db1, db2, sw, sb):
    """Rows lo..hi-1 of the sub-block's backward: dm = dz W1^T with dz = (dy W2^T) gelu'(z), then the LayerNorm's
    backward of dm, dx = dy + that; adds the rows' m^T dz to dW1 (D*M), dy^T g to dW2t (E*M), the column sums of
    dz, dy to db1, db2 and the LayerNorm's sums of dm xhat, dm to sw, sb (float64). m and xhat are recomputed
    from x. Returns False when some dy W2^T is NaN or inf."""
    G = np.empty(R * M, x.dtype)
    DG = np.empty(R * M, x.dtype)
    DZ = np.empty(R * M, x.dtype)
    Mb = np.empty(R * D, x.dtype)
    Hb = np.empty(R * D, x.dtype)
    DM = np.empty(R * D, x.dtype)
    DX = np.empty(R * D, x.dtype)
    Rb = np.empty(R, x.dtype)
    ok = True
    for s0 in range(lo, hi, R):
        s1 = min(hi, s0 + R)
        r = s1 - s0
        layernorm_fwd(x[s0 * D:s1 * D], lw, lb, eps, D, Mb[:r * D], Hb[:r * D], Rb[:r])
        dyb = dy[s0 * D:s1 * D]
        ok &= _block_bwd(dyb, Mb, z[s0 * M:s1 * M], t[s0 * M:s1 * M], W1t, W2t, D, M, D, r, G, DG, DZ, DM, dW1, dW2t,
                         db1, db2)
        layernorm_bwd(DM[:r * D], Hb[:r * D], Rb[:r], lw, D, DX[:r * D], sw, sb)
        dxb = dx[s0 * D:s1 * D]
        for e in range(r * D):
            dxb[e] = dyb[e] + DX[e]
    return ok
