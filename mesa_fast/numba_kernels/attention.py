"""Numba CPU kernels for causal linear attention [L2] (and the small element-wise ops the model uses).

Re-expresses ``mesa_ref.ops.attention_linear`` (and ``activations.clip_*``); what differs:

* Recurrent form. The reference builds the masked score matrix A = mask(q k^T) (T x T per
  sequence) and multiplies it by v. Here each sequence keeps the running state
  S_t = sum_{t'<=t} v_{t'} k_{t'}^T (dv x d), so out_t = S_t q_t [L2] with the same sums taken
  in another order. The backward uses the same state and its reverse-time twin
  G_t = sum_{t'>=t} dout_{t'} q_{t'}^T:
      dq_t = S_t^T dout_t,   dk_t = G_t^T v_t,   dv_t = G_t k_t.
  So nothing T x T is ever formed, and the cache is just (q, k, v).
* Lanes. 8 independent (batch, head) sequences run together, one per SIMD lane (``_simd.LaneVec``,
  <8 x float> or <8 x double> registers, the same device the mesa kernels use). Per group of 8 the
  inputs are gathered into lane-laid-out buffers: element (t, i) of a (T, width) per-sequence
  matrix for lane l sits at ``(t*width + i)*LANES + l``; S and G are (dv*d*LANES,) buffers that stay
  in L1. Each lane runs the scalar recursion, so a lane's result does not depend on its neighbours.
  Groups run on ``numba.get_num_threads()`` threads (``_pool.run_groups``).
* Any strides. Every (B, H, T, w) array reaches the kernels as its memory (a 1-D view from its first
  element) and its four strides (``_strided``), so the model's head splits (views of the fused QKV
  buffer, ``layers.split_qkv``) are read in place: no copy before the kernel, one compiled signature
  for every layout. A group's gather moves 8 sequences x 8 features at a time through registers
  (``_simd.vtranspose_from_rows``: 8 row loads, 24 shuffles, 8 stores; the last block of a width that
  is not a multiple of 8 overlaps the one before it), and the scatter of the outputs is its inverse.
  Measured (2026-11-29, 2-core Xeon, /tmp script): one pass over a (256, 4, 50, 20) float32 view
  0.27-0.32 ms this way against 1.0 ms element by element; the forward kernel 1.4-2.1 ms against
  2.8 ms (2 threads).
* NaN/inf. Every kernel checks its inputs as it gathers them: the forwards q, k, v, the backwards
  dout (one vector add per value, on the lane buffers; every sequence lands in exactly one lane),
  and returns whether all were finite; ``layers.py`` turns a False into the reference's ValueError.

Arithmetic: in the input dtype (float32 in -> float32 arithmetic), IEEE operations without fast-math
or FMA contraction. Float32 results differ from the reference's float32 results by rounding only
(the sums are taken in another order); both are ~1e-6 relative from the float64 result. (FMA in these
kernels measured 5-10% faster at best on this machine, within the run-to-run noise: not adopted.)

Shapes (N = B*H sequences, G = ceil(N / LANES) groups):
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

from ._pool import contiguous_writeable, run_groups
from ._simd import (LANES, vadd, vload, vmul, vsplat, vstore, vsub, vtranspose_from_rows, vtranspose_to_rows,
                    vzeros)

L = LANES


# --------------------------------------------------------------------------------------------
# gather / scatter between (B, H, T, w) arrays and a lane-laid-out (T, w, LANES) buffer
# --------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _gather_seq(x, n0, nl, buf):
    """buf[e*L + l] = x[n0 + l, e] (x: (N, E), one row per sequence); padding lanes = 0."""
    E = x.shape[1]
    if nl == L:
        for e in range(E):
            for l in range(L):
                buf[e * L + l] = x[n0 + l, e]
    else:
        for e in range(E):
            for l in range(L):
                buf[e * L + l] = x[n0 + l, e] if l < nl else 0.0


@njit(cache=True, nogil=True)
def _lane_bases(xs, n0, nl, H):
    """Offset of x[b, h, 0, 0] for each live lane, (b, h) = divmod(n0 + l, H); 0 for padding lanes."""
    base = np.zeros(L, np.int64)
    for l in range(nl):
        n = n0 + l
        b = n // H
        base[l] = b * xs[0] + (n - b * H) * xs[1]
    return base


@njit(cache=True, nogil=True)
def _gather4(x, xs, n0, nl, H, T, w, buf):
    """buf[(t*w + i)*L + l] = x[b, h, t, i] with (b, h) = divmod(n0 + l, H), for a (B, H, T, w) array given as
    its memory ``x`` (1-D, from its first element) and element strides ``xs``; padding lanes = 0."""
    base = _lane_bases(xs, n0, nl, H)
    if nl == L and xs[3] == 1 and w >= L:          # 8 x 8 register transposes (the last block may overlap)
        for t in range(T):
            i0 = 0
            while i0 < w:
                i0 = min(i0, w - L)
                vtranspose_from_rows(x, base, t * xs[2] + i0, buf, (t * w + i0) * L, L)
                i0 += L
        return
    for t in range(T):
        for i in range(w):
            off = t * xs[2] + i * xs[3]
            e = (t * w + i) * L
            for l in range(L):
                buf[e + l] = x[base[l] + off] if l < nl else 0.0


@njit(cache=True, nogil=True)
def _scatter4(buf, x, xs, n0, nl, H, T, w):
    """x[b, h, t, i] = buf[(t*w + i)*L + l] for the nl live lanes, (b, h) = divmod(n0 + l, H); x given as in
    ``_gather4``."""
    base = _lane_bases(xs, n0, nl, H)
    if nl == L and xs[3] == 1 and w >= L:
        for t in range(T):
            i0 = 0
            while i0 < w:
                i0 = min(i0, w - L)
                vtranspose_to_rows(buf, (t * w + i0) * L, L, x, base, t * xs[2] + i0)
                i0 += L
        return
    for t in range(T):
        for i in range(w):
            off = t * xs[2] + i * xs[3]
            e = (t * w + i) * L
            for l in range(nl):
                x[base[l] + off] = buf[e + l]


@njit(cache=True, nogil=True)
def _lanes_finite(buf, n):
    """True when the first n lane vectors of buf hold no NaN or inf (x - x is 0 for finite x, NaN otherwise).
    Padding lanes are zero. One vector add per vector, a small fraction of the kernels' arithmetic."""
    acc = vzeros(buf)
    for e in range(n):
        x = vload(buf, e * L)
        acc = vadd(acc, vsub(x, x))
    tmp = np.empty(L, buf.dtype)
    vstore(tmp, 0, acc)
    for l in range(L):
        if tmp[l] != 0:
            return False
    return True


