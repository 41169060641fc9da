"""Numba CPU kernels for GELU [L5], LayerNorm [L4] and the MSE loss (one pass per row / element).

Re-expresses ``mesa_ref.ops.activations.gelu_*`` and ``mesa_ref.ops.layernorm``; what differs:

* GELU. tanh(u) is computed as sign(u) (1 - z) / (1 + z) with z = exp(-2|u|) (exact identity; no
  overflow since z <= 1; one exp instead of tanh and pow), 16 elements at a time with the lane-vector
  exp of ``_simd.vexp`` (Numba compiles ``np.exp`` in a loop to one scalar call per element), and the
  forward keeps t = tanh(u) in its cache, so the backward is pure arithmetic (the reference recomputes
  tanh and x**3). Both find NaN/inf in their input (x, dy) in the same pass.
* LayerNorm. Per row of D values: one pass for the mean, one for the variance, one for xhat and y,
  8 columns at a time in lane vectors (the reference's NumPy expression makes ~8 passes over the whole
  array); the forward finds NaN/inf in x through the row sums.

* MSE. One pass over pred and target (any strides) for diff = pred - target, the sum of squares and
  the NaN/inf check; the reference checks both inputs first (with pred a strided view of the
  residual stream, a pass of its own: docs/performance.md), then makes two temporaries.

The callers (``layers.py``) share the rows / elements out to the thread pool. Arithmetic in the input dtype,
IEEE operations without fast-math, except: row sums of 8 partial sums (lanes), then added in order; the
variance's and backward's row sums fused multiply-adds (``_simd.vfma``); sums over all B*T rows (LayerNorm's
dw, db, the MSE's sum of squares) accumulated in float64 and rounded once.
Shapes: x, y, t: (n,) flat; LayerNorm rows: x, y, xhat, dy, dx flat (M*D,), w, b (D,), rstd (M,);
MSE: pred, target, diff (M, n).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._simd import (LANES, WIDE, vabs, vadd, vcopysign, vdiv, vexp, vfma, vload, vmul, vsplat, vstore, vsub, vsum,
                    vzeros, wload, wsplat, wzeros)

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
    z = exp(-2|u|), 16 elements at a time (``_simd.vexp``; the last < 16 through a padded buffer).  [L5]
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
def _row_sum(x, o, D):
    """x[o] + ... + x[o + D - 1]: 8 partial sums in lanes, then the lanes and the tail in order."""
    acc = vzeros(x)
    j = 0
    while j + LANES <= D:
        acc = vadd(acc, vload(x, o + j))
        j += LANES
    s = vsum(acc)
    while j < D:
        s += x[o + j]
        j += 1
    return s


@njit(cache=True, nogil=True)
def layernorm_fwd(x, w, b, eps, D, y, xhat, rstd):
    """Per row m of D values (x, y, xhat flat (M*D,), C-contiguous): xhat = (x - mean) / sqrt(var + eps),
    y = xhat w + b; 8 columns at a time.  [L4]  Returns False when some x is NaN or inf."""
    M = rstd.shape[0]
    bad = 0
    for m in range(M):
        o = m * D
        s = _row_sum(x, o, D)
        mean = s / D
        bad |= (s - s) != 0
        vm = vsplat(x, mean)
        acc = vzeros(x)
        j = 0
        while j + LANES <= D:
            c = vsub(vload(x, o + j), vm)
            acc = vfma(c, c, acc)
            j += LANES
        v = vsum(acc)
        while j < D:
            c = x[o + j] - mean
            v += c * c
            j += 1
        r = 1.0 / np.sqrt(v / D + eps)
        rstd[m] = r
        vr = vsplat(x, r)
        j = 0
        while j + LANES <= D:
            xh = vmul(vsub(vload(x, o + j), vm), vr)
            vstore(xhat, o + j, xh)
            vstore(y, o + j, vadd(vmul(xh, vload(w, j)), vload(b, j)))
            j += LANES
        while j < D:
            xh = (x[o + j] - mean) * r
            xhat[o + j] = xh
            y[o + j] = xh * w[j] + b[j]
            j += 1
    return bad == 0


@njit(cache=True, nogil=True)
def layernorm_bwd(dy, xhat, rstd, w, D, dx, sw, sb):
    """dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w, per row (flat (M*D,) arrays, 8 columns at a time);
    sw += sum over rows of dy xhat, sb += sum of dy (float64 (D,) accumulators).  [L4]"""
    M = rstd.shape[0]
    for m in range(M):
        o = m * D
        ag = vzeros(dy)
        agx = vzeros(dy)
        j = 0
        while j + LANES <= D:
            g = vmul(vload(dy, o + j), vload(w, j))
            ag = vadd(ag, g)
            agx = vfma(g, vload(xhat, o + j), agx)
            j += LANES
        sg = vsum(ag)
        sgx = vsum(agx)
        while j < D:
            g = dy[o + j] * w[j]
            sg += g
            sgx += g * xhat[o + j]
            j += 1
        vmg = vsplat(dy, sg / D)
        vmgx = vsplat(dy, sgx / D)
        vr = vsplat(dy, rstd[m])
        j = 0
        while j + LANES <= D:
            g = vmul(vload(dy, o + j), vload(w, j))
            vstore(dx, o + j, vmul(vr, vsub(vsub(g, vmg), vmul(vload(xhat, o + j), vmgx))))
            j += LANES
        mg = sg / D
        mgx = sgx / D
        r = rstd[m]
        while j < D:
            dx[o + j] = r * (dy[o + j] * w[j] - mg - xhat[o + j] * mgx)
            j += 1
        for j in range(D):
            sw[j] += float(dy[o + j]) * float(xhat[o + j])
            sb[j] += float(dy[o + j])


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
