"""Numba CPU kernel for the MSE loss's forward (one pass over pred and target).

Plain twin: none; the readable statement is the reference, ``mesa_ref.ops.loss.mse_forward``, which this re-expresses:
one pass over pred and target (any strides) for diff = pred - target, the sum of squares and the NaN/inf check; the
reference checks both inputs first (with pred a strided view of the residual stream, a pass of its own:
docs/performance-archive/notes.md, "Element-wise kernels and checks"), then makes two temporaries. The sum of squares
is accumulated in float64 and rounded once by the caller (``mesa_fast/ops/loss.py``).
Shapes: pred, target, diff (M, n).
"""
from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def mse_fwd(p, t, diff):
    """diff = p - t for (M, n) arrays of any strides; returns (sum of diff^2 accumulated in float64, whether
    every diff is finite). A NaN or inf in p or t always leaves a NaN or inf in diff (inf - inf is NaN)."""
    tot = 0.0
    bad = 0
    for r in range(p.shape[0]):
        s = 0.0
        for j in range(p.shape[1]):
            d = p[r, j] - t[r, j]
            diff[r, j] = d
            s += float(d) * float(d)
            bad |= (d - d) != 0
        tot += s
    return tot, bad == 0
