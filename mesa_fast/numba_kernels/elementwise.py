"""Numba CPU kernels for GELU [L5], LayerNorm [L4] and the MSE loss (one pass per row / element).

Re-expresses ``mesa_ref.ops.activations.gelu_*`` and ``mesa_ref.ops.layernorm``; what differs:

* GELU. tanh(u) is computed as sign(u) (1 - z) / (1 + z) with z = exp(-2|u|) (exact identity; no
  overflow since z <= 1; one exp instead of tanh and pow), 16 elements at a time with the lane-vector
  exp of ``_simd.vexp`` (Numba compiles ``np.exp`` in a loop to one scalar call per element), and the
  forward keeps t = tanh(u) in its cache, so the backward is pure arithmetic (the reference recomputes
  tanh and x**3). Both find NaN/inf in their input (x, dy) in the same pass.
* LayerNorm. Per row of D values: one pass for the mean, one for the variance, one for xhat and y (the
  reference's NumPy expression makes ~8 passes over the whole array), 16 rows at a time with one row per
  lane (moved in and out by 8 x 8 register transposes), so a row's sums are lane-vector adds; leftover rows
  one at a time with 8 columns per vector. The forward finds NaN/inf in x through the row sums.

* MSE. One pass over pred and target (any strides) for diff = pred - target, the sum of squares and
  the NaN/inf check; the reference checks both inputs first (with pred a strided view of the
  residual stream, a pass of its own: docs/performance.md), then makes two temporaries.

The callers (``layers.py``) share the rows / elements out to the thread pool. Arithmetic in the input dtype,
IEEE operations without fast-math, except: the leftover LayerNorm rows' sums of 8 partial sums (lanes), then
added in order; the variance's and backward's row sums fused multiply-adds (``_simd.vfma``); sums over all B*T rows (LayerNorm's
dw, db, the MSE's sum of squares) accumulated in float64 and rounded once.
Shapes: x, y, t: (n,) flat; LayerNorm rows: x, y, xhat, dy, dx flat (M*D,), w, b (D,), rstd (M,);
MSE: pred, target, diff (M, n).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._simd import (LANES, WIDE, aligned_empty, vabs, vadd, vcopysign, vdiv, vexp, vfma, vload, vmul, vsplat, vsqrt,
                    vstore, vsub, vsum, vtranspose_copy, vzeros, wload, wsplat, wzeros)

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
def _layernorm_fwd_rows(x, w, b, eps, D, y, xhat, rstd, m0):
    """Rows m0.. of ``layernorm_fwd`` one at a time, 8 columns at a time in lane vectors (the rows that do not
    fill a group of 16, and every row when D < 8).  Returns False when some x is NaN or inf."""
    M = rstd.shape[0]
    bad = 0
    for m in range(m0, M):
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
def _layernorm_bwd_rows(dy, xhat, rstd, w, D, dx, sw, sb, m0):
    """Rows m0.. of ``layernorm_bwd`` one at a time, 8 columns at a time in lane vectors (as
    ``_layernorm_fwd_rows``)."""
    M = rstd.shape[0]
    for m in range(m0, M):
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
def _rows_to_lanes(x, m0, D, buf):
    """buf[j*WIDE + l] = x[(m0 + l)*D + j] for 16 rows m0.. of D >= 8 values (x flat): 8 x 8 register transposes,
    the last block of columns overlapping the one before it."""
    j0 = 0
    while j0 < D:
        j0 = min(j0, D - 8)
        for h in range(WIDE // 8):
            vtranspose_copy(x, (m0 + 8 * h) * D + j0, D, buf, j0 * WIDE + 8 * h, WIDE)
        j0 += 8


@njit(cache=True, nogil=True)
def _lanes_to_rows(buf, x, m0, D):
    """The inverse of ``_rows_to_lanes``: x[(m0 + l)*D + j] = buf[j*WIDE + l]."""
    j0 = 0
    while j0 < D:
        j0 = min(j0, D - 8)
        for h in range(WIDE // 8):
            vtranspose_copy(buf, j0 * WIDE + 8 * h, WIDE, x, (m0 + 8 * h) * D + j0, D)
        j0 += 8


@njit(cache=True, nogil=True)
def layernorm_fwd(x, w, b, eps, D, y, xhat, rstd):
    """Per row m of D values (x, y, xhat flat (M*D,), C-contiguous): xhat = (x - mean) / sqrt(var + eps),
    y = xhat w + b.  [L4]  16 rows at a time, one row per lane (moved in and out by register transposes): the
    sums over a row are then plain lane-vector adds; the rows left over one at a time. Returns False when some x
    is NaN or inf."""
    M = rstd.shape[0]
    m = 0
    ok = True
    if D >= 8:
        xb = aligned_empty(D * WIDE, x)
        yb = aligned_empty(D * WIDE, x)
        hb = aligned_empty(D * WIDE, x)
        fin = wzeros(x)
        Dv = wsplat(x, D)
        ev = wsplat(x, eps)
        one = wsplat(x, 1.0)
        while m + WIDE <= M:
            _rows_to_lanes(x, m, D, xb)
            sm = wzeros(x)
            for j in range(D):
                sm = vadd(sm, wload(xb, j * WIDE))
            fin = vadd(fin, vsub(sm, sm))
            mean = vdiv(sm, Dv)
            acc = wzeros(x)
            for j in range(D):
                c = vsub(wload(xb, j * WIDE), mean)
                acc = vfma(c, c, acc)
            r = vdiv(one, vsqrt(vadd(vdiv(acc, Dv), ev)))
            vstore(rstd, m, r)
            for j in range(D):
                xh = vmul(vsub(wload(xb, j * WIDE), mean), r)
                vstore(hb, j * WIDE, xh)
                vstore(yb, j * WIDE, vadd(vmul(xh, wsplat(x, w[j])), wsplat(x, b[j])))
            _lanes_to_rows(hb, xhat, m, D)
            _lanes_to_rows(yb, y, m, D)
            m += WIDE
        ok = vsum(fin) == 0
    return _layernorm_fwd_rows(x, w, b, eps, D, y, xhat, rstd, m) & ok


@njit(cache=True, nogil=True)
def layernorm_bwd(dy, xhat, rstd, w, D, dx, sw, sb):
    """dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w, per row (flat (M*D,) arrays); sw += sum over rows of
    dy xhat, sb += sum of dy (float64 (D,) accumulators, each group's 16 lanes summed first).  [L4]  16 rows at a
    time in lanes, as ``layernorm_fwd``; the rows left over one at a time."""
    M = rstd.shape[0]
    m = 0
    if D >= 8:
        db_ = aligned_empty(D * WIDE, dy)
        hb = aligned_empty(D * WIDE, dy)
        xb = aligned_empty(D * WIDE, dy)
        Dv = wsplat(dy, D)
        while m + WIDE <= M:
            _rows_to_lanes(dy, m, D, db_)
            _rows_to_lanes(xhat, m, D, hb)
            sg = wzeros(dy)
            sgx = wzeros(dy)
            for j in range(D):
                g = vmul(wload(db_, j * WIDE), wsplat(dy, w[j]))
                sg = vadd(sg, g)
                sgx = vfma(g, wload(hb, j * WIDE), sgx)
            mg = vdiv(sg, Dv)
            mgx = vdiv(sgx, Dv)
            r = wload(rstd, m)
            for j in range(D):
                d = wload(db_, j * WIDE)
                xh = wload(hb, j * WIDE)
                g = vmul(d, wsplat(dy, w[j]))
                vstore(xb, j * WIDE, vmul(r, vsub(vsub(g, mg), vmul(xh, mgx))))
                sw[j] += float(vsum(vmul(d, xh)))
                sb[j] += float(vsum(d))
            _lanes_to_rows(xb, dx, m, D)
            m += WIDE
    _layernorm_bwd_rows(dy, xhat, rstd, w, D, dx, sw, sb, m)


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
