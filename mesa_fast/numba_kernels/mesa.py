"""Numba CPU kernels for the mesa-layer, [M2]-[M4] (MATH.md section 3).

Re-expresses ``mesa_ref.ops.mesa.mesa_forward`` / ``mesa_backward`` (same recursion, same
closed-form reverse scan, same dgamma by lag-weighted accumulators); what differs:

* Lanes. 8 independent (batch, head) sequences are processed together, one per SIMD lane
  (``_simd.LaneVec``: <8 x float> or <8 x double> registers). Every buffer below is "lane
  laid out": element (i, j) of a per-sequence matrix for lane l sits at ``(i*ncol + j)*LANES + l``.
  Each lane runs the scalar recursion, so a lane's result does not depend on its neighbours.
  ``prange`` runs the groups of 8 on the available cores.
* Fusion. One pass over R per token does the update [M2]/[M4] and both products with the new
  R_t: q~_t = R_t q_t and c_{t+1} = R_t k_{t+1} (the next token's c). R is stored as a full
  symmetric matrix (rows contiguous, so the products accumulate in registers); the update is
  written R_ij <- R_ij/gamma - beta/gamma (c_i c_j), which keeps R exactly symmetric.
* What the forward keeps. Never R_t (that would be T d^2 per sequence: 80 MB at the paper shape,
  more memory traffic than the whole computation). The backward needs u_t = R_t dq~_t only, and
  dq~_t = S_t^T g_t needs a forward sweep anyway, so the backward rebuilds R_t going forward:
    "store":      the forward keeps c_t and beta_t = 1/(gamma + k_t.c_t) (T(d+1) numbers per
                  sequence); the backward rebuilds R_t from them by the rank-1 updates alone.
    "checkpoint": the forward keeps nothing beyond q~; the backward re-runs the whole recursion
                  from R_0 = I/lam (the one checkpoint the fast backward needs, since it sweeps
                  forward). ``checkpoint_every`` is validated and recorded but not needed.
  Both rebuild R_t with the forward's own expressions in the forward's order, so the backward's
  R_t is bit-for-bit the forward's R_t (as the reference's "checkpoint" is).
* Layout of S. The forward keeps S_t (dv x d rows, o_t = S_t q~_t is a row reduction); the
  backward keeps S_t^T (d x dv rows, dq~_t = S_t^T g_t is a row reduction).

Arithmetic: everything runs in the input dtype (float32 in -> float32 arithmetic), including the
per-sequence dlam/dgamma sums; no float64 accumulation. No fast-math, no FMA contraction.

Shapes (N = B*H sequences, G = ceil(N / LANES) groups):
    q, k: (N, T, d)   v, dout: (N, T, dv)   lam_n, gam_n: (N,)   (C-contiguous, one dtype)
    qt_l, c_l: flat (G*T*d*LANES,)  lane layout of q~_t, c_t: index ((g*T + t)*d + i)*LANES + l
    b_l:       flat (G*T*LANES,)    beta_t: index (g*T + t)*LANES + l
"""
from __future__ import annotations

import numpy as np
import concurrent.futures
import threading

import numba
from numba import njit

from ._simd import LANES, vadd, vdiv, vload, vmul, vsplat, vstore, vsub, vzeros

L = LANES

# --------------------------------------------------------------------------------------------
# gather / scatter between (N, T, width) arrays and one lane-laid-out token (width, LANES)
# --------------------------------------------------------------------------------------------


@njit(cache=True, fastmath=False, nogil=True, inline="always")
def _gather(x, n0, nl, t, buf, width):
    """buf[i*L + l] = x[n0 + l, t, i] for the nl live lanes (padding lanes are left as they are)."""
    for l in range(nl):
        for i in range(width):
            buf[i * L + l] = x[n0 + l, t, i]


@njit(cache=True, fastmath=False, nogil=True, inline="always")
def _scatter(buf, boff, x, n0, nl, t, width):
    """x[n0 + l, t, i] = buf[boff + i*L + l] for the nl live lanes."""
    for l in range(nl):
        for i in range(width):
            x[n0 + l, t, i] = buf[boff + i * L + l]


