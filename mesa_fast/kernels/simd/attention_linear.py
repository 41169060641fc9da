"""SIMD Numba CPU kernels for causal linear attention [L2].

Plain twin: ``mesa_fast/kernels/plain/attention_linear.py`` computes the same kernels (``linear_forward``,
``linear_backward``: same arguments, same results up to rounding) the plain way, one sequence per iteration of a
``prange`` with ordinary loops, and tests/fast/test_plain_kernels.py holds it to the reference ops: read it before this
file. This version is faster because one sequence's rows are short and odd for vector registers (d = dv = 20,
T = 50 in the paper's models): the plain loops vectorise only along a row of 20 (two 8-wide vectors and a scalar
remainder) and their dot products not at all (IEEE sums keep their order), while here 16 independent sequences fill
the 16 lanes of every register (``attention_lanes.py``: the lane layout, the gathers and scatters, the NaN/inf
checks), so each operation is full width and each lane's sums keep the scalar order.
``benchmarks/bench_plain_vs_simd.py`` measures the two against each other; this version runs by default
(``runtime.tuning.DEFAULT_KERNELS``), MESA_FAST_KERNELS=plain runs the plain one.

Re-expresses ``mesa_ref.ops.attention_linear``. The plain reference of these kernels is
``linear_attention_recurrent_forward`` / ``linear_attention_recurrent_backward`` there: the same running state S_t,
forward sweep for dq and reverse sweep with G_t for dk, dv, tested equal to the T x T op ``linear_attention_forward``
/ ``linear_attention_backward`` that the ops namespace exports. What differs:

* Recurrent form. The T x T reference builds the masked score matrix A = mask(q k^T) (T x T per
  sequence) and multiplies it by v. Here each sequence keeps the running state
  S_t = sum_{t'<=t} v_{t'} k_{t'}^T (dv x d), so out_t = S_t q_t [L2] with the same sums taken
  in another order. The backward uses the same state and its reverse-time twin
  G_t = sum_{t'>=t} dout_{t'} q_{t'}^T:
      dq_t = S_t^T dout_t,   dk_t = G_t^T v_t,   dv_t = G_t k_t.
  So nothing T x T is ever formed, and the cache is just (q, k, v). Each sweep takes two tokens per pass over
  its state (``_outer_step2``, ``_g_step2``): every entry of S or G is loaded and stored once
  per pair, with the same operations in the same order as one token at a time.
* Lanes: 16 sequences per group (``attention_lanes.py``); S and G are (dv*d*L,) buffers.

The 16 lanes and FMA were each kept because they made the recursion faster (docs/performance-archive/notes.md,
"Attention kernels").

Arithmetic: in the input dtype (float32 in -> float32 arithmetic), IEEE operations without fast-math,
with one exception: every multiply-add of the recursions is fused (``lanevec.vfma``, rounded once), which
made the recursion faster. Float32 results differ from the reference's float32 results by rounding only (sums in
another order, fused multiply-adds); tests/fast/test_fast_ops.py holds the float32 outputs and gradients to 1e-5 of
their largest entry (max|fast - truth| / max|truth|, its TOL table), the truth being the float64 reference on the
same float32-rounded inputs.

Shapes (N = B*H sequences, G = ceil(N / L) groups):
    q, k: (B, H, T, d)   v, dout: (B, H, T, dv)                        inputs, any strides
    out: (B, H, T, dv)                                                  laid out in memory as (B, T, H, dv),
         so that the model's merge of the heads (the next step) needs no copy
    dq, dk: (B, H, T, d)   dv: (B, H, T, dv)                            laid out as one (B, T, 3, H, d)
         buffer when d == dv (the fused QKV layout: ``mesa_fast.ops.heads.merge_qkv`` is then a reshape), else as
         (B, T, H, width) each (``kernels/buffers.py``)
"""
from __future__ import annotations

from numba import njit

from ...runtime.pool import run_groups
from ..buffers import grad_buffers, merged_empty
from .attention_lanes import (L, _all_zero, _finite_acc, _gather4, _gather_qkv, _gather_token, _groups, _lane_view,
                              _lanes_finite, _scatter_qkv, _scatter_token, _strided)
from .lanevec import aligned_empty, aligned_zeros, vfma, vstore, wload, wzeros


