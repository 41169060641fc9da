"""Numba CPU kernels for causal linear attention [L2] (and the small element-wise ops the model uses).

Plain version first: ``mesa_fast/numba_kernels/plain.py`` computes the same [L2] and [L3] kernels (``linear_forward``,
``linear_backward``, ``softmax_forward``, ``softmax_backward``: same arguments, same results up to rounding) the
plain way, one sequence per iteration of a ``prange`` with ordinary loops, and tests/test_plain_kernels.py holds
it to the reference ops: read it before this file. This version is faster because one sequence's rows are short
and odd for vector registers (d = dv = 20, T = 50 in the paper's models): the plain loops vectorise only along a
row of 20 (two 8-wide vectors and a scalar remainder) and their dot products not at all (IEEE sums keep their
order), while here 16 independent sequences fill the 16 lanes of every register, so each operation is full width
and each lane's sums keep the scalar order. ``benchmarks/bench_plain_vs_simd.py`` measures the two against each
other (docs/performance.md); this version runs by default, MESA_FAST_KERNELS=plain runs the plain one.

Re-expresses ``mesa_ref.ops.attention_linear`` (and ``activations.clip_*``). The plain reference of the [L2]
kernels is ``linear_attention_recurrent_forward`` / ``linear_attention_recurrent_backward`` there: the same
running state S_t, forward sweep for dq and reverse sweep with G_t for dk, dv, tested equal to the T x T op
``linear_attention_forward`` / ``linear_attention_backward`` that the ops namespace exports. What differs:

* Recurrent form. The T x T reference builds the masked score matrix A = mask(q k^T) (T x T per
  sequence) and multiplies it by v. Here each sequence keeps the running state
  S_t = sum_{t'<=t} v_{t'} k_{t'}^T (dv x d), so out_t = S_t q_t [L2] with the same sums taken
  in another order. The backward uses the same state and its reverse-time twin
  G_t = sum_{t'>=t} dout_{t'} q_{t'}^T:
      dq_t = S_t^T dout_t,   dk_t = G_t^T v_t,   dv_t = G_t k_t.
  So nothing T x T is ever formed, and the cache is just (q, k, v). Each sweep takes two tokens per pass over
  its state (``_outer_step2``, ``_g_step2``): every entry of S or G is loaded and stored once
  per pair, with the same operations in the same order as one token at a time.
* Lanes. L = 16 independent (batch, head) sequences run together, one per SIMD lane
  (``_simd.LaneVec`` with ``_simd.WIDE`` lanes: one AVX-512 register of float32, two of float64; the
  mesa kernels use 8). Per group of 16 the inputs are gathered into lane-laid-out buffers,
  64-byte aligned: element (t, i) of a (T, width) per-sequence matrix for lane l sits at
  ``(t*width + i)*L + l``; S and G are (dv*d*L,) buffers. Each lane runs the scalar recursion, so
  a lane's result does not depend on its neighbours. Groups run on ``numba.get_num_threads()``
  threads (``_pool.run_groups``).
* Any strides. Every (B, H, T, w) array reaches the kernels as its memory (a 1-D view from its first
  element) and its four strides (``_strided``), so the model's head splits (views of the fused QKV
  buffer, ``layers.split_qkv``) are read in place: no copy before the kernel, one compiled signature
  for every layout. A group's gather moves 8 sequences x 8 features at a time through registers
  (``_simd.vtranspose_from_rows``, two per block of 8 features for 16 lanes; the last block of a width
  that is not a multiple of 8 overlaps the one before it), token by token for q, k and v together
  (``_gather_qkv``), and the scatters of the outputs are its inverse.
* NaN/inf. Every kernel checks its inputs as it gathers them: the forwards q, k, v, the backwards
  dout (on the lane buffers; every sequence lands in exactly one lane), and returns whether all were
  finite; ``layers.py`` turns a False into the reference's ValueError.

About half of each kernel's time is the gathers and scatters, half the recursions; the 16 lanes, FMA and
token-by-token gathers below were each kept because they measured faster (docs/performance.md).

Arithmetic: in the input dtype (float32 in -> float32 arithmetic), IEEE operations without fast-math,
with one exception: every multiply-add of the recursions is fused (``_simd.vfma``, rounded once), which
made the recursion faster. Float32 results differ from the
reference's float32 results by rounding only (sums in another order, fused multiply-adds); both are
~1e-6 relative from the float64 result, and the tests hold them to the same tolerances as before.

Shapes (N = B*H sequences, G = ceil(N / L) groups):
    q, k: (B, H, T, d)   v, dout: (B, H, T, dv)                        inputs, any strides
    out: (B, H, T, dv)                                                  laid out in memory as (B, T, H, dv),
         so that the model's merge of the heads (the next step) needs no copy
    dq, dk: (B, H, T, d)   dv: (B, H, T, dv)                            laid out as one (B, T, 3, H, d)
         buffer when d == dv (the fused QKV layout: ``layers.merge_qkv`` is then a reshape), else as
         (B, T, H, width) each
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ._pool import run_groups
from ._simd import (WIDE, aligned_empty, aligned_zeros, vadd, vdiv, vexp, vfma, vmax, vmul, vstore, vsub,
                    vtranspose_from_rows, vtranspose_to_rows, wload, wsplat, wzeros)

L = WIDE
H8 = WIDE // 8        # 8 x 8 transposes per block of 8 features in a gather or scatter


# --------------------------------------------------------------------------------------------
# gather / scatter between (B, H, T, w) arrays and a lane-laid-out (T, w, L) buffer
# --------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _lane_view(xs, n0, nl, H, w):
    """How a group of nl sequences n0.. sits in a (B, H, T, w) array of element strides xs: (base, full) with
    base[l] the offset of x[b, h, 0, 0] for each live lane, (b, h) = divmod(n0 + l, H), 0 for padding lanes, and
    full whether a token moves by 8 x 8 register transposes (all L lanes live, unit feature stride, w >= 8)."""
    base = np.zeros(L, np.int64)
    for l in range(nl):
        n = n0 + l
        b = n // H
        base[l] = b * xs[0] + (n - b * H) * xs[1]
    return base, nl == L and xs[3] == 1 and w >= 8


@njit(cache=True, nogil=True)
def _gather_token(x, xs, base, full, nl, t, w, buf, slot):
    """buf[(slot*w + i)*L + l] = x[b, h, t, i] for one token t, with (base, full) from ``_lane_view``: 8 x 8
    register transposes when full (the last block of features may overlap the one before it), else element by
    element, padding lanes = 0."""
    if full:
        i0 = 0
        while i0 < w:
            i0 = min(i0, w - 8)
            for h in range(H8):                  # lanes 8h .. 8h+7
                vtranspose_from_rows(x, base[8 * h:], t * xs[2] + i0, buf, (slot * w + i0) * L + 8 * h, L)
            i0 += 8
        return
    for i in range(w):
        off = t * xs[2] + i * xs[3]
        e = (slot * w + i) * L
        for l in range(L):
            buf[e + l] = x[base[l] + off] if l < nl else 0.0


@njit(cache=True, nogil=True)
def _gather4(x, xs, n0, nl, H, T, w, buf):
    """buf[(t*w + i)*L + l] = x[b, h, t, i] with (b, h) = divmod(n0 + l, H), for a (B, H, T, w) array given as
    its memory ``x`` (1-D, from its first element) and element strides ``xs``; padding lanes = 0."""
    base, full = _lane_view(xs, n0, nl, H, w)
    for t in range(T):
        _gather_token(x, xs, base, full, nl, t, w, buf, t)


@njit(cache=True, nogil=True)
def _gather_qkv(q, qs, k, ks, v, vs, n0, nl, H, T, d, dv, qg, kg, vg):
    """``_gather4`` of q, k and v, token by token. In the model the three are views of one fused QKV buffer, so
    this reads each token's row once, front to back, which measured faster than three passes, one per array."""
    bq, fq = _lane_view(qs, n0, nl, H, d)
    bk, fk = _lane_view(ks, n0, nl, H, d)
    bv, fv = _lane_view(vs, n0, nl, H, dv)
    for t in range(T):
        _gather_token(q, qs, bq, fq, nl, t, d, qg, t)
        _gather_token(k, ks, bk, fk, nl, t, d, kg, t)
        _gather_token(v, vs, bv, fv, nl, t, dv, vg, t)


