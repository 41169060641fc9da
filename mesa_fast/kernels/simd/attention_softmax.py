"""SIMD Numba CPU kernels for causal softmax attention [L3].

Plain twin: ``mesa_fast/kernels/plain/attention_softmax.py`` (``softmax_forward``, ``softmax_backward``: same
arguments, same results up to rounding; its maps come back as the reference's (B, H, T, T) array instead of the lane
layout below), one sequence per iteration of a ``prange`` with ordinary loops: read it before this file.
``benchmarks/bench_plain_vs_simd.py`` measures the two against each other; this version runs by default
(``runtime.tuning.DEFAULT_KERNELS``), MESA_FAST_KERNELS=plain runs the plain one.

Re-expresses ``mesa_ref.ops.attention_softmax`` (``softmax_attention_forward`` / ``softmax_attention_backward``).
What differs:

* Lanes. 16 sequences per group in SIMD lanes, as for linear attention (``attention_lanes.py``: the lane layout, the
  gathers and scatters, the NaN/inf checks), the row max, exp and normalisation included (``lanevec.vexp``).
* The (T, T) maps stay in the lane layout between the forward and the backward (one (T, T, 16) block per group,
  flat, 64-byte aligned; ``lanes_to_map`` makes the reference's (B, H, T, T) map when an analysis asks for it).
* Rows t and t+1 go together through the products: the two rows share every load of the other operand (k_s, v_s),
  half the loads per multiply-add of one row at a time, and each of their sums runs over the same terms in the same
  order as one row alone would. The backward's column sums (dk, dv) run four columns at a time, in registers.

Arithmetic: in the input dtype, IEEE operations without fast-math, except that the multiply-adds of the products are
fused (``lanevec.vfma``, rounded once) and exp is ``lanevec.vexp`` (Cephes' expf / exp on lane vectors, within 2 ulp:
tests/fast/test_fast_ops.py). Float32 results differ from the reference's by rounding only; tests/fast/test_fast_ops.py holds
them to 1e-5 of their largest entry against the float64 reference (its TOL table).

Shapes (N = B*H sequences, G = ceil(N / L) groups): q, k (B, H, T, d); v, dout (B, H, T, dv), any strides; out and
the gradients laid out as ``attention_linear``'s; P flat (G*T*T*L,), P[t, s] of lane l in group g at
((g*T + t)*T + s)*L + l.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ...runtime.pool import run_groups
from ..buffers import grad_buffers, merged_empty
from .attention_lanes import (L, _gather4, _gather_qkv, _groups, _lanes_finite, _scatter4, _scatter_qkv, _strided)
from .lanevec import aligned_empty, vadd, vdiv, vexp, vfma, vmax, vmul, vstore, vsub, wload, wsplat, wzeros


@njit(cache=True, nogil=True)
def _row_dots(x, y, A, t, T, w, sc):
    """A[t, s] = sc (x_t . y_s) for s <= t, 4 keys s at a time (x, y (T, w) and A (T, T) lane-laid-out)."""
    wL = w * L
    tw = t * wL
    row = t * T * L
    s = 0
    while s + 4 <= t + 1:
        a0 = wzeros(x)
        a1 = wzeros(x)
        a2 = wzeros(x)
        a3 = wzeros(x)
        for i in range(w):
            xi = wload(x, tw + i * L)
            o = s * wL + i * L
            a0 = vfma(xi, wload(y, o), a0)
            a1 = vfma(xi, wload(y, o + wL), a1)
            a2 = vfma(xi, wload(y, o + 2 * wL), a2)
            a3 = vfma(xi, wload(y, o + 3 * wL), a3)
        o = row + s * L
        vstore(A, o, vmul(a0, sc))
        vstore(A, o + L, vmul(a1, sc))
        vstore(A, o + 2 * L, vmul(a2, sc))
        vstore(A, o + 3 * L, vmul(a3, sc))
        s += 4
    while s <= t:
        a0 = wzeros(x)
        for i in range(w):
            a0 = vfma(wload(x, tw + i * L), wload(y, s * wL + i * L), a0)
        vstore(A, row + s * L, vmul(a0, sc))
        s += 1


@njit(cache=True, nogil=True)
def _row_dots2(x, y, A, t, T, w, sc):
    """``_row_dots`` for rows t and t+1 (t + 1 < T) together: 4 keys s at a time, each y_s load shared by both
    rows, then row t+1's last key."""
    wL = w * L
    tw = t * wL
    uw = tw + wL
    row = t * T * L
    rou = row + T * L
    s = 0
    while s + 4 <= t + 1:
        a0 = wzeros(x)
        a1 = wzeros(x)
        a2 = wzeros(x)
        a3 = wzeros(x)
        b0 = wzeros(x)
        b1 = wzeros(x)
        b2 = wzeros(x)
        b3 = wzeros(x)
        for i in range(w):
            xi = wload(x, tw + i * L)
            ui = wload(x, uw + i * L)
            o = s * wL + i * L
            y0 = wload(y, o)
            y1 = wload(y, o + wL)
            y2 = wload(y, o + 2 * wL)
            y3 = wload(y, o + 3 * wL)
            a0 = vfma(xi, y0, a0)
            a1 = vfma(xi, y1, a1)
            a2 = vfma(xi, y2, a2)
            a3 = vfma(xi, y3, a3)
            b0 = vfma(ui, y0, b0)
            b1 = vfma(ui, y1, b1)
            b2 = vfma(ui, y2, b2)
            b3 = vfma(ui, y3, b3)
        o = row + s * L
        vstore(A, o, vmul(a0, sc))
        vstore(A, o + L, vmul(a1, sc))
        vstore(A, o + 2 * L, vmul(a2, sc))
        vstore(A, o + 3 * L, vmul(a3, sc))
        o = rou + s * L
        vstore(A, o, vmul(b0, sc))
        vstore(A, o + L, vmul(b1, sc))
        vstore(A, o + 2 * L, vmul(b2, sc))
        vstore(A, o + 3 * L, vmul(b3, sc))
        s += 4
    while s <= t + 1:
        a0 = wzeros(x)
        b0 = wzeros(x)
        for i in range(w):
            yi = wload(y, s * wL + i * L)
            a0 = vfma(wload(x, tw + i * L), yi, a0)
            b0 = vfma(wload(x, uw + i * L), yi, b0)
        if s <= t:
            vstore(A, row + s * L, vmul(a0, sc))
        vstore(A, rou + s * L, vmul(b0, sc))
        s += 1