# --------------------------------------------------------------------------------------------
# linear attention [L2]
# --------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _outer_step1(X, u, uo, w, wo, z, zo, y, yo, R, C):
    """One token of a running outer-product state (the linear forward's S = sum v k^T, and the backward's S^T for
    dq): X[r, c] += u[r] w[c], then y[r] = sum_c X[r, c] z[c]. X is (R x C) lane-laid-out at (r*C + c)*L; the
    token's u, y (R lane vectors) and w, z (C) start at offsets uo, yo, wo, zo of their buffers. Rows r of X 4 at
    a time, so that 4 independent accumulators hide the add latency."""
    CL = C * L
    r = 0
    while r + 4 <= R:
        u0 = wload(u, uo + r * L)
        u1 = wload(u, uo + (r + 1) * L)
        u2 = wload(u, uo + (r + 2) * L)
        u3 = wload(u, uo + (r + 3) * L)
        a0 = wzeros(X)
        a1 = wzeros(X)
        a2 = wzeros(X)
        a3 = wzeros(X)
        for c in range(C):
            wc = wload(w, wo + c * L)
            zc = wload(z, zo + c * L)
            o = r * CL + c * L
            x0 = vfma(u0, wc, wload(X, o))
            vstore(X, o, x0)
            a0 = vfma(x0, zc, a0)
            x1 = vfma(u1, wc, wload(X, o + CL))
            vstore(X, o + CL, x1)
            a1 = vfma(x1, zc, a1)
            x2 = vfma(u2, wc, wload(X, o + 2 * CL))
            vstore(X, o + 2 * CL, x2)
            a2 = vfma(x2, zc, a2)
            x3 = vfma(u3, wc, wload(X, o + 3 * CL))
            vstore(X, o + 3 * CL, x3)
            a3 = vfma(x3, zc, a3)
        vstore(y, yo + r * L, a0)
        vstore(y, yo + (r + 1) * L, a1)
        vstore(y, yo + (r + 2) * L, a2)
        vstore(y, yo + (r + 3) * L, a3)
        r += 4
    while r < R:
        ur = wload(u, uo + r * L)
        acc = wzeros(X)
        for c in range(C):
            o = r * CL + c * L
            x = vfma(ur, wload(w, wo + c * L), wload(X, o))
            vstore(X, o, x)
            acc = vfma(x, wload(z, zo + c * L), acc)
        vstore(y, yo + r * L, acc)
        r += 1


@njit(cache=True, nogil=True)
def _outer_step2(X, u, uo, w, wo, z, zo, y, yo, R, C):
    """``_outer_step1`` for two consecutive tokens in one pass over X, the second token's vectors right after the
    first's in each buffer (u, y at + R*L, w, z at + C*L): each entry of X is loaded once, updated and read for
    the first token, updated and read for the second, and stored once; the same operations in the same order as
    two ``_outer_step1`` calls."""
    CL = C * L
    RL = R * L
    r = 0
    while r + 4 <= R:
        u0 = wload(u, uo + r * L)
        u1 = wload(u, uo + (r + 1) * L)
        u2 = wload(u, uo + (r + 2) * L)
        u3 = wload(u, uo + (r + 3) * L)
        p0 = wload(u, uo + RL + r * L)
        p1 = wload(u, uo + RL + (r + 1) * L)
        p2 = wload(u, uo + RL + (r + 2) * L)
        p3 = wload(u, uo + RL + (r + 3) * L)
        a0 = wzeros(X)
        a1 = wzeros(X)
        a2 = wzeros(X)
        a3 = wzeros(X)
        b0 = wzeros(X)
        b1 = wzeros(X)
        b2 = wzeros(X)
        b3 = wzeros(X)
        for c in range(C):
            wc = wload(w, wo + c * L)
            zc = wload(z, zo + c * L)
            vc = wload(w, wo + CL + c * L)
            ec = wload(z, zo + CL + c * L)
            o = r * CL + c * L
            x0 = vfma(u0, wc, wload(X, o))                  # after the first token
            a0 = vfma(x0, zc, a0)
            x0 = vfma(p0, vc, x0)                          # after the second
            b0 = vfma(x0, ec, b0)
            vstore(X, o, x0)
            x1 = vfma(u1, wc, wload(X, o + CL))
            a1 = vfma(x1, zc, a1)
            x1 = vfma(p1, vc, x1)
            b1 = vfma(x1, ec, b1)
            vstore(X, o + CL, x1)
            x2 = vfma(u2, wc, wload(X, o + 2 * CL))
            a2 = vfma(x2, zc, a2)
            x2 = vfma(p2, vc, x2)
            b2 = vfma(x2, ec, b2)
            vstore(X, o + 2 * CL, x2)
            x3 = vfma(u3, wc, wload(X, o + 3 * CL))
            a3 = vfma(x3, zc, a3)
            x3 = vfma(p3, vc, x3)
            b3 = vfma(x3, ec, b3)
            vstore(X, o + 3 * CL, x3)
        vstore(y, yo + r * L, a0)
        vstore(y, yo + (r + 1) * L, a1)
        vstore(y, yo + (r + 2) * L, a2)
        vstore(y, yo + (r + 3) * L, a3)
        vstore(y, yo + RL + r * L, b0)
        vstore(y, yo + RL + (r + 1) * L, b1)
        vstore(y, yo + RL + (r + 2) * L, b2)
        vstore(y, yo + RL + (r + 3) * L, b3)
        r += 4
    while r < R:
        ur = wload(u, uo + r * L)
        pr = wload(u, uo + RL + r * L)
        acc = wzeros(X)
        acc2 = wzeros(X)
        for c in range(C):
            o = r * CL + c * L
            x = vfma(ur, wload(w, wo + c * L), wload(X, o))
            acc = vfma(x, wload(z, zo + c * L), acc)
            x = vfma(pr, wload(w, wo + CL + c * L), x)
            acc2 = vfma(x, wload(z, zo + CL + c * L), acc2)
            vstore(X, o, x)
        vstore(y, yo + r * L, acc)
        vstore(y, yo + RL + r * L, acc2)
        r += 1


