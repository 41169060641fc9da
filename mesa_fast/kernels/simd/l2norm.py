"""Numba CPU kernels for the per-head L2 normalisation of ``ModelConfig.unit_norm`` (``l2_normalize``).

Plain twin: none; the readable statement is the reference, ``mesa_ref.ops.l2norm`` (``l2_normalize_forward`` /
``l2_normalize_backward``), which these re-express. No lane vectors either: a row is one head's d values (d = 20
in the models that use it), read in place from the strided q, k or v views that ``split_qkv`` hands out, so each
row is one short loop for its sum and one for its output, instead of the reference's NumPy passes over the whole
strided arrays, each with its own temporary.

Arithmetic in the input dtype, IEEE operations in the reference's order; a row's sum runs left to right (NumPy
sums in another order, so the two differ by rounding). Each kernel returns False when some row's sum is not finite:
NaN or inf among its inputs, or a sum that overflowed; the op then hands the call to the reference, which raises
its ValueError or returns its own result.
Shapes: x, y, dy, dx (A, B, C, d), any strides (the op lifts other ranks to four axes); norm, scale (A, B, C, 1).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def l2norm_fwd(x, eps, y, norm, scale):
    """n = ||x_row||, s = 1 / (eps + n), y_row = s x_row for every row; eps in x's dtype."""
    dt = x.dtype.type
    A, B, C, d = x.shape
    ok = True
    for a in range(A):
        for b in range(B):
            for c in range(C):
                s = dt(0)
                for j in range(d):
                    v = x[a, b, c, j]
                    s += v * v
                ok &= (s - s) == 0
                n = np.sqrt(s)
                r = dt(1) / (eps + n)
                norm[a, b, c, 0] = n
                scale[a, b, c, 0] = r
                for j in range(d):
                    y[a, b, c, j] = x[a, b, c, j] * r
    return ok


@njit(cache=True, nogil=True)
def l2norm_bwd(dy, x, norm, scale, dx):
    """dx_row = s (dy_row - x_row (s <dy_row, x_row> / n)) for every row; at n = 0 (x_row = 0) the second term is
    left out, as in the reference."""
    dt = x.dtype.type
    A, B, C, d = x.shape
    ok = True
    for a in range(A):
        for b in range(B):
            for c in range(C):
                p = dt(0)
                for j in range(d):
                    p += dy[a, b, c, j] * x[a, b, c, j]
                ok &= (p - p) == 0
                n = norm[a, b, c, 0]
                r = scale[a, b, c, 0]
                k = r * p / n if n > 0 else dt(0)
                for j in range(d):
                    dx[a, b, c, j] = r * (dy[a, b, c, j] - x[a, b, c, j] * k)
    return ok