@njit(cache=True, nogil=True)
def _row_mix(A, y, out, t, T, w):
    """out_t = sum_{s <= t} A[t, s] y_s, in s order, 4 columns at a time (y, out (T, w) lane-laid-out)."""
    wL = w * L
    tw = t * wL
    row = t * T * L
    j = 0
    while j + 4 <= w:
        a0 = wzeros(y)
        a1 = wzeros(y)
        a2 = wzeros(y)
        a3 = wzeros(y)
        for s in range(t + 1):
            p = wload(A, row + s * L)
            o = s * wL + j * L
            a0 = vfma(p, wload(y, o), a0)
            a1 = vfma(p, wload(y, o + L), a1)
            a2 = vfma(p, wload(y, o + 2 * L), a2)
            a3 = vfma(p, wload(y, o + 3 * L), a3)
        o = tw + j * L
        vstore(out, o, a0)
        vstore(out, o + L, a1)
        vstore(out, o + 2 * L, a2)
        vstore(out, o + 3 * L, a3)
        j += 4
    while j < w:
        a0 = wzeros(y)
        for s in range(t + 1):
            a0 = vfma(wload(A, row + s * L), wload(y, s * wL + j * L), a0)
        vstore(out, tw + j * L, a0)
        j += 1


@njit(cache=True, nogil=True)
def _row_mix2(A, y, out, t, T, w):
    """``_row_mix`` for rows t and t+1 (t + 1 < T) together: the y_s loads for s <= t shared by both rows, then
    row t+1's last term, so each row's sum keeps the s order of ``_row_mix``."""
    wL = w * L
    tw = t * wL
    uw = tw + wL
    row = t * T * L
    rou = row + T * L
    j = 0
    while j + 4 <= w:
        a0 = wzeros(y)
        a1 = wzeros(y)
        a2 = wzeros(y)
        a3 = wzeros(y)
        b0 = wzeros(y)
        b1 = wzeros(y)
        b2 = wzeros(y)
        b3 = wzeros(y)
        for s in range(t + 1):
            p = wload(A, row + s * L)
            r = wload(A, rou + s * L)
            o = s * wL + j * L
            y0 = wload(y, o)
            y1 = wload(y, o + L)
            y2 = wload(y, o + 2 * L)
            y3 = wload(y, o + 3 * L)
            a0 = vfma(p, y0, a0)
            a1 = vfma(p, y1, a1)
            a2 = vfma(p, y2, a2)
            a3 = vfma(p, y3, a3)
            b0 = vfma(r, y0, b0)
            b1 = vfma(r, y1, b1)
            b2 = vfma(r, y2, b2)
            b3 = vfma(r, y3, b3)
        r = wload(A, rou + (t + 1) * L)
        o = (t + 1) * wL + j * L
        b0 = vfma(r, wload(y, o), b0)
        b1 = vfma(r, wload(y, o + L), b1)
        b2 = vfma(r, wload(y, o + 2 * L), b2)
        b3 = vfma(r, wload(y, o + 3 * L), b3)
        o = tw + j * L
        vstore(out, o, a0)
        vstore(out, o + L, a1)
        vstore(out, o + 2 * L, a2)
        vstore(out, o + 3 * L, a3)
        o = uw + j * L
        vstore(out, o, b0)
        vstore(out, o + L, b1)
        vstore(out, o + 2 * L, b2)
        vstore(out, o + 3 * L, b3)
        j += 4
    while j < w:
        a0 = wzeros(y)
        b0 = wzeros(y)
        for s in range(t + 1):
            yj = wload(y, s * wL + j * L)
            a0 = vfma(wload(A, row + s * L), yj, a0)
            b0 = vfma(wload(A, rou + s * L), yj, b0)
        b0 = vfma(wload(A, rou + (t + 1) * L), wload(y, (t + 1) * wL + j * L), b0)
        vstore(out, tw + j * L, a0)
        vstore(out, uw + j * L, b0)
        j += 1


