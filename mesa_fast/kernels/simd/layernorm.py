"""SIMD Numba CPU kernels for LayerNorm [L4] (one pass per row for each of its sums).

Plain twin: none; the readable statement is the reference, ``mesa_ref.ops.layernorm`` (``layernorm_forward`` /
``layernorm_backward``), which these re-express. What differs: per row of D values, one pass for the mean, one for
the variance, one for xhat and y (the reference's NumPy expression makes ~8 passes over the whole array), 16 rows at
a time with one row per lane (moved in and out by 8 x 8 register transposes), so a row's sums are lane-vector adds;
leftover rows one at a time with 8 columns per vector. The forward finds NaN/inf in x through the row sums.
``layernorm_fwd`` / ``layernorm_bwd`` on a block of rows are also what the fused LayerNorm + dense and MLP sub-block
kernels call (``layernorm_dense.py``, ``mlp_block.py``).

The callers (``mesa_fast/ops/layernorm.py``) share the rows out to the thread pool. Arithmetic in the input dtype,
IEEE operations without fast-math, except: the leftover rows' sums of 8 partial sums (lanes), then added in order;
the variance's and backward's row sums fused multiply-adds (``lanevec.vfma``); sums over all rows (dw, db)
accumulated in float64 and rounded once.
Shapes: x, y, xhat, dy, dx flat (M*D,), w, b (D,), rstd (M,); sw, sb (D,) float64.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .lanevec import (LANES, WIDE, aligned_empty, vadd, vdiv, vfma, vload, vmul, vsplat, vsqrt, vstore, vsub, vsum,
                      vtranspose_copy, vzeros, wload, wsplat, wzeros)


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