@njit(cache=True, nogil=True)
def _linear_forward_group(q, qs, k, ks, v, vs, out, os, N, H, T, d, dv, g):
    """One group of L sequences: S_t = S_{t-1} + v_t k_t^T, out_t = S_t q_t.  [L2]

    Two tokens at a time: q, k, v of tokens t and t+1 are gathered into two-token lane buffers and out_t,
    out_{t+1} scattered from one, so that every buffer but the inputs and outputs stays in L1 (measured a little
    faster than whole-sequence buffers), and S is read and written once per pair of tokens (``_outer_step2``);
    an odd last token goes alone (``_outer_step1``)."""
    n0 = g * L
    nl = min(L, N - n0)
    qg = aligned_empty(2 * d * L, q)
    kg = aligned_empty(2 * d * L, q)
    vg = aligned_empty(2 * dv * L, q)
    og = aligned_empty(2 * dv * L, q)
    S = aligned_zeros(dv * d * L, q)                  # S[j, i] at (j*d + i)*L
    bq, fq = _lane_view(qs, n0, nl, H, d)
    bk, fk = _lane_view(ks, n0, nl, H, d)
    bv, fv = _lane_view(vs, n0, nl, H, dv)
    bo, fo = _lane_view(os, n0, nl, H, dv)
    fin = wzeros(qg)
    t = 0
    while t < T:
        n = 2 if t + 1 < T else 1
        for m in range(n):
            _gather_token(q, qs, bq, fq, nl, t + m, d, qg, m)
            _gather_token(k, ks, bk, fk, nl, t + m, d, kg, m)
            _gather_token(v, vs, bv, fv, nl, t + m, dv, vg, m)
        fin = _finite_acc(vg, n * dv, _finite_acc(kg, n * d, _finite_acc(qg, n * d, fin)))
        if n == 2:                                      # S[j, i] += v[j] k[i], out[j] = sum_i S[j, i] q[i]
            _outer_step2(S, vg, 0, kg, 0, qg, 0, og, 0, dv, d)
        else:
            _outer_step1(S, vg, 0, kg, 0, qg, 0, og, 0, dv, d)
        for m in range(n):
            _scatter_token(og, m, out, os, bo, fo, nl, t + m, dv)
        t += n
    return _all_zero(fin, qg)


@njit(cache=True, nogil=True)
def _linear_forward_range(g0, g1, q, qs, k, ks, v, vs, out, os, N, H, T, d, dv):
    """Runs groups g0..g1-1; returns whether all their q, k, v values are finite."""
    ok = True
    for g in range(g0, g1):
        ok &= _linear_forward_group(q, qs, k, ks, v, vs, out, os, N, H, T, d, dv, g)
    return ok