@njit(cache=True, nogil=True)
def _scatter_token(buf, slot, x, xs, base, full, nl, t, w):
    """The inverse of ``_gather_token``: x[b, h, t, i] = buf[(slot*w + i)*L + l] for the nl live lanes."""
    if full:
        i0 = 0
        while i0 < w:
            i0 = min(i0, w - 8)
            for h in range(H8):
                vtranspose_to_rows(buf, (slot * w + i0) * L + 8 * h, L, x, base[8 * h:], t * xs[2] + i0)
            i0 += 8
        return
    for i in range(w):
        off = t * xs[2] + i * xs[3]
        e = (slot * w + i) * L
        for l in range(nl):
            x[base[l] + off] = buf[e + l]


@njit(cache=True, nogil=True)
def _scatter4(buf, x, xs, n0, nl, H, T, w):
    """x[b, h, t, i] = buf[(t*w + i)*L + l] for the nl live lanes, (b, h) = divmod(n0 + l, H); x given as in
    ``_gather4``."""
    base, full = _lane_view(xs, n0, nl, H, w)
    for t in range(T):
        _scatter_token(buf, t, x, xs, base, full, nl, t, w)


@njit(cache=True, nogil=True)
def _scatter_qkv(gq, dq, dqs, gk, dk, dks, gv, dvv, dvs, n0, nl, H, T, d, dv):
    """``_scatter4`` of the three gradients, token by token (in the fused QKV layout of ``qkv_empty`` each
    token's row is then written once, front to back; see ``_gather_qkv``)."""
    bq, fq = _lane_view(dqs, n0, nl, H, d)
    bk, fk = _lane_view(dks, n0, nl, H, d)
    bv, fv = _lane_view(dvs, n0, nl, H, dv)
    for t in range(T):
        _scatter_token(gq, t, dq, dqs, bq, fq, nl, t, d)
        _scatter_token(gk, t, dk, dks, bk, fk, nl, t, d)
        _scatter_token(gv, t, dvv, dvs, bv, fv, nl, t, dv)