@njit(cache=True, fastmath=False, nogil=True, inline="always")
def _lane_params(lam_n, gam_n, n0, nl, lamv, gv, igv):
    """Per-lane lam, gamma, 1/gamma; padding lanes get lam = gamma = 1 (and zero inputs)."""
    for l in range(L):
        lamv[l] = 1
        gv[l] = 1
    for l in range(nl):
        lamv[l] = lam_n[n0 + l]
        gv[l] = gam_n[n0 + l]
    for l in range(L):
        igv[l] = 1 / gv[l]


@njit(cache=True, fastmath=False, nogil=True, inline="always")
def _init_R(R, lamv, d):
    """R_0 = I / lam (lane layout (d, d, L)); R must be zero on entry."""
    for l in range(L):
        ilam = 1 / lamv[l]
        for i in range(d):
            R[(i * d + i) * L + l] = ilam


@njit(cache=True, fastmath=False, nogil=True, inline="always")
def _matvec(R, x, y, d):
    """y = R x, lane-wise (R: (d, d, L), x, y: (d, L))."""
    for i in range(d):
        acc = vzeros(x)
        row = i * d * L
        for j in range(d):
            acc = vadd(acc, vmul(vload(R, row + j * L), vload(x, j * L)))
        vstore(y, i * L, acc)


@njit(cache=True, fastmath=False, nogil=True, inline="always")
def _beta(kb, c, gam, d):
    """beta_t = 1 / (gamma + k_t . c_t), lane-wise, summed over i in order [M2]/[M4]."""
    den = gam
    for i in range(d):
        den = vadd(den, vmul(vload(kb, i * L), vload(c, i * L)))
    return vdiv(vsplat(kb, 1.0), den)


@njit(cache=True, fastmath=False, nogil=True, inline="always")
def _update_R_row(R, row, c, ci, b, bg, igam, x, y, d, has_gamma, want_y):
    """Row i of the update [M2]/[M4] and two products with the new row.

    R_ij <- R_ij/gamma - (beta/gamma)(c_i c_j)   (gamma given)
    R_ij <- R_ij - beta (c_i c_j)                (no gamma: [M2] exactly, no 1/gamma multiply)
    Returns (sum_j R_ij x_j, sum_j R_ij y_j) with the updated entries (the second is zero unless
    want_y).
    """
    ax = vzeros(x)
    ay = vzeros(x)
    if has_gamma:
        if want_y:
            for j in range(d):
                o = row + j * L
                r = vsub(vmul(vload(R, o), igam), vmul(bg, vmul(ci, vload(c, j * L))))
                vstore(R, o, r)
                ax = vadd(ax, vmul(r, vload(x, j * L)))
                ay = vadd(ay, vmul(r, vload(y, j * L)))
        else:
            for j in range(d):
                o = row + j * L
                r = vsub(vmul(vload(R, o), igam), vmul(bg, vmul(ci, vload(c, j * L))))
                vstore(R, o, r)
                ax = vadd(ax, vmul(r, vload(x, j * L)))
    else:
        if want_y:
            for j in range(d):
                o = row + j * L
                r = vsub(vload(R, o), vmul(b, vmul(ci, vload(c, j * L))))
                vstore(R, o, r)
                ax = vadd(ax, vmul(r, vload(x, j * L)))
                ay = vadd(ay, vmul(r, vload(y, j * L)))
        else:
            for j in range(d):
                o = row + j * L
                r = vsub(vload(R, o), vmul(b, vmul(ci, vload(c, j * L))))
                vstore(R, o, r)
                ax = vadd(ax, vmul(r, vload(x, j * L)))
    return ax, ay


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------


