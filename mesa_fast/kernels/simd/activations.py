"""SIMD Numba CPU kernels for GELU [L5] and activation clipping [L6] (one pass per element).

Plain twin: none; the readable statement is the reference, ``mesa_ref.ops.activations`` (``gelu_forward`` /
``gelu_backward``, ``clip_forward`` / ``clip_backward``), which these re-express. What differs:

* GELU. tanh(u) is computed as sign(u) (1 - z) / (1 + z) with z = exp(-2|u|) (exact identity; no
  overflow since z <= 1; one exp instead of tanh and pow), 16 elements at a time with the lane-vector
  exp of ``lanevec.vexp`` (Numba compiles ``np.exp`` in a loop to one scalar call per element), and the
  forward keeps t = tanh(u) in its cache, so the backward is pure arithmetic (the reference recomputes
  tanh and x**3). Both find NaN/inf in their input (x, dy) in the same pass. ``bias_gelu_fwd`` and
  ``gelu_bwd_rows`` are the row forms the fused dense + GELU and MLP ops use (``mesa_fast/ops/dense_gelu.py``,
  ``mlp.py``), with the bias added in the same pass.
* Clipping. One pass for y and the pass-through mask (the reference takes four), finding NaN/inf in the same pass.

The callers (``mesa_fast/ops/activations.py``) share the elements out to the thread pool. Arithmetic in the input
dtype, IEEE operations without fast-math; the bias gradient's column sums (``gelu_bwd_rows``) accumulated in
float64 and rounded once.
Shapes: x, y, t, dy, dx, inside: (n,) flat; rows: z, g, t, dg, dz flat (R*M,), b (M,), sb (M,) float64.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .lanevec import WIDE, vabs, vadd, vcopysign, vdiv, vexp, vmul, vstore, vsub, vsum, wload, wsplat, wzeros

_C = math.sqrt(2.0 / math.pi)
_A = 0.044715


@njit(cache=True, nogil=True)
def _gelu_vec(x, like):
    """(y, t) of ``gelu_fwd`` for one lane vector x (``like``: an array of x's dtype)."""
    one = wsplat(like, 1.0)
    u = vmul(wsplat(like, _C), vadd(x, vmul(wsplat(like, _A), vmul(vmul(x, x), x))))
    z = vexp(vmul(wsplat(like, -2.0), vabs(u)))
    ti = vcopysign(vdiv(vsub(one, z), vadd(one, z)), u)
    return vmul(vmul(wsplat(like, 0.5), x), vadd(one, ti)), ti


@njit(cache=True, nogil=True)
def gelu_fwd(x, y, t):
    """y = 0.5 x (1 + t), t = tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3), with tanh(u) = sign(u) (1 - z) / (1 + z),
    z = exp(-2|u|), 16 elements at a time (``lanevec.vexp``; the last < 16 through a padded buffer).  [L5]
    x, y, t: (n,) C-contiguous. Returns False when some x is NaN or inf."""
    n = x.shape[0]
    fin = wzeros(x)
    i = 0
    while i + WIDE <= n:
        xi = wload(x, i)
        fin = vadd(fin, vsub(xi, xi))
        yi, ti = _gelu_vec(xi, x)
        vstore(y, i, yi)
        vstore(t, i, ti)
        i += WIDE
    if i < n:
        buf = np.zeros(3 * WIDE, x.dtype)
        for j in range(n - i):
            buf[j] = x[i + j]
        xi = wload(buf, 0)
        fin = vadd(fin, vsub(xi, xi))
        yi, ti = _gelu_vec(xi, x)
        vstore(buf, WIDE, yi)
        vstore(buf, 2 * WIDE, ti)
        for j in range(n - i):
            y[i + j] = buf[WIDE + j]
            t[i + j] = buf[2 * WIDE + j]
    return vsum(fin) == 0


@njit(cache=True, nogil=True)
def bias_gelu_fwd(z, b, M, g, t):
    """For rows of M values (z, g, t flat (R*M,), C-contiguous): z += b (in place), then g = gelu(z) and
    t = tanh(...) as in ``gelu_fwd``, 16 columns at a time (the last < 16 of a row through a padded buffer).  [L5]
    Returns False when some z (after the bias) is NaN or inf."""
    R = z.shape[0] // M if M else 0
    fin = wzeros(z)
    buf = np.zeros(4 * WIDE, z.dtype)
    for r in range(R):
        o = r * M
        j = 0
        while j + WIDE <= M:
            zi = vadd(wload(z, o + j), wload(b, j))
            vstore(z, o + j, zi)
            fin = vadd(fin, vsub(zi, zi))
            gi, ti = _gelu_vec(zi, z)
            vstore(g, o + j, gi)
            vstore(t, o + j, ti)
            j += WIDE
        if j < M:
            for e in range(M - j):
                buf[e] = z[o + j + e] + b[j + e]
            zi = wload(buf, 0)
            fin = vadd(fin, vsub(zi, zi))
            gi, ti = _gelu_vec(zi, z)
            vstore(buf, WIDE, gi)
            vstore(buf, 2 * WIDE, ti)
            for e in range(M - j):
                z[o + j + e] = buf[e]
                g[o + j + e] = buf[WIDE + e]
                t[o + j + e] = buf[2 * WIDE + e]
    return vsum(fin) == 0


@njit(cache=True, nogil=True)
def gelu_bwd_rows(dg, z, t, M, dz, sb):
    """dz = dg gelu'(z) as in ``gelu_bwd`` for rows of M values (flat (R*M,) arrays), and sb += the column sums of
    dz (float64 (M,) accumulators: the bias gradient).  [L5]  Returns False when some dg is NaN or inf."""
    c = z.dtype.type(_C)
    a3 = z.dtype.type(3 * _A)
    one = z.dtype.type(1.0)
    half = z.dtype.type(0.5)
    R = z.shape[0] // M if M else 0
    bad = 0
    for r in range(R):
        o = r * M
        for j in range(M):
            xi = z[o + j]
            ti = t[o + j]
            d = dg[o + j]
            dt = (one - ti * ti) * c * (one + a3 * xi * xi)
            v = d * (half * (one + ti) + half * xi * dt)
            dz[o + j] = v
            bad |= (d - d) != 0
        for j in range(M):
            sb[j] += float(dz[o + j])
    return bad == 0


@njit(cache=True, nogil=True)
def gelu_bwd(dy, x, t, dx):
    """dx = dy (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 0.044715 x^2)).  [L5]  Returns False when some dy
    is NaN or inf."""
    c = x.dtype.type(_C)
    a3 = x.dtype.type(3 * _A)
    one = x.dtype.type(1.0)
    half = x.dtype.type(0.5)
    bad = 0
    for i in range(x.shape[0]):
        xi = x[i]
        ti = t[i]
        d = dy[i]
        dt = (one - ti * ti) * c * (one + a3 * xi * xi)
        dx[i] = d * (half * (one + ti) + half * xi * dt)
        bad |= (d - d) != 0
    return bad == 0


@njit(cache=True, nogil=True)
def clip_fwd(x, c, y, inside):
    """y = clip(x, -c, c), inside = (-c < x < c).  x, y, inside: (n,).  Branch-free (vectorises).
    Returns False when some x is NaN or inf (x - x is then NaN), found in the same pass."""
    bad = 0
    for i in range(x.shape[0]):
        xi = x[i]
        y[i] = min(max(xi, -c), c)
        inside[i] = (xi > -c) & (xi < c)
        bad |= (xi - xi) != 0
    return bad == 0


@njit(cache=True, nogil=True)
def clip_bwd(dy, inside, dx):
    """dx = dy * inside (0 outside the band, as the reference's dy * mask).  Returns False when some dy is NaN
    or inf."""
    bad = 0
    for i in range(dy.shape[0]):
        d = dy[i]
        dx[i] = d * inside[i]
        bad |= (d - d) != 0
    return bad == 0