@njit(cache=True, nogil=True)
def _g_rows(Gm, qg, kg, vg, dog, dkg, dvg, t, d, dv, j0):
    """Token t of the backward's reverse sweep for rows j >= j0 of G: G_t = G_{t+1} + dout_t q_t^T,
    dv_t[j] = (G_t k_t)[j], dk_t += (G_t^T v_t) over these rows. Rows 4 at a time."""
    dL = d * L
    vL = dv * L
    td = t * dL
    tv = t * vL
    j = j0
    while j + 4 <= dv:
        d0 = wload(dog, tv + j * L)
        d1 = wload(dog, tv + (j + 1) * L)
        d2 = wload(dog, tv + (j + 2) * L)
        d3 = wload(dog, tv + (j + 3) * L)
        v0 = wload(vg, tv + j * L)
        v1 = wload(vg, tv + (j + 1) * L)
        v2 = wload(vg, tv + (j + 2) * L)
        v3 = wload(vg, tv + (j + 3) * L)
        a0 = wzeros(qg)
        a1 = wzeros(qg)
        a2 = wzeros(qg)
        a3 = wzeros(qg)
        for i in range(d):
            qi = wload(qg, td + i * L)
            ki = wload(kg, td + i * L)
            o = j * dL + i * L
            g0 = vfma(d0, qi, wload(Gm, o))                 # G_t[j,i]
            vstore(Gm, o, g0)
            a0 = vfma(g0, ki, a0)                          # (G_t k_t)[j]
            g1 = vfma(d1, qi, wload(Gm, o + dL))
            vstore(Gm, o + dL, g1)
            a1 = vfma(g1, ki, a1)
            g2 = vfma(d2, qi, wload(Gm, o + 2 * dL))
            vstore(Gm, o + 2 * dL, g2)
            a2 = vfma(g2, ki, a2)
            g3 = vfma(d3, qi, wload(Gm, o + 3 * dL))
            vstore(Gm, o + 3 * dL, g3)
            a3 = vfma(g3, ki, a3)
            x = vfma(g0, v0, wload(dkg, td + i * L))       # (G_t^T v_t)[i]
            x = vfma(g1, v1, x)
            x = vfma(g2, v2, x)
            vstore(dkg, td + i * L, vfma(g3, v3, x))
        vstore(dvg, tv + j * L, a0)
        vstore(dvg, tv + (j + 1) * L, a1)
        vstore(dvg, tv + (j + 2) * L, a2)
        vstore(dvg, tv + (j + 3) * L, a3)
        j += 4
    while j < dv:
        doj = wload(dog, tv + j * L)
        vj = wload(vg, tv + j * L)
        acc = wzeros(qg)
        for i in range(d):
            o = j * dL + i * L
            gg = vfma(doj, wload(qg, td + i * L), wload(Gm, o))
            vstore(Gm, o, gg)
            acc = vfma(gg, wload(kg, td + i * L), acc)
            vstore(dkg, td + i * L, vfma(gg, vj, wload(dkg, td + i * L)))
        vstore(dvg, tv + j * L, acc)
        j += 1