# --------------------------------------------------------------------------------------------
# linear attention [L2]
# --------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _linear_forward_group(q, qs, k, ks, v, vs, out, os, N, H, T, d, dv, g):
    """One group of LANES sequences: S_t = S_{t-1} + v_t k_t^T, out_t = S_t q_t.  [L2]

    Rows j of S are taken 4 at a time so that 4 independent accumulators hide the add latency."""
    n0 = g * L
    nl = min(L, N - n0)
    qg = np.empty(T * d * L, q.dtype)
    kg = np.empty(T * d * L, q.dtype)
    vg = np.empty(T * dv * L, q.dtype)
    og = np.empty(T * dv * L, q.dtype)
    S = np.zeros(dv * d * L, q.dtype)                  # S[j, i] at (j*d + i)*L
    _gather4(q, qs, n0, nl, H, T, d, qg)
    _gather4(k, ks, n0, nl, H, T, d, kg)
    _gather4(v, vs, n0, nl, H, T, dv, vg)
    ok = _lanes_finite(qg, T * d) & _lanes_finite(kg, T * d) & _lanes_finite(vg, T * dv)
    dL = d * L
    for t in range(T):
        tq = t * dL
        tv = t * dv * L
        j = 0
        while j + 4 <= dv:
            v0 = vload(vg, tv + j * L)
            v1 = vload(vg, tv + (j + 1) * L)
            v2 = vload(vg, tv + (j + 2) * L)
            v3 = vload(vg, tv + (j + 3) * L)
            a0 = vzeros(qg)
            a1 = vzeros(qg)
            a2 = vzeros(qg)
            a3 = vzeros(qg)
            for i in range(d):
                ki = vload(kg, tq + i * L)
                qi = vload(qg, tq + i * L)
                o = j * dL + i * L
                s0 = vadd(vload(S, o), vmul(v0, ki))                  # S_t[j,i]
                vstore(S, o, s0)
                a0 = vadd(a0, vmul(s0, qi))                          # (S_t q_t)[j]
                s1 = vadd(vload(S, o + dL), vmul(v1, ki))
                vstore(S, o + dL, s1)
                a1 = vadd(a1, vmul(s1, qi))
                s2 = vadd(vload(S, o + 2 * dL), vmul(v2, ki))
                vstore(S, o + 2 * dL, s2)
                a2 = vadd(a2, vmul(s2, qi))
                s3 = vadd(vload(S, o + 3 * dL), vmul(v3, ki))
                vstore(S, o + 3 * dL, s3)
                a3 = vadd(a3, vmul(s3, qi))
            vstore(og, tv + j * L, a0)
            vstore(og, tv + (j + 1) * L, a1)
            vstore(og, tv + (j + 2) * L, a2)
            vstore(og, tv + (j + 3) * L, a3)
            j += 4
        while j < dv:
            vj = vload(vg, tv + j * L)
            acc = vzeros(qg)
            for i in range(d):
                o = j * dL + i * L
                s = vadd(vload(S, o), vmul(vj, vload(kg, tq + i * L)))
                vstore(S, o, s)
                acc = vadd(acc, vmul(s, vload(qg, tq + i * L)))
            vstore(og, tv + j * L, acc)
            j += 1
    _scatter4(og, out, os, n0, nl, H, T, dv)
    return ok


