"""SIMD Numba CPU kernels for the mesa-layer, [M2]-[M4] (docs/math.md section 3).

Plain twin: ``mesa_fast/kernels/plain/mesa.py``, functions ``forward`` and ``backward``. They compute the
same thing (same arguments; q~_t and w_t come back as (B, H, T, d) arrays instead of the lane layout below) the
plain way, one sequence per iteration of a ``prange`` with ordinary loops, and tests/fast/test_plain_kernels.py holds
them to the reference op: read them before this file. This version is faster because the passes over R, S, D and C
run 8 sequences per vector instruction: in the plain version a pass over a d x d matrix vectorises only along rows
of d = 20 (two 8-wide vectors and a scalar remainder) and the dot products (k.c, q~.u, the rows of D_t v_t) not at
all, since IEEE sums keep their order. ``benchmarks/bench_plain_vs_simd.py`` measures the two against each other
(benchmarks/results/bench_plain_vs_simd_cpu.json); this version runs by default (``runtime.tuning.DEFAULT_KERNELS``),
MESA_FAST_KERNELS=plain runs the plain one. The CUDA twin is ``mesa_fast/cuda/mesa.py``.

Re-expresses ``mesa_ref.ops.mesa.mesa_forward`` / ``mesa_backward``: the Sherman-Morrison recursion
``_sm_update`` [M2] and the closed-form reverse scan of ``mesa_backward`` [M3]; with gamma, the
reference's [M4] section, ``_sm_update_gamma`` and ``_mesa_backward_gamma`` (dgamma by lag-weighted
accumulators). What differs:

* Lanes. 8 independent (batch, head) sequences are processed together, one per SIMD lane
  (``lanevec.LaneVec``: <8 x float> / <8 x double> registers). Every per-sequence vector or matrix
  is "lane laid out": element (i, j) of lane l sits at ``(i*ncol + j)*LANES + l``. Each lane runs
  the scalar recursion, so a lane's result does not depend on its neighbours. Groups of 8 are
  spread over ``numba.get_num_threads()`` threads (``runtime.pool.run_groups``). Moving a token between the
  (N, T, width) arrays and the lane layout is an 8 x 8 register transpose.
* Fusion. One pass over R per token does the update [M2]/[M4] and both products with the new
  rows: q~_t = R_t q_t and c_{t+1} = R_t k_{t+1}. R is a full symmetric d x d matrix per lane.
  The rank-1 term is written w w^T with w_t = c_t sqrt(beta_t), beta_t = 1/(gamma + k_t.c_t) > 0,
  so the update R_ij <- (R_ij - w_i w_j)/gamma is one multiply per entry and keeps R exactly
  symmetric. Four rows at a time keep eight independent sums in flight (one sum per row would
  wait on the add latency; 4 rows measured clearly faster than 2). Full matrix or one
  triangle: a packed-triangle pass (each entry feeds row i in registers and row j through memory)
  measured no clear winner against the full 4-row pass, so the simpler full matrix stays
  (docs/performance-archive/notes.md, "Mesa-layer kernels", has both measurements).
* What the forward keeps. Never R_t (T d^2 per sequence: 80 MB at the paper shape, more memory
  traffic than the whole computation). The backward needs u_t = R_t dq~_t only, and
  dq~_t = S_t^T g_t needs a forward sweep anyway, so the backward rebuilds R_t going forward:
    "store":      the forward keeps w_t (T d numbers per sequence); the backward rebuilds R_t
                  from the rank-1 terms alone.
    "checkpoint": the forward keeps nothing beyond q~; the backward re-runs the whole recursion
                  from R_0 = I/lam (the one checkpoint a forward-sweeping backward needs).
                  ``checkpoint_every`` is validated and recorded by the op but not needed here.
  Both rebuild R_t with the forward's own expressions in the forward's order, so the backward's
  R_t is bit-for-bit the forward's R_t (as with the reference's "checkpoint").
* Layout of S. The forward keeps S_t (dv x d rows: o_t = S_t q~_t is a row reduction); the
  backward keeps S_t^T (d x dv rows: dq~_t = S_t^T g_t is a row reduction).

Arithmetic: everything runs in the input dtype (float32 in -> float32 arithmetic, including the
per-sequence dlam/dgamma sums; no float64 accumulation), IEEE operations without fast-math or FMA
contraction. One exception: the scalars gamma^t and lam t gamma^{t-1} of dlam/dgamma are computed
by the scalar ``**`` (in float64 for float32 input) and rounded to the dtype.

Shapes (N = B*H sequences, n = b*H + h; G = ceil(N / LANES) groups; lane l of group g is n = g*8 + l):
    q, k: (N, T, d)   v, dout: (N, T, dv)   lam_n, gam_n: (N,)   all C-contiguous, one dtype
    qt_l, w_l: flat (G*T*d*LANES,)  q~_t, w_t in lane layout: index ((g*T + t)*d + i)*LANES + l
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ...runtime.pool import run_groups
from ..buffers import contiguous_writeable
from .lanevec import LANES, vadd, vdiv, vload, vmul, vsplat, vsqrt, vstore, vsub, vtranspose_copy, vzeros

L = LANES
_JIT = dict(cache=True, fastmath=False, nogil=True)
_INLINE = dict(cache=True, fastmath=False, nogil=True, inline="always")

# --------------------------------------------------------------------------------------------
# moving one token between (N, T, width) arrays and the lane layout (width, L)
# --------------------------------------------------------------------------------------------


@njit(**_INLINE)
def _gather(xf, T, width, n0, nl, t, buf, boff):
    """buf[boff + i*L + l] = x[n0 + l, t, i] (xf: x flattened). Padding lanes are left alone."""
    base = (n0 * T + t) * width
    if nl == L and width >= L:
        i0 = 0
        while i0 < width:
            i0 = min(i0, width - L)    # the last block overlaps the previous one: same values
            vtranspose_copy(xf, base + i0, T * width, buf, boff + i0 * L, L)
            i0 += L
    else:
        for l in range(nl):
            for i in range(width):
                buf[boff + i * L + l] = xf[base + l * T * width + i]


@njit(**_INLINE)
def _scatter(buf, boff, xf, T, width, n0, nl, t):
    """x[n0 + l, t, i] = buf[boff + i*L + l] for the nl live lanes (xf: x flattened)."""
    base = (n0 * T + t) * width
    if nl == L and width >= L:
        i0 = 0
        while i0 < width:
            i0 = min(i0, width - L)
            vtranspose_copy(buf, boff + i0 * L, L, xf, base + i0, T * width)
            i0 += L
    else:
        for l in range(nl):
            for i in range(width):
                xf[base + l * T * width + i] = buf[boff + i * L + l]


@njit(**_INLINE)
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


@njit(**_INLINE)
def _init_R(R, lamv, d):
    """R_0 = I / lam (lane layout (d, d, L)); R must be zero on entry."""
    for l in range(L):
        ilam = 1 / lamv[l]
        for i in range(d):
            R[(i * d + i) * L + l] = ilam


@njit(**_INLINE)
def _matvec(R, x, y, d):
    """y = R x, lane-wise (R: (d, d, L), x, y: (d, L)); used once, for c_1 = R_0 k_1."""
    for i in range(d):
        acc = vzeros(x)
        row = i * d * L
        for j in range(d):
            acc = vadd(acc, vmul(vload(R, row + j * L), vload(x, j * L)))
        vstore(y, i * L, acc)


@njit(**_INLINE)
def _rank1_factor(kb, kof, c, w, gam, d):
    """w_t = c_t sqrt(beta_t), beta_t = 1/(gamma + k_t.c_t)  [M2]/[M4]  (k_t at kb[kof:]).

    c c^T / (gamma + k.c) = w w^T; k.c = k^T R_{t-1} k >= 0, so beta_t > 0."""
    den = gam
    for i in range(d):
        den = vadd(den, vmul(vload(kb, kof + i * L), vload(c, i * L)))
    sb = vsqrt(vdiv(vsplat(c, 1.0), den))
    for i in range(d):
        vstore(w, i * L, vmul(vload(c, i * L), sb))


# --------------------------------------------------------------------------------------------
# the passes over the d x d / d x dv accumulators, four rows at a time
# (rows i..i+3 clamped to the last row; a clamped duplicate recomputes the same values from the
#  same old entries and stores them again, and is masked out of every sum across rows)
# --------------------------------------------------------------------------------------------


@njit(**_INLINE)
def _r_pass(R, w, igam, x, xof, y, yof, xo, xoo, yo, d, has_gamma, want_y):
    """The update [M2]/[M4] and two products with the new rows, in one pass over R:

        R_ij <- (R_ij - w_i w_j) / gamma          (no gamma: R_ij - w_i w_j, [M2])
        xo_i = sum_j R_ij x_j,   yo_i = sum_j R_ij y_j (only if want_y)
    (x at x[xof:], y at y[yof:], xo written at xo[xoo:])."""
    for i in range(0, d, 4):
        i1 = min(i + 1, d - 1)
        i2 = min(i + 2, d - 1)
        i3 = min(i + 3, d - 1)
        w0 = vload(w, i * L)
        w1 = vload(w, i1 * L)
        w2 = vload(w, i2 * L)
        w3 = vload(w, i3 * L)
        r0 = i * d * L
        r1 = i1 * d * L
        r2 = i2 * d * L
        r3 = i3 * d * L
        ax0 = vzeros(w)
        ax1 = vzeros(w)
        ax2 = vzeros(w)
        ax3 = vzeros(w)
        ay0 = vzeros(w)
        ay1 = vzeros(w)
        ay2 = vzeros(w)
        ay3 = vzeros(w)
        for j in range(d):
            o = j * L
            wj = vload(w, o)
            a0 = vsub(vload(R, r0 + o), vmul(w0, wj))
            a1 = vsub(vload(R, r1 + o), vmul(w1, wj))
            a2 = vsub(vload(R, r2 + o), vmul(w2, wj))
            a3 = vsub(vload(R, r3 + o), vmul(w3, wj))
            if has_gamma:
                a0 = vmul(a0, igam)
                a1 = vmul(a1, igam)
                a2 = vmul(a2, igam)
                a3 = vmul(a3, igam)
            vstore(R, r3 + o, a3)
            vstore(R, r2 + o, a2)
            vstore(R, r1 + o, a1)
            vstore(R, r0 + o, a0)
            xj = vload(x, xof + o)
            ax0 = vadd(ax0, vmul(a0, xj))
            ax1 = vadd(ax1, vmul(a1, xj))
            ax2 = vadd(ax2, vmul(a2, xj))
            ax3 = vadd(ax3, vmul(a3, xj))
            if want_y:
                yj = vload(y, yof + o)
                ay0 = vadd(ay0, vmul(a0, yj))
                ay1 = vadd(ay1, vmul(a1, yj))
                ay2 = vadd(ay2, vmul(a2, yj))
                ay3 = vadd(ay3, vmul(a3, yj))
        vstore(xo, xoo + i3 * L, ax3)
        vstore(xo, xoo + i2 * L, ax2)
        vstore(xo, xoo + i1 * L, ax1)
        vstore(xo, xoo + i * L, ax0)
        if want_y:
            vstore(yo, i3 * L, ay3)
            vstore(yo, i2 * L, ay2)
            vstore(yo, i1 * L, ay1)
            vstore(yo, i * L, ay0)


@njit(**_INLINE)
def _s_pass(S, gam, p, pof, x, xof, z, zof, out, nrow, ncol, has_gamma):
    """One pass over an accumulator S (nrow x ncol):

        S_ab <- gamma S_ab + p_a x_b      (no gamma: S_ab + p_a x_b)      [M2]/[M4]
        out_a = sum_b S_ab z_b
    Forward: S_t (dv x d), p = v_t, x = k_t, z = q~_t -> o_t = S_t q~_t.
    Backward: S_t^T (d x dv), p = k_t, x = v_t, z = g_t -> dq~_t = S_t^T g_t."""
    for a in range(0, nrow, 4):
        a1 = min(a + 1, nrow - 1)
        a2 = min(a + 2, nrow - 1)
        a3 = min(a + 3, nrow - 1)
        p0 = vload(p, pof + a * L)
        p1 = vload(p, pof + a1 * L)
        p2 = vload(p, pof + a2 * L)
        p3 = vload(p, pof + a3 * L)
        r0 = a * ncol * L
        r1 = a1 * ncol * L
        r2 = a2 * ncol * L
        r3 = a3 * ncol * L
        z0 = vzeros(S)
        z1 = vzeros(S)
        z2 = vzeros(S)
        z3 = vzeros(S)
        for b in range(ncol):
            o = b * L
            xb = vload(x, xof + o)
            if has_gamma:
                s0 = vadd(vmul(gam, vload(S, r0 + o)), vmul(p0, xb))
                s1 = vadd(vmul(gam, vload(S, r1 + o)), vmul(p1, xb))
                s2 = vadd(vmul(gam, vload(S, r2 + o)), vmul(p2, xb))
                s3 = vadd(vmul(gam, vload(S, r3 + o)), vmul(p3, xb))
            else:
                s0 = vadd(vload(S, r0 + o), vmul(p0, xb))
                s1 = vadd(vload(S, r1 + o), vmul(p1, xb))
                s2 = vadd(vload(S, r2 + o), vmul(p2, xb))
                s3 = vadd(vload(S, r3 + o), vmul(p3, xb))
            vstore(S, r3 + o, s3)
            vstore(S, r2 + o, s2)
            vstore(S, r1 + o, s1)
            vstore(S, r0 + o, s0)
            zb = vload(z, zof + o)
            z0 = vadd(z0, vmul(s0, zb))
            z1 = vadd(z1, vmul(s1, zb))
            z2 = vadd(z2, vmul(s2, zb))
            z3 = vadd(z3, vmul(s3, zb))
        vstore(out, a3 * L, z3)
        vstore(out, a2 * L, z2)
        vstore(out, a1 * L, z1)
        vstore(out, a * L, z0)


@njit(**_INLINE)
def _d_pass(D, D1, gam, qt, qof, G, gof, V, vof, K, kof, dkb, dvb, d, dv, has_gamma):
    """D_t = gamma D_{t+1} + q~_t g_t^T;  dk_t = D_t v_t;  dv_t = D_t^T k_t             [M3]
    with gamma also D'_t = gamma D'_{t+1} + D_{t+1}; returns sum_i k_i (D'_t v_t)_i      [M4]
    (zero without gamma). q~_t at qt[qof:], g_t at G[gof:], v_t at V[vof:], k_t at K[kof:]."""
    zero = vzeros(D)
    for a in range(dv):
        vstore(dvb, a * L, zero)
    kdv = zero
    for i in range(0, d, 4):
        i1 = min(i + 1, d - 1)
        i2 = min(i + 2, d - 1)
        i3 = min(i + 3, d - 1)
        q0 = vload(qt, qof + i * L)
        q1 = vload(qt, qof + i1 * L)
        q2 = vload(qt, qof + i2 * L)
        q3 = vload(qt, qof + i3 * L)
        k0 = vload(K, kof + i * L)                       # k of a clamped duplicate row is 0:
        k1 = vload(K, kof + i1 * L) if i + 1 < d else zero   # it must not count twice in dv_t
        k2 = vload(K, kof + i2 * L) if i + 2 < d else zero
        k3 = vload(K, kof + i3 * L) if i + 3 < d else zero
        r0 = i * dv * L
        r1 = i1 * dv * L
        r2 = i2 * dv * L
        r3 = i3 * dv * L
        e0 = zero
        e1 = zero
        e2 = zero
        e3 = zero
        p0 = zero
        p1 = zero
        p2 = zero
        p3 = zero
        for a in range(dv):
            o = a * L
            va = vload(V, vof + o)
            ga = vload(G, gof + o)
            o0 = vload(D, r0 + o)
            o1 = vload(D, r1 + o)
            o2 = vload(D, r2 + o)
            o3 = vload(D, r3 + o)
            if has_gamma:
                f0 = vadd(vmul(gam, vload(D1, r0 + o)), o0)            # [M4] D'_t
                f1 = vadd(vmul(gam, vload(D1, r1 + o)), o1)
                f2 = vadd(vmul(gam, vload(D1, r2 + o)), o2)
                f3 = vadd(vmul(gam, vload(D1, r3 + o)), o3)
                vstore(D1, r3 + o, f3)
                vstore(D1, r2 + o, f2)
                vstore(D1, r1 + o, f1)
                vstore(D1, r0 + o, f0)
                p0 = vadd(p0, vmul(f0, va))
                p1 = vadd(p1, vmul(f1, va))
                p2 = vadd(p2, vmul(f2, va))
                p3 = vadd(p3, vmul(f3, va))
                n0 = vadd(vmul(gam, o0), vmul(q0, ga))                 # [M4] D_t
                n1 = vadd(vmul(gam, o1), vmul(q1, ga))
                n2 = vadd(vmul(gam, o2), vmul(q2, ga))
                n3 = vadd(vmul(gam, o3), vmul(q3, ga))
            else:
                n0 = vadd(o0, vmul(q0, ga))                            # [M3] D_t
                n1 = vadd(o1, vmul(q1, ga))
                n2 = vadd(o2, vmul(q2, ga))
                n3 = vadd(o3, vmul(q3, ga))
            vstore(D, r3 + o, n3)
            vstore(D, r2 + o, n2)
            vstore(D, r1 + o, n1)
            vstore(D, r0 + o, n0)
            e0 = vadd(e0, vmul(n0, va))
            e1 = vadd(e1, vmul(n1, va))
            e2 = vadd(e2, vmul(n2, va))
            e3 = vadd(e3, vmul(n3, va))
            s = vadd(vadd(vmul(k0, n0), vmul(k1, n1)), vadd(vmul(k2, n2), vmul(k3, n3)))
            vstore(dvb, o, vadd(vload(dvb, o), s))                     # [M3] dv_t = D_t^T k_t
        vstore(dkb, i3 * L, e3)                                        # [M3] dk_t = D_t v_t ...
        vstore(dkb, i2 * L, e2)
        vstore(dkb, i1 * L, e1)
        vstore(dkb, i * L, e0)
        if has_gamma:
            kdv = vadd(kdv, vadd(vadd(vmul(k0, p0), vmul(k1, p1)), vadd(vmul(k2, p2), vmul(k3, p3))))
    return kdv


@njit(**_INLINE)
def _c_pass(C, C1, gam, qt, qof, U, uof, K, kof, dkb, d, has_gamma):
    """C_t = gamma C_{t+1} + u_t q~_t^T + q~_t u_t^T;  dk_t -= C_t k_t                  [M3]
    with gamma also C'_t = gamma C'_{t+1} + C_{t+1}; returns sum_i k_i (C'_t k_t)_i      [M4]
    (zero without gamma). q~_t at qt[qof:], u_t at U[uof:], k_t at K[kof:]."""
    zero = vzeros(C)
    kck = zero
    for i in range(0, d, 4):
        i1 = min(i + 1, d - 1)
        i2 = min(i + 2, d - 1)
        i3 = min(i + 3, d - 1)
        q0 = vload(qt, qof + i * L)
        q1 = vload(qt, qof + i1 * L)
        q2 = vload(qt, qof + i2 * L)
        q3 = vload(qt, qof + i3 * L)
        u0 = vload(U, uof + i * L)
        u1 = vload(U, uof + i1 * L)
        u2 = vload(U, uof + i2 * L)
        u3 = vload(U, uof + i3 * L)
        r0 = i * d * L
        r1 = i1 * d * L
        r2 = i2 * d * L
        r3 = i3 * d * L
        e0 = zero
        e1 = zero
        e2 = zero
        e3 = zero
        p0 = zero
        p1 = zero
        p2 = zero
        p3 = zero
        for j in range(d):
            o = j * L
            kj = vload(K, kof + o)
            qj = vload(qt, qof + o)
            uj = vload(U, uof + o)
            o0 = vload(C, r0 + o)
            o1 = vload(C, r1 + o)
            o2 = vload(C, r2 + o)
            o3 = vload(C, r3 + o)
            m0 = vadd(vmul(u0, qj), vmul(q0, uj))
            m1 = vadd(vmul(u1, qj), vmul(q1, uj))
            m2 = vadd(vmul(u2, qj), vmul(q2, uj))
            m3 = vadd(vmul(u3, qj), vmul(q3, uj))
            if has_gamma:
                f0 = vadd(vmul(gam, vload(C1, r0 + o)), o0)            # [M4] C'_t
                f1 = vadd(vmul(gam, vload(C1, r1 + o)), o1)
                f2 = vadd(vmul(gam, vload(C1, r2 + o)), o2)
                f3 = vadd(vmul(gam, vload(C1, r3 + o)), o3)
                vstore(C1, r3 + o, f3)
                vstore(C1, r2 + o, f2)
                vstore(C1, r1 + o, f1)
                vstore(C1, r0 + o, f0)
                p0 = vadd(p0, vmul(f0, kj))
                p1 = vadd(p1, vmul(f1, kj))
                p2 = vadd(p2, vmul(f2, kj))
                p3 = vadd(p3, vmul(f3, kj))
                n0 = vadd(vmul(gam, o0), m0)                           # [M4] C_t
                n1 = vadd(vmul(gam, o1), m1)
                n2 = vadd(vmul(gam, o2), m2)
                n3 = vadd(vmul(gam, o3), m3)
            else:
                n0 = vadd(o0, m0)                                      # [M3] C_t
                n1 = vadd(o1, m1)
                n2 = vadd(o2, m2)
                n3 = vadd(o3, m3)
            vstore(C, r3 + o, n3)
            vstore(C, r2 + o, n2)
            vstore(C, r1 + o, n1)
            vstore(C, r0 + o, n0)
            e0 = vadd(e0, vmul(n0, kj))
            e1 = vadd(e1, vmul(n1, kj))
            e2 = vadd(e2, vmul(n2, kj))
            e3 = vadd(e3, vmul(n3, kj))
        # [M3] dk_t = D_t v_t - C_t k_t (each distinct row once)
        vstore(dkb, i * L, vsub(vload(dkb, i * L), e0))
        if i + 1 < d:
            vstore(dkb, i1 * L, vsub(vload(dkb, i1 * L), e1))
        if i + 2 < d:
            vstore(dkb, i2 * L, vsub(vload(dkb, i2 * L), e2))
        if i + 3 < d:
            vstore(dkb, i3 * L, vsub(vload(dkb, i3 * L), e3))
        if has_gamma:
            k0 = vload(K, kof + i * L)
            k1 = vload(K, kof + i1 * L) if i + 1 < d else zero
            k2 = vload(K, kof + i2 * L) if i + 2 < d else zero
            k3 = vload(K, kof + i3 * L) if i + 3 < d else zero
            kck = vadd(kck, vadd(vadd(vmul(k0, p0), vmul(k1, p1)), vadd(vmul(k2, p2), vmul(k3, p3))))
    return kck


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------


@njit(**_JIT)
def _forward_group(g, qf, kf, vf, T, d, dv, N, lam_n, gam_n, has_gamma, store_w, outf, qt_l, w_l):
    """[M2]/[M4] for the sequences n0 .. n0+nl-1 of group g (one per lane)."""
    n0 = g * L
    nl = min(L, N - n0)
    dt = qf.dtype
    R = np.zeros(d * d * L, dt)        # R_t                     (d, d, L)
    S = np.zeros(dv * d * L, dt)       # S_t                     (dv, d, L)
    kb = np.zeros(d * L, dt)           # k_t                     (d, L)
    kn = np.zeros(d * L, dt)           # k_{t+1}                 (d, L)
    qb = np.zeros(d * L, dt)           # q_t                     (d, L)
    vb = np.zeros(dv * L, dt)          # v_t                     (dv, L)
    c = np.zeros(d * L, dt)            # c_t = R_{t-1} k_t       (d, L)
    w = np.zeros(d * L, dt)            # w_t = c_t sqrt(beta_t)  (d, L)
    qtb = np.zeros(d * L, dt)          # q~_t                    (d, L)
    ob = np.zeros(dv * L, dt)          # o_t                     (dv, L)
    lamv = np.empty(L, dt)
    gv = np.empty(L, dt)
    igv = np.empty(L, dt)
    _lane_params(lam_n, gam_n, n0, nl, lamv, gv, igv)
    gam = vload(gv, 0)
    igam = vload(igv, 0)
    _init_R(R, lamv, d)                                    # [M2] R_0 = I/lam
    _gather(kf, T, d, n0, nl, 0, kb, 0)
    _matvec(R, kb, c, d)                                   # [M2] c_1 = R_0 k_1
    for t in range(T):
        _gather(qf, T, d, n0, nl, t, qb, 0)
        _gather(vf, T, dv, n0, nl, t, vb, 0)
        _rank1_factor(kb, 0, c, w, gam, d)                 # [M2]/[M4] w_t
        if store_w:
            base = (g * T + t) * d * L
            for i in range(d):
                vstore(w_l, base + i * L, vload(w, i * L))
        last = t + 1 == T
        if not last:
            _gather(kf, T, d, n0, nl, t + 1, kn, 0)
        # R_t; q~_t = R_t q_t; c_{t+1} = R_t k_{t+1}        [M2]
        _r_pass(R, w, igam, qb, 0, kn, 0, qtb, 0, c, d, has_gamma, not last)
        # S_t = gamma S_{t-1} + v_t k_t^T; o_t = S_t q~_t   [M2]/[M4]
        _s_pass(S, gam, vb, 0, kb, 0, qtb, 0, ob, dv, d, has_gamma)
        _scatter(ob, 0, outf, T, dv, n0, nl, t)
        base = (g * T + t) * d * L
        for i in range(d):
            vstore(qt_l, base + i * L, vload(qtb, i * L))
        kb, kn = kn, kb


@njit(**_JIT)
def _forward_range(g0, g1, q, k, v, lam_n, gam_n, has_gamma, store_w, out, qt_l, w_l):
    N, T, d = q.shape
    dv = v.shape[2]
    qf = q.reshape(q.size)
    kf = k.reshape(k.size)
    vf = v.reshape(v.size)
    outf = out.reshape(out.size)
    for g in range(g0, g1):
        _forward_group(g, qf, kf, vf, T, d, dv, N, lam_n, gam_n, has_gamma, store_w, outf, qt_l, w_l)


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------


@njit(**_JIT)
def _backward_group(g, kf, vf, gf, T, d, dv, N, lam_n, gam_n, has_gamma, store_w, qt_l, w_l,
                    dqf, dkf, dvf, dlam_n, dgam_n):
    """[M3]/[M4] for the sequences of group g: forward sweep for u_t, reverse scan for dk, dv."""
    n0 = g * L
    nl = min(L, N - n0)
    dt = kf.dtype
    R = np.zeros(d * d * L, dt)        # R_t                     (d, d, L)
    ST = np.zeros(d * dv * L, dt)      # S_t^T                   (d, dv, L)
    K = np.empty(T * d * L, dt)        # k_t, all t              (T, d, L)
    V = np.empty(T * dv * L, dt)       # v_t, all t              (T, dv, L)
    G = np.empty(T * dv * L, dt)       # g_t = dL/do_t, all t    (T, dv, L)
    U = np.empty(T * d * L, dt)        # u_t, all t              (T, d, L)
    if nl < L:                         # padding lanes: zero inputs (the gathers skip them)
        K[:] = 0
        V[:] = 0
        G[:] = 0
    c = np.zeros(d * L, dt)            # c_t                     (d, L)
    w = np.zeros(d * L, dt)            # w_t                     (d, L)
    ab = np.zeros(d * L, dt)           # dq~_t = S_t^T g_t       (d, L)
    lamv = np.empty(L, dt)
    gv = np.empty(L, dt)
    igv = np.empty(L, dt)
    _lane_params(lam_n, gam_n, n0, nl, lamv, gv, igv)
    gam = vload(gv, 0)
    igam = vload(igv, 0)
    _init_R(R, lamv, d)                                    # [M2] R_0 = I/lam
    _gather(kf, T, d, n0, nl, 0, K, 0)
    if not store_w:
        _matvec(R, K, c, d)                                # c_1 = R_0 k_1, as in the forward

    # 1. forward sweep: S_t^T, dq~_t = S_t^T g_t, R_t (rebuilt), u_t = R_t dq~_t        [M3]
    for t in range(T):
        ko = t * d * L
        vo = t * dv * L
        _gather(vf, T, dv, n0, nl, t, V, vo)
        _gather(gf, T, dv, n0, nl, t, G, vo)
        _s_pass(ST, gam, K, ko, V, vo, G, vo, ab, d, dv, has_gamma)   # [M3] dq~_t = S_t^T g_t
        last = t + 1 == T
        if store_w:
            base = (g * T + t) * d * L
            for i in range(d):
                vstore(w, i * L, vload(w_l, base + i * L))
        else:
            _rank1_factor(K, ko, c, w, gam, d)             # the forward's expression
        if not last:
            _gather(kf, T, d, n0, nl, t + 1, K, ko + d * L)
        # R_t; u_t = R_t dq~_t; c_{t+1} = R_t k_{t+1} ("checkpoint" only)   [M3]
        _r_pass(R, w, igam, ab, 0, K, ko + d * L, U, ko, c, d, has_gamma,
                (not store_w) and (not last))
        _scatter(U, ko, dqf, T, d, n0, nl, t)              # [M3] dq_t = u_t

    # 2. reverse scan: D_t, C_t (and D'_t, C'_t for dgamma)                               [M3]/[M4]
    D = np.zeros(d * dv * L, dt)       # D_t = sum_{t''>=t} w q~ g^T            (d, dv, L)
    C = np.zeros(d * d * L, dt)        # C_t = sum_{t''>=t} w (u q~^T + q~ u^T) (d, d, L)
    D1 = np.zeros(d * dv * L if has_gamma else L, dt)    # D'_t (gamma only)   (d, dv, L)
    C1 = np.zeros(d * d * L if has_gamma else L, dt)     # C'_t (gamma only)   (d, d, L)
    dvb = np.zeros(dv * L, dt)         # dv_t                                   (dv, L)
    dkb = np.zeros(d * L, dt)          # dk_t                                   (d, L)
    gpw = np.empty(L, dt)              # gamma^t (t 1-based)
    treg = np.empty(L, dt)             # lam t gamma^{t-1}
    half = vsplat(dkb, 0.5)
    dla = vzeros(dkb)                  # dlam, per lane
    dga = vzeros(dkb)                  # dgamma, per lane
    for t in range(T - 1, -1, -1):
        ko = t * d * L
        vo = t * dv * L
        bq = (g * T + t) * d * L       # q~_t in qt_l
        kdv = _d_pass(D, D1, gam, qt_l, bq, G, vo, V, vo, K, ko, dkb, dvb, d, dv, has_gamma)
        kck = _c_pass(C, C1, gam, qt_l, bq, U, ko, K, ko, dkb, d, has_gamma)
        qu = vzeros(dkb)
        for i in range(d):
            qu = vadd(qu, vmul(vload(qt_l, bq + i * L), vload(U, ko + i * L)))
        if has_gamma:
            for l in range(L):
                gpw[l] = gv[l] ** (t + 1)
                treg[l] = lamv[l] * (t + 1) * gv[l] ** t
            dga = vadd(dga, vsub(kdv, vmul(half, kck)))                       # [M4] k.D'v - k.C'k/2
            dla = vsub(dla, vmul(vload(gpw, 0), qu))                          # [M4] -gamma^t q~.u
            dga = vsub(dga, vmul(vload(treg, 0), qu))                         # [M4] -lam t gamma^{t-1} q~.u
        else:
            dla = vsub(dla, qu)                                               # [M3] -q~.u
        _scatter(dkb, 0, dkf, T, d, n0, nl, t)
        _scatter(dvb, 0, dvf, T, dv, n0, nl, t)
    vstore(gpw, 0, dla)
    vstore(treg, 0, dga)
    for l in range(nl):
        dlam_n[n0 + l] = gpw[l]
        dgam_n[n0 + l] = treg[l]


@njit(**_JIT)
def _backward_range(g0, g1, k, v, dout, lam_n, gam_n, has_gamma, store_w, qt_l, w_l,
                    dq, dk, dv, dlam_n, dgam_n):
    N, T, d = k.shape
    dv_ = v.shape[2]
    kf = k.reshape(k.size)
    vf = v.reshape(v.size)
    gf = dout.reshape(dout.size)
    dqf = dq.reshape(dq.size)
    dkf = dk.reshape(dk.size)
    dvf = dv.reshape(dv.size)
    for g in range(g0, g1):
        _backward_group(g, kf, vf, gf, T, d, dv_, N, lam_n, gam_n, has_gamma, store_w, qt_l, w_l,
                        dqf, dkf, dvf, dlam_n, dgam_n)


@njit(**_JIT)
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

def _seq(x, N, T, w):
    """(B, H, T, w) array -> C-contiguous, writeable (N, T, w) (copied only when needed)."""
    return contiguous_writeable(x).reshape(N, T, w)


def _per_seq(p, B, H, dtype):
    """(H,) per-head parameter -> (N,) per-sequence, n = b*H + h."""
    return np.array(np.broadcast_to(np.asarray(p, dtype=dtype), (B, H)), order="C").reshape(B * H)


def forward(q, k, v, lam, gamma, store_w):
    """Run the forward kernel. q, k (B,H,T,d), v (B,H,T,dv), lam/gamma (H,) (gamma may be None).

    Returns out (B,H,T,dv) and the lane-laid-out qt_l (q~_t) and w_l (w_t = c_t sqrt(beta_t);
    empty unless store_w).
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
    w_l = np.empty(G * T * d * L if store_w else 0, dtype=dt)
    run_groups(_forward_range, G, q=_seq(q, N, T, d), k=_seq(k, N, T, d), v=_seq(v, N, T, dv),
               lam_n=_per_seq(lam, B, H, dt), gam_n=_per_seq(gam, B, H, dt), has_gamma=has_gamma,
               store_w=bool(store_w), out=out, qt_l=qt_l, w_l=w_l)
    return out.reshape(B, H, T, dv), qt_l, w_l


def backward(dout, k, v, lam, gamma, store_w, qt_l, w_l):
    """Run the backward kernel. Returns dq, dk (B,H,T,d), dv (B,H,T,dv), dlam (H,), dgamma (H,) or None."""
    B, H, T, d = k.shape
    dv_ = v.shape[3]
    N = B * H
    G = -(-N // L)
    dt = k.dtype
    has_gamma = gamma is not None
    gam = gamma if has_gamma else np.ones(H, dtype=dt)
    dq = np.empty((N, T, d), dtype=dt)
    dk = np.empty((N, T, d), dtype=dt)
    dv = np.empty((N, T, dv_), dtype=dt)
    dlam_n = np.empty(N, dtype=dt)
    dgam_n = np.empty(N, dtype=dt)
    run_groups(_backward_range, G, k=_seq(k, N, T, d), v=_seq(v, N, T, dv_), dout=_seq(dout, N, T, dv_),
               lam_n=_per_seq(lam, B, H, dt), gam_n=_per_seq(gam, B, H, dt), has_gamma=has_gamma,
               store_w=bool(store_w), qt_l=qt_l, w_l=w_l, dq=dq, dk=dk, dv=dv, dlam_n=dlam_n, dgam_n=dgam_n)
    dlam = dlam_n.reshape(B, H).sum(axis=0)
    dgamma = dgam_n.reshape(B, H).sum(axis=0) if has_gamma else None
    return (dq.reshape(B, H, T, d), dk.reshape(B, H, T, d), dv.reshape(B, H, T, dv_), dlam, dgamma)


def lanes_to_bhtd(x_l, B, H, T, d):
    """A lane-laid-out (G*T*d*LANES,) buffer as a (B, H, T, d) array."""
    out = np.empty((B * H, T, d), dtype=x_l.dtype)
    _lanes_to_bhtd(x_l, B * H, T, d, out)
    return out.reshape(B, H, T, d)