@njit(cache=True, nogil=True)
def _g_step2(Gm, qg, kg, vg, dog, dkg, dvg, t, d, dv):
    """Tokens t and t-1 of the reverse sweep in one pass over G, 4 rows at a time: each entry loaded once,
    updated and used for token t, updated and used for token t-1, stored once; the rows left over then go
    through ``_g_rows`` for t, then for t-1. Every sum (dv per row, dk over the rows) keeps the order of one
    token at a time."""
    dL = d * L
    vL = dv * L
    td = t * dL
    tv = t * vL
    pd = td - dL
    pv = tv - vL
    j = 0
    while j + 4 <= dv:
        d0 = wload(dog, tv + j * L)
        d1 = wload(dog, tv + (j + 1) * L)
        d2 = wload(dog, tv + (j + 2) * L)
        d3 = wload(dog, tv + (j + 3) * L)
        v0 = wload(vg, tv + j * L)
        v1 = wload(vg, tv + (j + 1) * L)
        v2 = wload(vg, tv + (j + 2) * L)
        v3 = wload(vg, tv + (j + 3) * L)
        e0 = wload(dog, pv + j * L)
        e1 = wload(dog, pv + (j + 1) * L)
        e2 = wload(dog, pv + (j + 2) * L)
        e3 = wload(dog, pv + (j + 3) * L)
        w0 = wload(vg, pv + j * L)
        w1 = wload(vg, pv + (j + 1) * L)
        w2 = wload(vg, pv + (j + 2) * L)
        w3 = wload(vg, pv + (j + 3) * L)
        a0 = wzeros(qg)
        a1 = wzeros(qg)
        a2 = wzeros(qg)
        a3 = wzeros(qg)
        b0 = wzeros(qg)
        b1 = wzeros(qg)
        b2 = wzeros(qg)
        b3 = wzeros(qg)
        for i in range(d):
            qi = wload(qg, td + i * L)
            ki = wload(kg, td + i * L)
            pi = wload(qg, pd + i * L)
            hi = wload(kg, pd + i * L)
            o = j * dL + i * L
            g0 = vfma(d0, qi, wload(Gm, o))                 # G_t
            g1 = vfma(d1, qi, wload(Gm, o + dL))
            g2 = vfma(d2, qi, wload(Gm, o + 2 * dL))
            g3 = vfma(d3, qi, wload(Gm, o + 3 * dL))
            a0 = vfma(g0, ki, a0)
            a1 = vfma(g1, ki, a1)
            a2 = vfma(g2, ki, a2)
            a3 = vfma(g3, ki, a3)
            x = vfma(g0, v0, wload(dkg, td + i * L))
            x = vfma(g1, v1, x)
            x = vfma(g2, v2, x)
            vstore(dkg, td + i * L, vfma(g3, v3, x))
            g0 = vfma(e0, pi, g0)                          # G_{t-1}
            g1 = vfma(e1, pi, g1)
            g2 = vfma(e2, pi, g2)
            g3 = vfma(e3, pi, g3)
            vstore(Gm, o, g0)
            vstore(Gm, o + dL, g1)
            vstore(Gm, o + 2 * dL, g2)
            vstore(Gm, o + 3 * dL, g3)
            b0 = vfma(g0, hi, b0)
            b1 = vfma(g1, hi, b1)
            b2 = vfma(g2, hi, b2)
            b3 = vfma(g3, hi, b3)
            y = vfma(g0, w0, wload(dkg, pd + i * L))
            y = vfma(g1, w1, y)
            y = vfma(g2, w2, y)
            vstore(dkg, pd + i * L, vfma(g3, w3, y))
        vstore(dvg, tv + j * L, a0)
        vstore(dvg, tv + (j + 1) * L, a1)
        vstore(dvg, tv + (j + 2) * L, a2)
        vstore(dvg, tv + (j + 3) * L, a3)
        vstore(dvg, pv + j * L, b0)
        vstore(dvg, pv + (j + 1) * L, b1)
        vstore(dvg, pv + (j + 2) * L, b2)
        vstore(dvg, pv + (j + 3) * L, b3)
        j += 4
    if j < dv:
        _g_rows(Gm, qg, kg, vg, dog, dkg, dvg, t, d, dv, j)
        _g_rows(Gm, qg, kg, vg, dog, dkg, dvg, t - 1, d, dv, j)