@njit(cache=True, fastmath=False, nogil=True)
def _forward_group(g, q, k, v, lam_n, gam_n, has_gamma, store_c, out, qt_l, c_l, b_l):
    """[M2]/[M4] for the sequences n0 .. n0+nl-1 of group g (one per lane)."""
    N, T, d = q.shape
    dv = v.shape[2]
    n0 = g * L
    nl = min(L, N - n0)
    dt = q.dtype
    R = np.zeros(d * d * L, dt)        # R_t                     (d, d, L)
    S = np.zeros(dv * d * L, dt)       # S_t                     (dv, d, L)
    kb = np.zeros(d * L, dt)           # k_t                     (d, L)
    kn = np.zeros(d * L, dt)           # k_{t+1}                 (d, L)
    qb = np.zeros(d * L, dt)           # q_t                     (d, L)
    vb = np.zeros(dv * L, dt)          # v_t                     (dv, L)
    c = np.zeros(d * L, dt)            # c_t = R_{t-1} k_t       (d, L)
    cn = np.zeros(d * L, dt)           # c_{t+1} = R_t k_{t+1}   (d, L)
    qtb = np.zeros(d * L, dt)          # q~_t                    (d, L)
    ob = np.zeros(dv * L, dt)          # o_t                     (dv, L)
    lamv = np.empty(L, dt)
    gv = np.empty(L, dt)
    igv = np.empty(L, dt)
    _lane_params(lam_n, gam_n, n0, nl, lamv, gv, igv)
    gam = vload(gv, 0)
    igam = vload(igv, 0)
    _init_R(R, lamv, d)                                    # [M2] R_0 = I/lam
    _gather(k, n0, nl, 0, kb, d)
    _matvec(R, kb, c, d)                                   # [M2] c_1 = R_0 k_1
    for t in range(T):
        _gather(q, n0, nl, t, qb, d)
        _gather(v, n0, nl, t, vb, dv)
        b = _beta(kb, c, gam, d)                           # [M2]/[M4] beta_t = 1/(gamma + k.c)
        bg = vmul(b, igam)
        if store_c:
            base = (g * T + t) * d * L
            for i in range(d):
                vstore(c_l, base + i * L, vload(c, i * L))
            vstore(b_l, (g * T + t) * L, b)
        last = t + 1 == T
        if not last:
            _gather(k, n0, nl, t + 1, kn, d)
        # R_t, q~_t = R_t q_t, c_{t+1} = R_t k_{t+1} in one pass over R
        for i in range(d):
            ci = vload(c, i * L)
            aq, ak = _update_R_row(R, i * d * L, c, ci, b, bg, igam, qb, kn, d, has_gamma, not last)
            vstore(qtb, i * L, aq)                         # [M2] q~_t = R_t q_t
            vstore(cn, i * L, ak)                          # [M2] c_{t+1} = R_t k_{t+1}
        # S_t = gamma S_{t-1} + v_t k_t^T and o_t = S_t q~_t in one pass over S
        for a in range(dv):
            va = vload(vb, a * L)
            acc = vzeros(kb)
            row = a * d * L
            if has_gamma:
                for i in range(d):
                    o = row + i * L
                    s = vadd(vmul(gam, vload(S, o)), vmul(va, vload(kb, i * L)))   # [M4]
                    vstore(S, o, s)
                    acc = vadd(acc, vmul(s, vload(qtb, i * L)))
            else:
                for i in range(d):
                    o = row + i * L
                    s = vadd(vload(S, o), vmul(va, vload(kb, i * L)))              # [M2]
                    vstore(S, o, s)
                    acc = vadd(acc, vmul(s, vload(qtb, i * L)))
            vstore(ob, a * L, acc)                         # [M2] o_t = S_t q~_t
        _scatter(ob, 0, out, n0, nl, t, dv)
        base = (g * T + t) * d * L
        for i in range(d):
            vstore(qt_l, base + i * L, vload(qtb, i * L))
        kb, kn = kn, kb
        c, cn = cn, c