@njit(cache=True, nogil=True)
def _finite_acc(buf, n, acc):
    """acc + the sum of x - x over the first n lane vectors of buf (0 where all are finite, NaN where one is
    not), in two independent sums so that the adds do not all wait on each other."""
    a1 = wzeros(buf)
    e = 0
    while e + 2 <= n:
        x0 = wload(buf, e * L)
        x1 = wload(buf, (e + 1) * L)
        acc = vadd(acc, vsub(x0, x0))
        a1 = vadd(a1, vsub(x1, x1))
        e += 2
    if e < n:
        x0 = wload(buf, e * L)
        acc = vadd(acc, vsub(x0, x0))
    return vadd(acc, a1)


@njit(cache=True, nogil=True)
def _all_zero(acc, like):
    """True when every lane of acc is 0 (a ``_finite_acc`` sum: no NaN or inf seen); ``like``: an array of acc's
    dtype."""
    tmp = np.empty(L, like.dtype)
    vstore(tmp, 0, acc)
    for l in range(L):
        if tmp[l] != 0:
            return False
    return True


@njit(cache=True, nogil=True)
def _lanes_finite(buf, n):
    """True when the first n lane vectors of buf hold no NaN or inf. Padding lanes are zero."""
    return _all_zero(_finite_acc(buf, n, wzeros(buf)), buf)


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