@njit(cache=True, nogil=True)
def _softmax_row(P, t, T, like):
    """Row t of the scores (s <= t) in place -> its softmax: the row max, exp, sum and division on lane vectors."""
    row = t * T * L
    m = wload(P, row)
    for s in range(1, t + 1):
        m = vmax(m, wload(P, row + s * L))
    tot = wzeros(like)
    for s in range(t + 1):
        e = vexp(vsub(wload(P, row + s * L), m))
        vstore(P, row + s * L, e)
        tot = vadd(tot, e)
    for s in range(t + 1):
        vstore(P, row + s * L, vdiv(wload(P, row + s * L), tot))


@njit(cache=True, nogil=True)
def _dscores_row(dS, P, t, T, sc, like):
    """Row t of dP (s <= t) in place -> dS[t, s] = P[t, s] (dP[t, s] - sum_s' dP[t, s'] P[t, s']) sc."""
    row = t * T * L
    rd = wzeros(like)
    for s in range(t + 1):
        rd = vfma(wload(dS, row + s * L), wload(P, row + s * L), rd)
    for s in range(t + 1):
        o = row + s * L
        vstore(dS, o, vmul(vmul(wload(P, o), vsub(wload(dS, o), rd)), sc))


@njit(cache=True, nogil=True)
def _softmax_forward_group(q, qs, k, ks, v, vs, scale, P, out, os, N, H, T, d, dv, g):
    """One group: P_t = softmax(scale q_t . k_s, s <= t), out_t = sum_s P_t[s] v_s, rows in pairs.  [L3]
    q, k, v, out strided (see ``_gather4``); P the lane-laid-out maps of all groups (``softmax_forward``): this
    group's P[t, s] for s <= t at P[g*T*T*L + (t*T + s)*L + lane], written in place (the entries above the diagonal
    are left as they are: nothing reads them). The row max, exp and normalisation run on lane vectors
    (``lanevec.vmax``, ``vexp``), as the products do."""
    n0 = g * L
    nl = min(L, N - n0)
    qg = aligned_empty(T * d * L, q)
    kg = aligned_empty(T * d * L, q)
    vg = aligned_empty(T * dv * L, q)
    og = aligned_empty(T * dv * L, q)
    Pg = P[g * T * T * L:(g + 1) * T * T * L]        # P[t, s] at (t*T + s)*L
    _gather_qkv(q, qs, k, ks, v, vs, n0, nl, H, T, d, dv, qg, kg, vg)
    ok = _lanes_finite(qg, T * d) & _lanes_finite(kg, T * d) & _lanes_finite(vg, T * dv)
    sc = wsplat(qg, scale)
    t = 0
    while t + 2 <= T:
        _row_dots2(qg, kg, Pg, t, T, d, sc)
        _softmax_row(Pg, t, T, qg)
        _softmax_row(Pg, t + 1, T, qg)
        _row_mix2(Pg, vg, og, t, T, dv)
        t += 2
    if t < T:
        _row_dots(qg, kg, Pg, t, T, d, sc)
        _softmax_row(Pg, t, T, qg)
        _row_mix(Pg, vg, og, t, T, dv)
    _scatter4(og, out, os, n0, nl, H, T, dv)
    return ok