@njit(cache=True, nogil=True)
def _linear_forward_range(g0, g1, q, qs, k, ks, v, vs, out, os, N, H, T, d, dv):
    """Runs groups g0..g1-1; returns whether all their q, k, v values are finite."""
    ok = True
    for g in range(g0, g1):
        ok &= _linear_forward_group(q, qs, k, ks, v, vs, out, os, N, H, T, d, dv, g)
    return ok


@njit(cache=True, nogil=True)
def _linear_backward_group(q, qs, k, ks, v, vs, dout, dos, dq, dqs, dk, dks, dvv, dvs, N, H, T, d, dv, g):
    """One group: forward sweep dq_t = S_t^T dout_t; reverse sweep with G_t = G_{t+1} + dout_t q_t^T,
    dv_t = G_t k_t, dk_t = G_t^T v_t.  [L2]  (Rows taken 4 at a time, as in the forward.)"""
    n0 = g * L
    nl = min(L, N - n0)
    qg = np.empty(T * d * L, q.dtype)
    kg = np.empty(T * d * L, q.dtype)
    vg = np.empty(T * dv * L, q.dtype)
    dog = np.empty(T * dv * L, q.dtype)
    _gather4(q, qs, n0, nl, H, T, d, qg)
    _gather4(k, ks, n0, nl, H, T, d, kg)
    _gather4(v, vs, n0, nl, H, T, dv, vg)
    _gather4(dout, dos, n0, nl, H, T, dv, dog)
    ok = _lanes_finite(dog, T * dv)
    dL = d * L
    vL = dv * L
    # ---- forward sweep: S_t stored transposed (S[i, j] at (i*dv + j)*L); dq_t[i] = sum_j S_t[j,i] dout_t[j]
    buf = np.empty(T * dL, q.dtype)
    S = np.zeros(d * vL, q.dtype)
    for t in range(T):
        tv = t * vL
        td = t * dL
        i = 0
        while i + 4 <= d:
            k0 = vload(kg, td + i * L)
            k1 = vload(kg, td + (i + 1) * L)
            k2 = vload(kg, td + (i + 2) * L)
            k3 = vload(kg, td + (i + 3) * L)
            a0 = vzeros(qg)
            a1 = vzeros(qg)
            a2 = vzeros(qg)
            a3 = vzeros(qg)
            for j in range(dv):
                vj = vload(vg, tv + j * L)
                dj = vload(dog, tv + j * L)
                o = i * vL + j * L
                s0 = vadd(vload(S, o), vmul(vj, k0))
                vstore(S, o, s0)
                a0 = vadd(a0, vmul(s0, dj))
                s1 = vadd(vload(S, o + vL), vmul(vj, k1))
                vstore(S, o + vL, s1)
                a1 = vadd(a1, vmul(s1, dj))
                s2 = vadd(vload(S, o + 2 * vL), vmul(vj, k2))
                vstore(S, o + 2 * vL, s2)
                a2 = vadd(a2, vmul(s2, dj))
                s3 = vadd(vload(S, o + 3 * vL), vmul(vj, k3))
                vstore(S, o + 3 * vL, s3)
                a3 = vadd(a3, vmul(s3, dj))
            vstore(buf, td + i * L, a0)
            vstore(buf, td + (i + 1) * L, a1)
            vstore(buf, td + (i + 2) * L, a2)
            vstore(buf, td + (i + 3) * L, a3)
            i += 4
        while i < d:
            ki = vload(kg, td + i * L)
            acc = vzeros(qg)
            for j in range(dv):
                o = i * vL + j * L
                s = vadd(vload(S, o), vmul(vload(vg, tv + j * L), ki))
                vstore(S, o, s)
                acc = vadd(acc, vmul(s, vload(dog, tv + j * L)))
            vstore(buf, td + i * L, acc)
            i += 1
    _scatter4(buf, dq, dqs, n0, nl, H, T, d)
    # ---- reverse sweep: G_t (dv x d, G[j, i] at (j*d + i)*L)
    dkg = np.zeros(T * dL, q.dtype)
    dvg = np.empty(T * vL, q.dtype)
    Gm = np.zeros(dv * dL, q.dtype)
    for t in range(T - 1, -1, -1):
        td = t * dL
        tv = t * vL
        j = 0
        while j + 4 <= dv:
            d0 = vload(dog, tv + j * L)
            d1 = vload(dog, tv + (j + 1) * L)
            d2 = vload(dog, tv + (j + 2) * L)
            d3 = vload(dog, tv + (j + 3) * L)
            v0 = vload(vg, tv + j * L)
            v1 = vload(vg, tv + (j + 1) * L)
            v2 = vload(vg, tv + (j + 2) * L)
            v3 = vload(vg, tv + (j + 3) * L)
            a0 = vzeros(qg)
            a1 = vzeros(qg)
            a2 = vzeros(qg)
            a3 = vzeros(qg)
            for i in range(d):
                qi = vload(qg, td + i * L)
                ki = vload(kg, td + i * L)
                o = j * dL + i * L
                g0 = vadd(vload(Gm, o), vmul(d0, qi))                 # G_t[j,i]
                vstore(Gm, o, g0)
                a0 = vadd(a0, vmul(g0, ki))                          # (G_t k_t)[j]
                g1 = vadd(vload(Gm, o + dL), vmul(d1, qi))
                vstore(Gm, o + dL, g1)
                a1 = vadd(a1, vmul(g1, ki))
                g2 = vadd(vload(Gm, o + 2 * dL), vmul(d2, qi))
                vstore(Gm, o + 2 * dL, g2)
                a2 = vadd(a2, vmul(g2, ki))
                g3 = vadd(vload(Gm, o + 3 * dL), vmul(d3, qi))
                vstore(Gm, o + 3 * dL, g3)
                a3 = vadd(a3, vmul(g3, ki))
                x = vadd(vload(dkg, td + i * L), vmul(g0, v0))       # (G_t^T v_t)[i]
                x = vadd(x, vmul(g1, v1))
                x = vadd(x, vmul(g2, v2))
                vstore(dkg, td + i * L, vadd(x, vmul(g3, v3)))
            vstore(dvg, tv + j * L, a0)
            vstore(dvg, tv + (j + 1) * L, a1)
            vstore(dvg, tv + (j + 2) * L, a2)
            vstore(dvg, tv + (j + 3) * L, a3)
            j += 4
        while j < dv:
            doj = vload(dog, tv + j * L)
            vj = vload(vg, tv + j * L)
            acc = vzeros(qg)
            for i in range(d):
                o = j * dL + i * L
                gg = vadd(vload(Gm, o), vmul(doj, vload(qg, td + i * L)))
                vstore(Gm, o, gg)
                acc = vadd(acc, vmul(gg, vload(kg, td + i * L)))
                vstore(dkg, td + i * L, vadd(vload(dkg, td + i * L), vmul(gg, vj)))
            vstore(dvg, tv + j * L, acc)
            j += 1
    _scatter4(dkg, dk, dks, n0, nl, H, T, d)
    _scatter4(dvg, dvv, dvs, n0, nl, H, T, dv)
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
# softmax attention [L3]: 8 sequences per group in SIMD lanes, like linear attention; the row
# max / exp / normalisation is a scalar loop per lane over one row buffer
# --------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _softmax_forward_group(q, qs, k, ks, v, vs, scale, P, out, os, N, H, T, d, dv, g):
    """One group: P_t = softmax(scale q_t . k_s, s <= t), out_t = sum_s P_t[s] v_s.  [L3]
    q, k, v, out strided (see ``_gather4``); P (N, T*T) rows (zero above the diagonal)."""
    n0 = g * L
    nl = min(L, N - n0)
    qg = np.empty(T * d * L, q.dtype)
    kg = np.empty(T * d * L, q.dtype)
    vg = np.empty(T * dv * L, q.dtype)
    og = np.empty(T * dv * L, q.dtype)
    Pg = np.zeros(T * T * L, q.dtype)                   # P[t, s] at (t*T + s)*L
    _gather4(q, qs, n0, nl, H, T, d, qg)
    _gather4(k, ks, n0, nl, H, T, d, kg)
    _gather4(v, vs, n0, nl, H, T, dv, vg)
    ok = _lanes_finite(qg, T * d) & _lanes_finite(kg, T * d) & _lanes_finite(vg, T * dv)
    sc = vsplat(qg, scale)
    dL = d * L
    vL = dv * L
    for t in range(T):
        td = t * dL
        row = t * T * L
        s = 0
        while s + 4 <= t + 1:                           # scores, 4 keys at a time
            a0 = vzeros(qg)
            a1 = vzeros(qg)
            a2 = vzeros(qg)
            a3 = vzeros(qg)
            for i in range(d):
                qi = vload(qg, td + i * L)
                o = s * dL + i * L
                a0 = vadd(a0, vmul(qi, vload(kg, o)))
                a1 = vadd(a1, vmul(qi, vload(kg, o + dL)))
                a2 = vadd(a2, vmul(qi, vload(kg, o + 2 * dL)))
                a3 = vadd(a3, vmul(qi, vload(kg, o + 3 * dL)))
            vstore(Pg, row + s * L, vmul(a0, sc))
            vstore(Pg, row + (s + 1) * L, vmul(a1, sc))
            vstore(Pg, row + (s + 2) * L, vmul(a2, sc))
            vstore(Pg, row + (s + 3) * L, vmul(a3, sc))
            s += 4
        while s <= t:
            a0 = vzeros(qg)
            for i in range(d):
                a0 = vadd(a0, vmul(vload(qg, td + i * L), vload(kg, s * dL + i * L)))
            vstore(Pg, row + s * L, vmul(a0, sc))
            s += 1
        for l in range(L):                              # softmax of the row, per lane
            m = Pg[row + l]
            for s in range(1, t + 1):
                m = max(m, Pg[row + s * L + l])
            tot = Pg[row + l] * 0.0
            for s in range(t + 1):
                e = np.exp(Pg[row + s * L + l] - m)
                Pg[row + s * L + l] = e
                tot += e
            for s in range(t + 1):
                Pg[row + s * L + l] = Pg[row + s * L + l] / tot
        tv = t * vL
        j = 0
        while j + 4 <= dv:                              # out_t = sum_s P[t, s] v_s, 4 columns at a time
            a0 = vzeros(qg)
            a1 = vzeros(qg)
            a2 = vzeros(qg)
            a3 = vzeros(qg)
            for s in range(t + 1):
                p = vload(Pg, row + s * L)
                o = s * vL + j * L
                a0 = vadd(a0, vmul(p, vload(vg, o)))
                a1 = vadd(a1, vmul(p, vload(vg, o + L)))
                a2 = vadd(a2, vmul(p, vload(vg, o + 2 * L)))
                a3 = vadd(a3, vmul(p, vload(vg, o + 3 * L)))
            vstore(og, tv + j * L, a0)
            vstore(og, tv + (j + 1) * L, a1)
            vstore(og, tv + (j + 2) * L, a2)
            vstore(og, tv + (j + 3) * L, a3)
            j += 4
        while j < dv:
            a0 = vzeros(qg)
            for s in range(t + 1):
                a0 = vadd(a0, vmul(vload(Pg, row + s * L), vload(vg, s * vL + j * L)))
            vstore(og, tv + j * L, a0)
            j += 1
    _scatter_rows(Pg, P, n0, nl)
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
def _softmax_backward_group(q, qs, k, ks, v, vs, P, scale, dout, dos, dq, dqs, dk, dks, dvv, dvs, N, H, T, d, dv, g):
    """One group: dv_s = sum_t P[t,s] dout_t; dP[t,s] = dout_t . v_s; dS = P (dP - sum_s dP P) scale;
    dq_t = sum_s dS[t,s] k_s; dk_s = sum_t dS[t,s] q_t.  [L3]"""
    n0 = g * L
    nl = min(L, N - n0)
    qg = np.empty(T * d * L, q.dtype)
    kg = np.empty(T * d * L, q.dtype)
    vg = np.empty(T * dv * L, q.dtype)
    dog = np.empty(T * dv * L, q.dtype)
    Pg = np.empty(T * T * L, q.dtype)
    _gather4(q, qs, n0, nl, H, T, d, qg)
    _gather4(k, ks, n0, nl, H, T, d, kg)
    _gather4(v, vs, n0, nl, H, T, dv, vg)
    _gather4(dout, dos, n0, nl, H, T, dv, dog)
    ok = _lanes_finite(dog, T * dv)
    _gather_seq(P, n0, nl, Pg)
    gq = np.zeros(T * d * L, q.dtype)
    gk = np.zeros(T * d * L, q.dtype)
    gv = np.zeros(T * dv * L, q.dtype)
    dS = np.empty(T * L, q.dtype)
    sc = vsplat(qg, scale)
    dL = d * L
    vL = dv * L
    for t in range(T):
        tv = t * vL
        td = t * dL
        row = t * T * L
        s = 0
        while s + 4 <= t + 1:                           # dP[t, s] = dout_t . v_s, 4 keys at a time
            a0 = vzeros(qg)
            a1 = vzeros(qg)
            a2 = vzeros(qg)
            a3 = vzeros(qg)
            for j in range(dv):
                dj = vload(dog, tv + j * L)
                o = s * vL + j * L
                a0 = vadd(a0, vmul(dj, vload(vg, o)))
                a1 = vadd(a1, vmul(dj, vload(vg, o + vL)))
                a2 = vadd(a2, vmul(dj, vload(vg, o + 2 * vL)))
                a3 = vadd(a3, vmul(dj, vload(vg, o + 3 * vL)))
            vstore(dS, s * L, a0)
            vstore(dS, (s + 1) * L, a1)
            vstore(dS, (s + 2) * L, a2)
            vstore(dS, (s + 3) * L, a3)
            s += 4
        while s <= t:
            a0 = vzeros(qg)
            for j in range(dv):
                a0 = vadd(a0, vmul(vload(dog, tv + j * L), vload(vg, s * vL + j * L)))
            vstore(dS, s * L, a0)
            s += 1
        rd = vzeros(qg)                                 # sum_s dP[t, s] P[t, s]
        for s in range(t + 1):
            rd = vadd(rd, vmul(vload(dS, s * L), vload(Pg, row + s * L)))
        for s in range(t + 1):
            p = vload(Pg, row + s * L)
            ds = vmul(vmul(p, vsub(vload(dS, s * L), rd)), sc)      # dS[t, s]
            sv = s * vL
            for j in range(dv):                         # dv_s += P[t, s] dout_t
                vstore(gv, sv + j * L, vadd(vload(gv, sv + j * L), vmul(p, vload(dog, tv + j * L))))
            sd = s * dL
            for i in range(d):                          # dq_t += dS k_s; dk_s += dS q_t
                vstore(gq, td + i * L, vadd(vload(gq, td + i * L), vmul(ds, vload(kg, sd + i * L))))
                vstore(gk, sd + i * L, vadd(vload(gk, sd + i * L), vmul(ds, vload(qg, td + i * L))))
    _scatter4(gq, dq, dqs, n0, nl, H, T, d)
    _scatter4(gk, dk, dks, n0, nl, H, T, d)
    _scatter4(gv, dvv, dvs, n0, nl, H, T, dv)
    return ok