def _strided(x):
    """(memory, strides) of a (B, H, T, w) array for the kernels: a writeable 1-D C-contiguous view of the memory
    the array spans, starting at its first element, and its strides in elements. No copy for any layout with
    non-negative strides (a split of the model's fused QKV buffer, a merged-layout output); a read-only array
    (a separate Numba type) or one with negative strides is copied first. One compiled signature serves every
    layout."""
    item = x.itemsize
    if not x.flags.writeable or any(st < 0 or st % item for st in x.strides):
        x = np.array(x, order="C")
    strides = tuple(st // item for st in x.strides)
    span = 1 + sum((n - 1) * st for n, st in zip(x.shape, strides))
    return np.lib.stride_tricks.as_strided(x, shape=(span,), strides=(item,)), strides


def _groups(N):
    return (N + L - 1) // L


def merged_empty(B, H, T, w, dtype):
    """An uninitialised (B, H, T, w) array whose memory is laid out as (B, T, H, w): the model's
    ``merge_heads`` (transpose to (B, T, H, w) + ascontiguousarray) is then free."""
    return np.empty((B, T, H, w), dtype).transpose(0, 2, 1, 3)


def qkv_empty(B, H, T, d, dtype):
    """Three uninitialised (B, H, T, d) arrays laid out in one (B, T, 3, H, d) buffer: the layout of the model's
    fused QKV product, so that ``merge_qkv`` of them is free (see ``layers.merge_qkv``)."""
    buf = np.empty((B, T, 3, H, d), dtype).transpose(2, 0, 3, 1, 4)     # [3, B, H, T, d] view
    return buf[0], buf[1], buf[2]


def _grad_buffers(B, H, T, d, dv, dtype):
    """dq, dk (B,H,T,d), dv (B,H,T,dv) outputs: one fused QKV-layout buffer when d == dv, else merged layouts."""
    if d == dv:
        return qkv_empty(B, H, T, d, dtype)
    return merged_empty(B, H, T, d, dtype), merged_empty(B, H, T, d, dtype), merged_empty(B, H, T, dv, dtype)


def linear_forward(q, k, v):
    """(out (B,H,T,dv), finite) for numpy q, k (B,H,T,d), v (B,H,T,dv) of one dtype, any strides (validated by
    the caller, NaN/inf aside); ``finite``: no NaN/inf in q, k, v. ``out`` is laid out in memory as (B, T, H, dv)
    (see ``merged_empty``).  [L2]"""
    B, H, T, d = q.shape
    dv = v.shape[3]
    out = merged_empty(B, H, T, dv, v.dtype)
    ok = run_groups(_linear_forward_range, _groups(B * H), *_strided(q), *_strided(k), *_strided(v),
                    *_strided(out), B * H, H, T, d, dv)
    return out, all(ok)


def linear_backward(q, k, v, dout):
    """((dq, dk, dv), finite) for numpy inputs of one dtype, any strides (validated by the caller, NaN/inf in dout
    aside); ``finite``: no NaN/inf in dout. The gradients are laid out in memory as one (B, T, 3, H, d) buffer when
    d == dv (see ``qkv_empty``), else as (B, T, H, width) each.  [L2]"""
    B, H, T, d = q.shape
    dv = v.shape[3]
    dq, dk, dvv = _grad_buffers(B, H, T, d, dv, q.dtype)
    ok = run_groups(_linear_backward_range, _groups(B * H), *_strided(q), *_strided(k), *_strided(v),
                    *_strided(dout), *_strided(dq), *_strided(dk), *_strided(dvv), B * H, H, T, d, dv)
    return (dq, dk, dvv), all(ok)


# --------------------------------------------------------------------------------------------
# softmax attention [L3]: 16 sequences per group in SIMD lanes, like linear attention, the row max, exp
# and normalisation included (``_simd.vexp``); the (T, T) maps stay in the lane layout between the
# forward and the backward. Rows t and t+1 go together through the products: the two rows share every load of
# the other operand (k_s, v_s), half the loads per multiply-add of one row at a time, and each of their sums
# runs over the same terms in the same order as one row alone would.
# --------------------------------------------------------------------------------------------

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
    (``_simd.vmax``, ``vexp``), as the products do."""
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
    ok = run_groups(_softmax_forward_range, _groups(B * H), *_strided(q), *_strided(k), *_strided(v),
                    q.dtype.type(scale), P, *_strided(out), B * H, H, T, d, dv)
    return out, P, all(ok)


def softmax_backward(q, k, v, P, scale, dout):
    """((dq, dk, dv), finite) for numpy inputs of one dtype, any strides, laid out as in ``linear_backward``; P: the
    lanes ``softmax_forward`` returned; ``finite``: no NaN/inf in dout.  [L3]"""
    B, H, T, d = q.shape
    dv = v.shape[3]
    dq, dk, dvv = _grad_buffers(B, H, T, d, dv, q.dtype)
    ok = run_groups(_softmax_backward_range, _groups(B * H), *_strided(q), *_strided(k), *_strided(v),
                    P, q.dtype.type(scale), *_strided(dout),
                    *_strided(dq), *_strided(dk), *_strided(dvv), B * H, H, T, d, dv)
    return (dq, dk, dvv), all(ok)


def lanes_to_map(P, B, H, T):
    """The (B, H, T, T) attention map (zero above the diagonal, as the reference's) from ``softmax_forward``'s
    lanes."""
    N = B * H
    m = P.reshape(-1, T, T, L).transpose(0, 3, 1, 2).reshape(-1, T, T)[:N]
    return np.tril(m).reshape(B, H, T, T)


def _aligned_empty_np(n, dtype):
    """An uninitialised 1-D NumPy array of n elements whose first element is 64-byte aligned (each group's block
    of the softmax lanes then starts on a cache line, as ``_simd.aligned_empty`` buffers do)."""
    item = np.dtype(dtype).itemsize
    raw = np.empty(n + 64 // item, dtype)
    o = ((-raw.ctypes.data) % 64) // item
    return raw[o:o + n]


# --------------------------------------------------------------------------------------------
# [L6] clipping: one pass for y and the pass-through mask (the reference takes four)
# --------------------------------------------------------------------------------------------

def flat(x):
    """x as a C-contiguous, writeable 1-D array (copied only when needed)."""
    x = np.ascontiguousarray(x)
    if not x.flags.writeable:
        x = x.copy()
    return x.reshape(-1)


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
