"""Moving (B, H, T, w) arrays into and out of the lane layout, for the SIMD attention kernels [L2], [L3].

Shared by ``attention_linear.py`` and ``attention_softmax.py`` (their plain twins, ``kernels/plain/``, read one
sequence at a time and need none of this).

* Lanes. L = 16 independent (batch, head) sequences run together, one per SIMD lane (``lanevec.LaneVec`` with
  ``lanevec.WIDE`` lanes: one AVX-512 register of float32, two of float64; the mesa kernels use 8). Per group of 16
  the inputs are gathered into lane-laid-out buffers, 64-byte aligned: element (t, i) of a (T, width) per-sequence
  matrix for lane l sits at ``(t*width + i)*L + l``. Each lane runs the scalar computation, so a lane's result does
  not depend on its neighbours. Groups run on ``numba.get_num_threads()`` threads (``runtime.pool.run_groups``).
* Any strides. Every (B, H, T, w) array reaches the kernels as its memory (a 1-D view from its first element) and
  its four strides (``_strided``), so the model's head splits (views of the fused QKV buffer,
  ``mesa_fast.ops.heads.split_qkv``) are read in place: no copy before the kernel, one compiled signature for every
  layout. A group's gather moves 8 sequences x 8 features at a time through registers
  (``lanevec.vtranspose_from_rows``, two per block of 8 features for 16 lanes; the last block of a width that is not
  a multiple of 8 overlaps the one before it), token by token for q, k and v together (``_gather_qkv``), and the
  scatters of the outputs are its inverse.
* NaN/inf. Every kernel checks its inputs as it gathers them: the forwards q, k, v, the backwards dout (on the lane
  buffers, ``_lanes_finite``; every sequence lands in exactly one lane), and returns whether all were finite; the op
  wrappers turn a False into the reference's ValueError.

About half of each attention kernel's time is the gathers and scatters, half the arithmetic; the 16 lanes and the
token-by-token gathers were each kept because they measured faster (docs/performance-archive/notes.md, "Attention
kernels").

Shapes (N = B*H sequences, G = ceil(N / L) groups):
    q, k: (B, H, T, d)   v, dout: (B, H, T, dv)                        inputs, any strides
    buf: flat (T*w*L,)                                                  one group's lane-laid-out (T, w) matrices
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .lanevec import WIDE, vadd, vstore, vsub, vtranspose_from_rows, vtranspose_to_rows, wload, wzeros

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