@njit(cache=True, nogil=True)
def _softmax_backward_range(g0, g1, q, qs, k, ks, v, vs, P, scale, dout, dos, dq, dqs, dk, dks, dvv, dvs, N, H, T, d, dv):
    """Runs groups g0..g1-1; returns whether all their dout values are finite."""
    ok = True
    for g in range(g0, g1):
        ok &= _softmax_backward_group(q, qs, k, ks, v, vs, P, scale, dout, dos, dq, dqs, dk, dks, dvv, dvs,
                                      N, H, T, d, dv, g)
    return ok


@njit(cache=True, nogil=True)
def _scatter_rows(buf, x, n0, nl):
    """x[n0 + l, e] = buf[e*L + l] for the nl live lanes (x: (N, E) rows)."""
    E = x.shape[1]
    for e in range(E):
        for l in range(nl):
            x[n0 + l, e] = buf[e * L + l]


def softmax_forward(q, k, v, scale):
    """(out (B,H,T,dv) in merged memory layout, P (B,H,T,T), finite) for numpy inputs of one dtype, any strides
    (validated by the caller, NaN/inf aside); ``finite``: no NaN/inf in q, k, v.  [L3]"""
    B, H, T, d = q.shape
    dv = v.shape[3]
    out = merged_empty(B, H, T, dv, v.dtype)
    P = np.empty((B, H, T, T), q.dtype)
    ok = run_groups(_softmax_forward_range, _groups(B * H), *_strided(q), *_strided(k), *_strided(v),
                    q.dtype.type(scale), P.reshape(B * H, T * T), *_strided(out), B * H, H, T, d, dv)
    return out, P, all(ok)


def softmax_backward(q, k, v, P, scale, dout):
    """((dq, dk, dv), finite) for numpy inputs of one dtype, any strides, laid out as in ``linear_backward``;
    ``finite``: no NaN/inf in dout.  [L3]"""
    B, H, T, d = q.shape
    dv = v.shape[3]
    dq, dk, dvv = _grad_buffers(B, H, T, d, dv, q.dtype)
    ok = run_groups(_softmax_backward_range, _groups(B * H), *_strided(q), *_strided(k), *_strided(v),
                    contiguous_writeable(P).reshape(B * H, T * T), q.dtype.type(scale), *_strided(dout),
                    *_strided(dq), *_strided(dk), *_strided(dvv), B * H, H, T, d, dv)
    return (dq, dk, dvv), all(ok)


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