@njit(cache=True, nogil=True)
def _softmax_forward_range(g0, g1, q, qs, k, ks, v, vs, scale, P, out, os, N, H, T, d, dv):
    """Runs groups g0..g1-1; returns whether all their q, k, v values are finite."""
    ok = True
    for g in range(g0, g1):
        ok &= _softmax_forward_group(q, qs, k, ks, v, vs, scale, P, out, os, N, H, T, d, dv, g)
    return ok


@njit(cache=True, nogil=True)
def _column_sums(A, T, s, x, w, gx, like):
    """gx[(s*w + i)*L] = sum_{t >= s} A[(t*T + s)*L] x[(t*w + i)*L] for i < w, 4 columns i at a time (lane vectors;
    A a (T, T) lane-laid-out matrix, x a (T, w) one)."""
    wL = w * L
    i = 0
    while i + 4 <= w:
        a0 = wzeros(like)
        a1 = wzeros(like)
        a2 = wzeros(like)
        a3 = wzeros(like)
        for t in range(s, T):
            p = wload(A, (t * T + s) * L)
            o = t * wL + i * L
            a0 = vfma(p, wload(x, o), a0)
            a1 = vfma(p, wload(x, o + L), a1)
            a2 = vfma(p, wload(x, o + 2 * L), a2)
            a3 = vfma(p, wload(x, o + 3 * L), a3)
        o = s * wL + i * L
        vstore(gx, o, a0)
        vstore(gx, o + L, a1)
        vstore(gx, o + 2 * L, a2)
        vstore(gx, o + 3 * L, a3)
        i += 4
    while i < w:
        a0 = wzeros(like)
        for t in range(s, T):
            a0 = vfma(wload(A, (t * T + s) * L), wload(x, t * wL + i * L), a0)
        vstore(gx, s * wL + i * L, a0)
        i += 1