@njit(cache=True, fastmath=False, nogil=True)
def _forward_range(g0, g1, q, k, v, lam_n, gam_n, has_gamma, store_c, out, qt_l, c_l, b_l):
    for g in range(g0, g1):
        _forward_group(g, q, k, v, lam_n, gam_n, has_gamma, store_c, out, qt_l, c_l, b_l)


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------


@njit(cache=True, fastmath=False, nogil=True)
def _backward_group(g, k, v, dout, lam_n, gam_n, has_gamma, store_c, qt_l, c_l, b_l,
                    dq, dk, dv, dlam_n, dgam_n):
    """[M3]/[M4] for the sequences of group g: forward sweep for u_t, reverse scan for dk, dv."""
    N, T, d = k.shape
    dv_ = v.shape[2]
    n0 = g * L
    nl = min(L, N - n0)
    dt = k.dtype
    R = np.zeros(d * d * L, dt)        # R_t                     (d, d, L)
    ST = np.zeros(d * dv_ * L, dt)     # S_t^T                   (d, dv, L)
    U = np.empty(T * d * L, dt)        # u_t for every t         (T, d, L)
    kb = np.zeros(d * L, dt)           # k_t                     (d, L)
    kn = np.zeros(d * L, dt)           # k_{t+1}                 (d, L)
    vb = np.zeros(dv_ * L, dt)         # v_t                     (dv, L)
    gb = np.zeros(dv_ * L, dt)         # g_t = dL/do_t           (dv, L)
    c = np.zeros(d * L, dt)            # c_t                     (d, L)
    cn = np.zeros(d * L, dt)           # c_{t+1}                 (d, L)
    ab = np.zeros(d * L, dt)           # dq~_t = S_t^T g_t       (d, L)
    lamv = np.empty(L, dt)
    gv = np.empty(L, dt)
    igv = np.empty(L, dt)
    _lane_params(lam_n, gam_n, n0, nl, lamv, gv, igv)
    gam = vload(gv, 0)
    igam = vload(igv, 0)
    _init_R(R, lamv, d)                                    # [M2] R_0 = I/lam
    _gather(k, n0, nl, 0, kb, d)
    if not store_c:
        _matvec(R, kb, c, d)                               # c_1 = R_0 k_1, as in the forward

    # 1. forward sweep: S_t^T, dq~_t = S_t^T g_t, R_t (rebuilt), u_t = R_t dq~_t        [M3]
    for t in range(T):
        _gather(v, n0, nl, t, vb, dv_)
        _gather(dout, n0, nl, t, gb, dv_)
        for i in range(d):
            ki = vload(kb, i * L)
            acc = vzeros(kb)
            row = i * dv_ * L
            if has_gamma:
                for a in range(dv_):
                    o = row + a * L
                    s = vadd(vmul(gam, vload(ST, o)), vmul(ki, vload(vb, a * L)))   # [M4] S_t^T
                    vstore(ST, o, s)
                    acc = vadd(acc, vmul(s, vload(gb, a * L)))
            else:
                for a in range(dv_):
                    o = row + a * L
                    s = vadd(vload(ST, o), vmul(ki, vload(vb, a * L)))              # [M2] S_t^T
                    vstore(ST, o, s)
                    acc = vadd(acc, vmul(s, vload(gb, a * L)))
            vstore(ab, i * L, acc)                         # [M3] dq~_t = S_t^T g_t
        last = t + 1 == T
        if store_c:
            base = (g * T + t) * d * L
            for i in range(d):
                vstore(c, i * L, vload(c_l, base + i * L))
            b = vload(b_l, (g * T + t) * L)
        else:
            b = _beta(kb, c, gam, d)                       # same expression as the forward
        bg = vmul(b, igam)
        want_c = (not store_c) and (not last)
        if not last:
            _gather(k, n0, nl, t + 1, kn, d)
        for i in range(d):
            ci = vload(c, i * L)
            au, ak = _update_R_row(R, i * d * L, c, ci, b, bg, igam, ab, kn, d, has_gamma, want_c)
            vstore(U, (t * d + i) * L, au)                 # [M3] u_t = R_t dq~_t
            vstore(cn, i * L, ak)
        _scatter(U, t * d * L, dq, n0, nl, t, d)           # [M3] dq_t = u_t
        kb, kn = kn, kb
        if not store_c:
            c, cn = cn, c

    # 2. reverse scan: D_t, C_t (and D'_t, C'_t for dgamma)                                [M3]/[M4]
    D = np.zeros(d * dv_ * L, dt)      # D_t = sum_{t''>=t} w q~ g^T          (d, dv, L)
    C = np.zeros(d * d * L, dt)        # C_t = sum_{t''>=t} w (u q~^T + q~ u^T) (d, d, L)
    nD1 = d * dv_ * L if has_gamma else L
    nC1 = d * d * L if has_gamma else L
    D1 = np.zeros(nD1, dt)             # D'_t (gamma only)                    (d, dv, L)
    C1 = np.zeros(nC1, dt)             # C'_t (gamma only)                    (d, d, L)
    dvacc = np.zeros(dv_ * L, dt)      # dv_t                                 (dv, L)
    dkb = np.zeros(d * L, dt)          # dk_t                                 (d, L)
    gpw = np.empty(L, dt)              # gamma^t (1-based t)
    treg = np.empty(L, dt)             # lam t gamma^{t-1}
    half = vsplat(kb, 0.5)
    dla = vzeros(kb)                   # dlam for this lane's sequence
    dga = vzeros(kb)                   # dgamma for this lane's sequence
    for t in range(T - 1, -1, -1):
        _gather(k, n0, nl, t, kb, d)
        _gather(v, n0, nl, t, vb, dv_)
        _gather(dout, n0, nl, t, gb, dv_)
        bq = (g * T + t) * d * L       # q~_t in qt_l
        bu = t * d * L                 # u_t in U
        for a in range(dv_):
            vstore(dvacc, a * L, vzeros(kb))
        # D pass: D_t = gamma D_{t+1} + q~_t g_t^T; dk_t = D_t v_t; dv_t = D_t^T k_t
        for i in range(d):
            qi = vload(qt_l, bq + i * L)
            ki = vload(kb, i * L)
            row = i * dv_ * L
            dki = vzeros(kb)
            if has_gamma:
                pacc = vzeros(kb)
                for a in range(dv_):
                    o = row + a * L
                    dold = vload(D, o)
                    dp = vadd(vmul(gam, vload(D1, o)), dold)                  # [M4] D'_t
                    vstore(D1, o, dp)
                    va = vload(vb, a * L)
                    pacc = vadd(pacc, vmul(dp, va))
                    dn = vadd(vmul(gam, dold), vmul(qi, vload(gb, a * L)))    # [M3] D_t
                    vstore(D, o, dn)
                    dki = vadd(dki, vmul(dn, va))
                    vstore(dvacc, a * L, vadd(vload(dvacc, a * L), vmul(ki, dn)))
                dga = vadd(dga, vmul(ki, pacc))                               # [M4] k.D'v
            else:
                for a in range(dv_):
                    o = row + a * L
                    dn = vadd(vload(D, o), vmul(qi, vload(gb, a * L)))        # [M3] D_t
                    vstore(D, o, dn)
                    dki = vadd(dki, vmul(dn, vload(vb, a * L)))
                    vstore(dvacc, a * L, vadd(vload(dvacc, a * L), vmul(ki, dn)))
            vstore(dkb, i * L, dki)
        # C pass: C_t = gamma C_{t+1} + u q~^T + q~ u^T; dk_t -= C_t k_t
        for i in range(d):
            qi = vload(qt_l, bq + i * L)
            ui = vload(U, bu + i * L)
            ki = vload(kb, i * L)
            row = i * d * L
            cacc = vzeros(kb)
            if has_gamma:
                pacc = vzeros(kb)
                for j in range(d):
                    o = row + j * L
                    cold = vload(C, o)
                    cp = vadd(vmul(gam, vload(C1, o)), cold)                  # [M4] C'_t
                    vstore(C1, o, cp)
                    kj = vload(kb, j * L)
                    pacc = vadd(pacc, vmul(cp, kj))
                    cnew = vadd(vmul(gam, cold), vadd(vmul(ui, vload(qt_l, bq + j * L)),
                                                      vmul(qi, vload(U, bu + j * L))))  # [M3] C_t
                    vstore(C, o, cnew)
                    cacc = vadd(cacc, vmul(cnew, kj))
                dga = vsub(dga, vmul(half, vmul(ki, pacc)))                   # [M4] -k.C'k/2
            else:
                for j in range(d):
                    o = row + j * L
                    cnew = vadd(vload(C, o), vadd(vmul(ui, vload(qt_l, bq + j * L)),
                                                  vmul(qi, vload(U, bu + j * L))))      # [M3] C_t
                    vstore(C, o, cnew)
                    cacc = vadd(cacc, vmul(cnew, vload(kb, j * L)))
            vstore(dkb, i * L, vsub(vload(dkb, i * L), cacc))                 # [M3] dk = D v - C k
        qu = vzeros(kb)
        for i in range(d):
            qu = vadd(qu, vmul(vload(qt_l, bq + i * L), vload(U, bu + i * L)))
        if has_gamma:
            for l in range(L):
                gpw[l] = gv[l] ** (t + 1)
                treg[l] = lamv[l] * (t + 1) * gv[l] ** t
            dla = vsub(dla, vmul(vload(gpw, 0), qu))                          # [M4] -gamma^t q~.u
            dga = vsub(dga, vmul(vload(treg, 0), qu))                         # [M4] -lam t gamma^{t-1} q~.u
        else:
            dla = vsub(dla, qu)                                               # [M3] -q~.u
        _scatter(dkb, 0, dk, n0, nl, t, d)
        _scatter(dvacc, 0, dv, n0, nl, t, dv_)
    vstore(gpw, 0, dla)
    vstore(treg, 0, dga)
    for l in range(nl):
        dlam_n[n0 + l] = gpw[l]
        dgam_n[n0 + l] = treg[l]


