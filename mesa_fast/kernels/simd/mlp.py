"""The MLP [L1] + [L5], y = gelu(x W1 + b1) W2 + b2, row block by row block (float32 or float64).

Plain twin: none; the readable statement is the reference's ``mesa_ref.ops.mlp`` (the composition of ``dense_gelu``
and ``dense``), which these kernels re-express, and the fast op checks them against the fast composition
(tests/ops/test_mlp_op.py).

A block of R rows goes through both products and the GELU before the next block starts, so the block's hidden
activations (R x M) stay in cache: the forward writes z = x W1 + b1 and t = tanh(...) (what the backward needs)
and never the GELU output g; the backward recomputes g = 0.5 z (1 + t) for the block (bit for bit the forward's
value, the same operations in the same order as ``activations._gelu_vec``) and never writes dg = dy W2^T out.
R is ``runtime.tuning.MLP_BLOCK_ROWS``. The products are those of ``gemm.py`` on lane vectors (sums along the summed
index in index order, float32 rounding only); the GELU is ``activations.bias_gelu_fwd`` / ``gelu_bwd_rows``.
Shapes are flat C-order arrays: x, dx (N*D), z, t (N*M), y, dy (N*E), W1 (D*M), W2 (M*E), W1t = W1^T (M*D),
W2t = W2^T (E*M); M and E multiples of 8.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ...runtime.tuning import MLP_BLOCK_ROWS as R     # rows per block
from .activations import bias_gelu_fwd, gelu_bwd_rows
from .gemm import ab_panels, ab_rows, atb_rows


@njit(cache=True, nogil=True)
def _block_fwd(xb, W1, b1, W2, D, M, E, r, zb, G, tb, yb):
    """One block of r rows: zb = xb W1 + b1, tb = tanh(...), G = gelu(zb), yb = G W2 (without b2; the callers add
    it, and the residual). Returns False when some z is NaN or inf."""
    ab_panels(xb, W1, D, M, 0, r, zb, True)
    ok = bias_gelu_fwd(zb, b1, M, G[:r * M], tb)
    ab_rows(G, W2, M, E, 0, r, yb)
    return ok


@njit(cache=True, nogil=True)
def _block_bwd(dyb, xb, zb, tb, W1t, W2t, D, M, E, r, G, DG, DZ, dxb, dW1, dW2t, db1, db2):
    """One block of r rows: g = 0.5 z (1 + t) again, dW2t += dy^T g, db2 += the column sums of dy, dz = (dy W2^T)
    gelu'(z) with db1 += its column sums, dW1 += x^T dz, dxb = dz W1^T. Returns False when some dy W2^T is NaN or
    inf."""
    half = xb.dtype.type(0.5)
    one = xb.dtype.type(1.0)
    for e in range(r * M):
        G[e] = half * zb[e] * (one + tb[e])
    atb_rows(dyb, G, E, M, 0, r, dW2t)
    for i in range(r):
        for j in range(E):
            db2[j] += float(dyb[i * E + j])
    ab_panels(dyb, W2t, E, M, 0, r, DG, True)
    ok = gelu_bwd_rows(DG[:r * M], zb, tb, M, DZ[:r * M], db1)
    atb_rows(xb, DZ, D, M, 0, r, dW1)
    ab_rows(DZ, W1t, M, D, 0, r, dxb)
    return ok


@njit(cache=True, nogil=True)
def mlp_fwd_rows(x, W1, b1, W2, b2, D, M, E, lo, hi, z, t, y):
    """Rows lo..hi-1: z = x W1 + b1, t, y = gelu(z) W2 + b2. Returns False when some z is NaN or inf."""
    G = np.empty(R * M, x.dtype)
    ok = True
    for s0 in range(lo, hi, R):
        s1 = min(hi, s0 + R)
        r = s1 - s0
        yb = y[s0 * E:s1 * E]
        ok &= _block_fwd(x[s0 * D:s1 * D], W1, b1, W2, D, M, E, r, z[s0 * M:s1 * M], G, t[s0 * M:s1 * M], yb)
        for i in range(r):
            for j in range(E):
                yb[i * E + j] += b2[j]
    return ok


@njit(cache=True, nogil=True)
def mlp_bwd_rows(dy, x, z, t, W1t, W2t, D, M, E, lo, hi, dx, dW1, dW2t, db1, db2):
    """Rows lo..hi-1: dx = dz W1^T with dz = (dy W2^T) gelu'(z); adds the rows' x^T dz to dW1 (D*M), dy^T g to
    dW2t (E*M, i.e. dW2 transposed), the column sums of dz and dy to db1, db2 (float64). Returns False when some
    dy W2^T is NaN or inf."""
    G = np.empty(R * M, x.dtype)
    DG = np.empty(R * M, x.dtype)
    DZ = np.empty(R * M, x.dtype)
    ok = True
    for s0 in range(lo, hi, R):
        s1 = min(hi, s0 + R)
        ok &= _block_bwd(dy[s0 * E:s1 * E], x[s0 * D:s1 * D], z[s0 * M:s1 * M], t[s0 * M:s1 * M], W1t, W2t, D, M, E,
                         s1 - s0, G, DG, DZ, dx[s0 * D:s1 * D], dW1, dW2t, db1, db2)
    return ok