@njit(cache=True, nogil=True)
def _column_sums4(A, T, s, x, w, gx, like):
    """``_column_sums`` of columns s..s+3 together (s + 3 < T): each row's x loads shared by the four columns, 4
    columns i at a time. Rows s..s+2 add only to the columns they have entries in; every column's sum runs over
    t in the order of ``_column_sums``."""
    wL = w * L
    i = 0
    while i < w:
        n = 4 if i + 4 <= w else 1                      # 4 columns i at a time, then one at a time
        a0 = wzeros(like)
        a1 = wzeros(like)
        a2 = wzeros(like)
        a3 = wzeros(like)
        b0 = wzeros(like)
        b1 = wzeros(like)
        b2 = wzeros(like)
        b3 = wzeros(like)
        c0 = wzeros(like)
        c1 = wzeros(like)
        c2 = wzeros(like)
        c3 = wzeros(like)
        d0 = wzeros(like)
        d1 = wzeros(like)
        d2 = wzeros(like)
        d3 = wzeros(like)
        for t in range(s, T):
            o = t * wL + i * L
            x0 = wload(x, o)
            x1 = wload(x, o + L) if n == 4 else x0
            x2 = wload(x, o + 2 * L) if n == 4 else x0
            x3 = wload(x, o + 3 * L) if n == 4 else x0
            r = (t * T + s) * L
            p = wload(A, r)
            a0 = vfma(p, x0, a0)
            a1 = vfma(p, x1, a1)
            a2 = vfma(p, x2, a2)
            a3 = vfma(p, x3, a3)
            if t > s:
                p = wload(A, r + L)
                b0 = vfma(p, x0, b0)
                b1 = vfma(p, x1, b1)
                b2 = vfma(p, x2, b2)
                b3 = vfma(p, x3, b3)
            if t > s + 1:
                p = wload(A, r + 2 * L)
                c0 = vfma(p, x0, c0)
                c1 = vfma(p, x1, c1)
                c2 = vfma(p, x2, c2)
                c3 = vfma(p, x3, c3)
            if t > s + 2:
                p = wload(A, r + 3 * L)
                d0 = vfma(p, x0, d0)
                d1 = vfma(p, x1, d1)
                d2 = vfma(p, x2, d2)
                d3 = vfma(p, x3, d3)
        o = s * wL + i * L
        vstore(gx, o, a0)
        vstore(gx, o + wL, b0)
        vstore(gx, o + 2 * wL, c0)
        vstore(gx, o + 3 * wL, d0)
        if n == 4:
            vstore(gx, o + L, a1)
            vstore(gx, o + 2 * L, a2)
            vstore(gx, o + 3 * L, a3)
            o += wL
            vstore(gx, o + L, b1)
            vstore(gx, o + 2 * L, b2)
            vstore(gx, o + 3 * L, b3)
            o += wL
            vstore(gx, o + L, c1)
            vstore(gx, o + 2 * L, c2)
            vstore(gx, o + 3 * L, c3)
            o += wL
            vstore(gx, o + L, d1)
            vstore(gx, o + 2 * L, d2)
            vstore(gx, o + 3 * L, d3)
        i += n


@njit(cache=True, nogil=True)
def _softmax_backward_group(q, qs, k, ks, v, vs, P, scale, dout, dos, dq, dqs, dk, dks, dvv, dvs, N, H, T, d, dv, g):
    """One group: dP[t,s] = dout_t . v_s; dS = P (dP - sum_s dP P) scale (the whole lower triangle kept);
    dq_t = sum_s dS[t,s] k_s by rows (in pairs); then by columns dk_s = sum_t dS[t,s] q_t, dv_s = sum_t P[t,s] dout_t
    (four columns s at a time).  [L3] Every sum runs in registers (4 columns at a time), none through memory."""
    n0 = g * L
    nl = min(L, N - n0)
    qg = aligned_empty(T * d * L, q)
    kg = aligned_empty(T * d * L, q)
    vg = aligned_empty(T * dv * L, q)
    dog = aligned_empty(T * dv * L, q)
    Pg = P[g * T * T * L:(g + 1) * T * T * L]        # the forward's map of this group, lane-laid-out
    _gather_qkv(q, qs, k, ks, v, vs, n0, nl, H, T, d, dv, qg, kg, vg)
    _gather4(dout, dos, n0, nl, H, T, dv, dog)
    ok = _lanes_finite(dog, T * dv)
    gq = aligned_empty(T * d * L, q)
    gk = aligned_empty(T * d * L, q)
    gv = aligned_empty(T * dv * L, q)
    dS = aligned_empty(T * T * L, q)                  # dS[t, s] at (t*T + s)*L, s <= t
    sc = wsplat(qg, scale)
    one = wsplat(qg, 1.0)
    t = 0
    while t + 2 <= T:                                   # by rows, in pairs
        _row_dots2(dog, vg, dS, t, T, dv, one)          # dP[t, s] = dout_t . v_s (times 1: exact)
        _dscores_row(dS, Pg, t, T, sc, qg)
        _dscores_row(dS, Pg, t + 1, T, sc, qg)
        _row_mix2(dS, kg, gq, t, T, d)                  # dq_t = sum_s dS[t, s] k_s
        t += 2
    if t < T:
        _row_dots(dog, vg, dS, t, T, dv, one)
        _dscores_row(dS, Pg, t, T, sc, qg)
        _row_mix(dS, kg, gq, t, T, d)
    s = 0
    while s + 4 <= T:                                   # by columns: dk_s, dv_s, four columns at a time
        _column_sums4(dS, T, s, qg, d, gk, qg)
        _column_sums4(Pg, T, s, dog, dv, gv, qg)
        s += 4
    while s < T:                                        # the last T mod 4 columns one at a time
        _column_sums(dS, T, s, qg, d, gk, qg)
        _column_sums(Pg, T, s, dog, dv, gv, qg)
        s += 1
    _scatter_qkv(gq, dq, dqs, gk, dk, dks, gv, dvv, dvs, n0, nl, H, T, d, dv)
    return ok


