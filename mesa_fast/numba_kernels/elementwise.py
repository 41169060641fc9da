"""Numba CPU kernels for GELU [L5], LayerNorm [L4] and the MSE loss (one pass per row / element).

Re-expresses ``mesa_ref.ops.activations.gelu_*`` and ``mesa_ref.ops.layernorm``; what differs:

* GELU. tanh(u) is computed as sign(u) (1 - z) / (1 + z) with z = exp(-2|u|) (exact identity; no
  overflow since z <= 1; one exp instead of tanh and pow), and the forward keeps t = tanh(u) in its
  cache, so the backward is pure arithmetic (the reference recomputes tanh and x**3).
* LayerNorm. One pass over each row of D values for the mean, one for the variance, one for
  xhat and y (the reference's NumPy expression makes ~8 passes over the whole array).

* MSE. One pass over pred and target (any strides) for diff = pred - target, the sum of squares and
  the NaN/inf check; the reference checks both inputs first (with pred a strided view of the
  residual stream, a pass of its own: docs/performance.md), then makes two temporaries.

Arithmetic in the input dtype, IEEE operations without fast-math, except sums over all B*T rows
(LayerNorm's dw, db, the MSE's sum of squares): accumulated in float64 and rounded once.
Shapes: x, y, t: (n,) flat; LayerNorm rows: x (M, D), w, b (D,), xhat (M, D), rstd (M,);
MSE: pred, target, diff (M, n).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

_C = math.sqrt(2.0 / math.pi)
_A = 0.044715


@njit(cache=True, nogil=True)
def gelu_fwd(x, y, t):
    """y = 0.5 x (1 + t), t = tanh(sqrt(2/pi) (x + 0.044715 x^3)).  [L5]"""
    c = x.dtype.type(_C)
    a = x.dtype.type(_A)
    one = x.dtype.type(1.0)
    m2 = x.dtype.type(-2.0)
    half = x.dtype.type(0.5)
    for i in range(x.shape[0]):
        xi = x[i]
        u = c * (xi + a * (xi * xi * xi))
        z = np.exp(m2 * abs(u))
        ti = (one - z) / (one + z)
        if u < 0:
            ti = -ti
        t[i] = ti
        y[i] = half * xi * (one + ti)


@njit(cache=True, nogil=True)
def gelu_bwd(dy, x, t, dx):
    """dx = dy (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 0.044715 x^2)).  [L5]"""
    c = x.dtype.type(_C)
    a3 = x.dtype.type(3 * _A)
    one = x.dtype.type(1.0)
    half = x.dtype.type(0.5)
    for i in range(x.shape[0]):
        xi = x[i]
        ti = t[i]
        dt = (one - ti * ti) * c * (one + a3 * xi * xi)
        dx[i] = dy[i] * (half * (one + ti) + half * xi * dt)


@njit(cache=True, nogil=True)
def layernorm_fwd(x, w, b, eps, y, xhat, rstd):
    """Per row m: xhat = (x - mean) / sqrt(var + eps), y = xhat w + b.  [L4]"""
    M, D = x.shape
    for m in range(M):
        s = x[m, 0] * 0.0
        for j in range(D):
            s += x[m, j]
        mean = s / D
        v = s * 0.0
        for j in range(D):
            c = x[m, j] - mean
            v += c * c
        r = 1.0 / np.sqrt(v / D + eps)
        rstd[m] = r
        for j in range(D):
            xh = (x[m, j] - mean) * r
            xhat[m, j] = xh
            y[m, j] = xh * w[j] + b[j]


@njit(cache=True, nogil=True)
def layernorm_bwd(dy, xhat, rstd, w, dx, dw, db):
    """dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w; dw = sum dy xhat, db = sum dy.  [L4]"""
    M, D = dy.shape
    sw = np.zeros(D, np.float64)          # dw, db sum over all M rows: float64 accumulators
    sb = np.zeros(D, np.float64)          # (M is B*T, thousands; a float32 running sum would drift)
    for m in range(M):
        sg = dy[m, 0] * 0.0
        sgx = sg
        for j in range(D):
            g = dy[m, j] * w[j]
            sg += g
            sgx += g * xhat[m, j]
            sw[j] += dy[m, j] * xhat[m, j]
            sb[j] += dy[m, j]
        mg = sg / D
        mgx = sgx / D
        r = rstd[m]
        for j in range(D):
            dx[m, j] = r * (dy[m, j] * w[j] - mg - xhat[m, j] * mgx)
    for j in range(D):
        dw[j] = sw[j]
        db[j] = sb[j]


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