@njit(cache=True, nogil=True)
def _linear_backward_group(q, qs, k, ks, v, vs, dout, dos, dq, dqs, dk, dks, dvv, dvs, N, H, T, d, dv, g):
    """One group: forward sweep dq_t = S_t^T dout_t; reverse sweep with G_t = G_{t+1} + dout_t q_t^T,
    dv_t = G_t k_t, dk_t = G_t^T v_t.  [L2]  (Rows taken 4 at a time, as in the forward.) Unlike the forward,
    whole-sequence buffers: q, k, v gathered token by token before the sweeps, dq, dk, dv scattered token by
    token after them. (Token-by-token gathers and scatters inside the sweeps, as in the forward, measured
    slower here: k, v, dout are needed by both sweeps, and the reverse sweep walks memory backwards.)"""
    n0 = g * L
    nl = min(L, N - n0)
    qg = aligned_empty(T * d * L, q)
    kg = aligned_empty(T * d * L, q)
    vg = aligned_empty(T * dv * L, q)
    dog = aligned_empty(T * dv * L, q)
    _gather_qkv(q, qs, k, ks, v, vs, n0, nl, H, T, d, dv, qg, kg, vg)
    _gather4(dout, dos, n0, nl, H, T, dv, dog)
    ok = _lanes_finite(dog, T * dv)
    dL = d * L
    vL = dv * L
    # ---- forward sweep: S_t stored transposed (S[i, j] at (i*dv + j)*L); dq_t[i] = sum_j S_t[j,i] dout_t[j],
    # two tokens per pass over S (``_outer_step2``), as in the forward
    buf = aligned_empty(T * dL, q)
    S = aligned_zeros(d * vL, q)
    t = 0
    while t + 2 <= T:                                   # S[i, j] += k[i] v[j], dq[i] = sum_j S[i, j] dout[j]
        _outer_step2(S, kg, t * dL, vg, t * vL, dog, t * vL, buf, t * dL, d, dv)
        t += 2
    if t < T:
        _outer_step1(S, kg, t * dL, vg, t * vL, dog, t * vL, buf, t * dL, d, dv)
    # ---- reverse sweep: G_t (dv x d, G[j, i] at (j*d + i)*L), two tokens per pass over G (``_g_step2``)
    dkg = aligned_zeros(T * dL, q)
    dvg = aligned_empty(T * vL, q)
    Gm = aligned_zeros(dv * dL, q)
    t = T - 1
    while t >= 1:
        _g_step2(Gm, qg, kg, vg, dog, dkg, dvg, t, d, dv)
        t -= 2
    if t == 0:
        _g_rows(Gm, qg, kg, vg, dog, dkg, dvg, 0, d, dv, 0)
    _scatter_qkv(buf, dq, dqs, dkg, dk, dks, dvg, dvv, dvs, n0, nl, H, T, d, dv)
    return ok


@njit(cache=True, nogil=True)
def _linear_backward_range(g0, g1, q, qs, k, ks, v, vs, dout, dos, dq, dqs, dk, dks, dvv, dvs, N, H, T, d, dv):
    """Runs groups g0..g1-1; returns whether all their dout values are finite."""
    ok = True
    for g in range(g0, g1):
        ok &= _linear_backward_group(q, qs, k, ks, v, vs, dout, dos, dq, dqs, dk, dks, dvv, dvs, N, H, T, d, dv, g)
    return ok


def linear_forward(q, k, v):
    """(out (B,H,T,dv), finite) for numpy q, k (B,H,T,d), v (B,H,T,dv) of one dtype, any strides (validated by
    the caller, NaN/inf aside); ``finite``: no NaN/inf in q, k, v. ``out`` is laid out in memory as (B, T, H, dv)
    (see ``buffers.merged_empty``).  [L2]"""
    B, H, T, d = q.shape
    dv = v.shape[3]
    out = merged_empty(B, H, T, dv, v.dtype)
    (qm, qs), (km, ks), (vm, vs), (om, os) = (_strided(x) for x in (q, k, v, out))
    ok = run_groups(_linear_forward_range, _groups(B * H), q=qm, qs=qs, k=km, ks=ks, v=vm, vs=vs, out=om, os=os,
                    N=B * H, H=H, T=T, d=d, dv=dv)
    return out, all(ok)


def linear_backward(q, k, v, dout):
    """((dq, dk, dv), finite) for numpy inputs of one dtype, any strides (validated by the caller, NaN/inf in dout
    aside); ``finite``: no NaN/inf in dout. The gradients are laid out in memory as one (B, T, 3, H, d) buffer when
    d == dv (see ``buffers.qkv_empty``), else as (B, T, H, width) each.  [L2]"""
    B, H, T, d = q.shape
    dv = v.shape[3]
    dq, dk, dvv = grad_buffers(B, H, T, d, dv, q.dtype)
    (qm, qs), (km, ks), (vm, vs), (gm, gs) = (_strided(x) for x in (q, k, v, dout))
    (dqm, dqs), (dkm, dks), (dvm, dvs) = (_strided(x) for x in (dq, dk, dvv))
    ok = run_groups(_linear_backward_range, _groups(B * H), q=qm, qs=qs, k=km, ks=ks, v=vm, vs=vs, dout=gm, dos=gs,
                    dq=dqm, dqs=dqs, dk=dkm, dks=dks, dvv=dvm, dvs=dvs, N=B * H, H=H, T=T, d=d, dv=dv)
    return (dq, dk, dvv), all(ok)