@njit(cache=True, fastmath=False, nogil=True)
def _backward_range(g0, g1, k, v, dout, lam_n, gam_n, has_gamma, store_c, qt_l, c_l, b_l,
                    dq, dk, dv, dlam_n, dgam_n):
    for g in range(g0, g1):
        _backward_group(g, k, v, dout, lam_n, gam_n, has_gamma, store_c, qt_l, c_l, b_l,
                        dq, dk, dv, dlam_n, dgam_n)


@njit(cache=True, fastmath=False, nogil=True)
def _lanes_to_bhtd(x_l, N, T, d, out):
    """out[n, t, i] = x_l[((g*T + t)*d + i)*L + l] with n = g*L + l (undo the lane layout)."""
    for n in range(N):
        g = n // L
        l = n - g * L
        for t in range(T):
            base = (g * T + t) * d * L + l
            for i in range(d):
                out[n, t, i] = x_l[base + i * L]


# --------------------------------------------------------------------------------------------
# Python-level wrappers (shapes in, arrays out); validation happens in mesa_fast.ops
# --------------------------------------------------------------------------------------------


_POOL = None
_POOL_LOCK = threading.Lock()


def _run_groups(kernel, G, *args):
    """Run kernel(g0, g1, *args) over the groups 0..G-1, split into contiguous chunks across
    ``numba.get_num_threads()`` threads (the kernels release the GIL).

    Threads rather than ``prange``: a parallel=True wrapper costs ~17 s of extra compilation per
    dtype (measured), most of this file's cold-start time, for the same run time.
    """
    nthreads = min(numba.get_num_threads(), G)
    if nthreads <= 1:
        kernel(0, G, *args)
        return
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < nthreads:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=nthreads,
                                                          thread_name_prefix="mesa_fast")
        pool = _POOL
    bounds = [G * i // nthreads for i in range(nthreads + 1)]
    futures = [pool.submit(kernel, bounds[i], bounds[i + 1], *args) for i in range(1, nthreads)]
    kernel(bounds[0], bounds[1], *args)          # this thread does the first chunk
    for f in futures:
        f.result()


def _seq(x, N, T, w):
    """(B, H, T, w) array -> C-contiguous (N, T, w) (a copy only if x is not contiguous)."""
    x = np.ascontiguousarray(x)
    if not x.flags.writeable:          # a read-only array is a separate Numba type (a recompile)
        x = x.copy()
    return x.reshape(N, T, w)


def _per_seq(p, B, H, dtype):
    """(H,) per-head parameter -> (N,) per-sequence, n = b*H + h."""
    return np.array(np.broadcast_to(np.asarray(p, dtype=dtype), (B, H)), order="C").reshape(B * H)


def forward(q, k, v, lam, gamma, store_c):
    """Run the forward kernel. q, k (B,H,T,d), v (B,H,T,dv), lam/gamma (H,) (gamma may be None).

    Returns out (B,H,T,dv) and the lane-laid-out qt_l, c_l, b_l (c_l, b_l empty unless store_c).
    """
    B, H, T, d = q.shape
    dv = v.shape[3]
    N = B * H
    G = -(-N // L)
    dt = q.dtype
    has_gamma = gamma is not None
    gam = gamma if has_gamma else np.ones(H, dtype=dt)
    out = np.empty((N, T, dv), dtype=dt)
    qt_l = np.empty(G * T * d * L, dtype=dt)
    c_l = np.empty(G * T * d * L if store_c else 0, dtype=dt)
    b_l = np.empty(G * T * L if store_c else 0, dtype=dt)
    _run_groups(_forward_range, G, _seq(q, N, T, d), _seq(k, N, T, d), _seq(v, N, T, dv),
                 _per_seq(lam, B, H, dt), _per_seq(gam, B, H, dt), has_gamma, bool(store_c),
                 out, qt_l, c_l, b_l)
    return out.reshape(B, H, T, dv), qt_l, c_l, b_l


def backward(dout, k, v, lam, gamma, store_c, qt_l, c_l, b_l):
    """Run the backward kernel. Returns dq, dk (B,H,T,d), dv (B,H,T,dv), dlam (H,), dgamma (H,) or None."""
    B, H, T, d = k.shape
    dv_ = v.shape[3]
    N = B * H
    dt = k.dtype
    has_gamma = gamma is not None
    gam = gamma if has_gamma else np.ones(H, dtype=dt)
    dq = np.empty((N, T, d), dtype=dt)
    dk = np.empty((N, T, d), dtype=dt)
    dv = np.empty((N, T, dv_), dtype=dt)
    dlam_n = np.empty(N, dtype=dt)
    dgam_n = np.empty(N, dtype=dt)
    G = -(-N // L)
    _run_groups(_backward_range, G, _seq(k, N, T, d), _seq(v, N, T, dv_), _seq(dout, N, T, dv_),
                  _per_seq(lam, B, H, dt), _per_seq(gam, B, H, dt), has_gamma, bool(store_c),
                  qt_l, c_l, b_l, dq, dk, dv, dlam_n, dgam_n)
    dlam = dlam_n.reshape(B, H).sum(axis=0)
    dgamma = dgam_n.reshape(B, H).sum(axis=0) if has_gamma else None
    return (dq.reshape(B, H, T, d), dk.reshape(B, H, T, d), dv.reshape(B, H, T, dv_), dlam, dgamma)


def lanes_to_bhtd(x_l, B, H, T, d):
    """A lane-laid-out (G*T*d*LANES,) buffer as a (B, H, T, d) array."""
    out = np.empty((B * H, T, d), dtype=x_l.dtype)
    _lanes_to_bhtd(x_l, B * H, T, d, out)
    return out.reshape(B, H, T, d)