@njit(cache=True, nogil=True)
def _softmax_backward_range(g0, g1, q, qs, k, ks, v, vs, P, scale, dout, dos, dq, dqs, dk, dks, dvv, dvs, N, H, T, d, dv):
    """Runs groups g0..g1-1; returns whether all their dout values are finite."""
    ok = True
    for g in range(g0, g1):
        ok &= _softmax_backward_group(q, qs, k, ks, v, vs, P, scale, dout, dos, dq, dqs, dk, dks, dvv, dvs,
                                      N, H, T, d, dv, g)
    return ok


def softmax_forward(q, k, v, scale):
    """(out (B,H,T,dv) in merged memory layout, P lanes, finite) for numpy inputs of one dtype, any strides
    (validated by the caller, NaN/inf aside); ``finite``: no NaN/inf in q, k, v. P lanes: the attention maps as the
    kernels lay them out, one (T, T, L) block per group of L sequences (``lanes_to_map`` makes the (B, H, T, T)
    map), so that the backward reads them with no transposition.  [L3]"""
    B, H, T, d = q.shape
    dv = v.shape[3]
    out = merged_empty(B, H, T, dv, v.dtype)
    P = _aligned_empty_np(_groups(B * H) * T * T * L, q.dtype)
    (qm, qs), (km, ks), (vm, vs), (om, os) = (_strided(x) for x in (q, k, v, out))
    ok = run_groups(_softmax_forward_range, _groups(B * H), q=qm, qs=qs, k=km, ks=ks, v=vm, vs=vs,
                    scale=q.dtype.type(scale), P=P, out=om, os=os, N=B * H, H=H, T=T, d=d, dv=dv)
    return out, P, all(ok)


def softmax_backward(q, k, v, P, scale, dout):
    """((dq, dk, dv), finite) for numpy inputs of one dtype, any strides, laid out as in ``linear_backward``; P: the
    lanes ``softmax_forward`` returned; ``finite``: no NaN/inf in dout.  [L3]"""
    B, H, T, d = q.shape
    dv = v.shape[3]
    dq, dk, dvv = grad_buffers(B, H, T, d, dv, q.dtype)
    (qm, qs), (km, ks), (vm, vs), (gm, gs) = (_strided(x) for x in (q, k, v, dout))
    (dqm, dqs), (dkm, dks), (dvm, dvs) = (_strided(x) for x in (dq, dk, dvv))
    ok = run_groups(_softmax_backward_range, _groups(B * H), q=qm, qs=qs, k=km, ks=ks, v=vm, vs=vs, P=P,
                    scale=q.dtype.type(scale), dout=gm, dos=gs, dq=dqm, dqs=dqs, dk=dkm, dks=dks, dvv=dvm, dvs=dvs,
                    N=B * H, H=H, T=T, d=d, dv=dv)
    return (dq, dk, dvv), all(ok)


def lanes_to_map(P, B, H, T):
    """The (B, H, T, T) attention map (zero above the diagonal, as the reference's) from ``softmax_forward``'s
    lanes."""
    N = B * H
    m = P.reshape(-1, T, T, L).transpose(0, 3, 1, 2).reshape(-1, T, T)[:N]
    return np.tril(m).reshape(B, H, T, T)


def _aligned_empty_np(n, dtype):
    """An uninitialised 1-D NumPy array of n elements whose first element is 64-byte aligned (each group's block
    of the softmax lanes then starts on a cache line, as ``lanevec.aligned_empty`` buffers do)."""
    item = np.dtype(dtype).itemsize
    raw = np.empty(n + 64 // item, dtype)
    o = ((-raw.ctypes.data) % 64) // item
    return raw[o:o + n]
