"""Plain Numba kernels for causal softmax attention [L3]: ``mesa_ref.ops.attention_softmax``, one sequence per
``prange`` iteration.

SIMD twin: ``../simd/attention_softmax.py`` (same arguments, same results up to rounding; the maps come back here as
the reference's (B, H, T, T) array P, zero above the diagonal). Read this first (the package docstring,
``kernels/plain/__init__.py``, says how the loops are written).
Shapes: q, k (B, H, T, d); v, dout (B, H, T, dv), any strides; out laid out as (B, T, H, dv), the gradients in the
fused QKV layout (``kernels/buffers.py``).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..buffers import grad_buffers, merged_empty
from .rows import _load_backward_inputs, _load_seq, _store, _store_seq

_PAR = dict(cache=True, parallel=True, nogil=True)
_SEQ = dict(cache=True, nogil=True)


@njit(**_SEQ)
def _softmax_forward_seq(n, q, k, v, scale, P, out):
    """[L3] P[t, s] = softmax_s(scale q_t . k_s, s <= t), out_t = sum_{s<=t} P[t, s] v_s, for sequence n.
    P: (B, H, T, T), the sequence's map written in full (zero above the diagonal). Returns whether its q, k, v
    were all finite."""
    B, H, T, d = q.shape
    dv = v.shape[3]
    dt = q.dtype.type
    sc = dt(scale)
    b, h = n // H, n % H
    qs = np.empty((T, d), q.dtype)
    ks = np.empty((T, d), q.dtype)
    vs = np.empty((T, dv), q.dtype)
    chk = _load_seq(q, b, h, qs, dt(0))
    chk = _load_seq(k, b, h, ks, chk)
    chk = _load_seq(v, b, h, vs, chk)
    p = np.empty(T, q.dtype)
    o = np.empty(dv, q.dtype)
    for t in range(T):
        for s in range(t + 1):
            acc = dt(0)
            for i in range(d):
                acc += qs[t, i] * ks[s, i]
            p[s] = acc * sc                    # [L3] scores q_t . k_s * scale
        m = p[0]
        for s in range(1, t + 1):
            m = max(m, p[s])
        tot = dt(0)
        for s in range(t + 1):
            p[s] = math.exp(p[s] - m)          # [L3] row max subtracted (the diagonal is never masked)
            tot += p[s]
        o[:] = 0
        for s in range(t + 1):
            ps = p[s] / tot                    # [L3] P[t, s]
            P[b, h, t, s] = ps
            for j in range(dv):
                o[j] += ps * vs[s, j]          # [L3] out_t = sum_s P[t, s] v_s
        for s in range(t + 1, T):
            P[b, h, t, s] = 0
        _store(o, out, b, h, t)
    return chk == 0


@njit(**_PAR)
def _softmax_forward(q, k, v, scale, P, out):
    """``_softmax_forward_seq`` for every sequence, in parallel; returns how many had a NaN or inf in their input."""
    bad = 0
    for n in prange(q.shape[0] * q.shape[1]):
        if not _softmax_forward_seq(n, q, k, v, scale, P, out):
            bad += 1
    return bad


@njit(**_SEQ)
def _softmax_backward_seq(n, q, k, v, P, scale, dout, dq, dk, dvv):
    """[L3] backward: dv_s = sum_t P[t, s] dout_t; dP[t, s] = dout_t . v_s;
    dS[t, s] = P[t, s] (dP[t, s] - sum_s' dP[t, s'] P[t, s']) scale; dq_t = sum_s dS[t, s] k_s;
    dk_s = sum_t dS[t, s] q_t, for sequence n. Returns whether its dout was all finite."""
    B, H, T, d = q.shape
    dv = v.shape[3]
    dt = q.dtype.type
    sc = dt(scale)
    b, h = n // H, n % H
    qs, ks, vs, gs, finite = _load_backward_inputs(n, q, k, v, dout)
    gk = np.zeros((T, d), q.dtype)
    gv = np.zeros((T, dv), q.dtype)
    dS = np.empty(T, q.dtype)
    g = np.empty(d, q.dtype)
    for t in range(T):
        rd = dt(0)
        for s in range(t + 1):
            acc = dt(0)
            for j in range(dv):
                acc += gs[t, j] * vs[s, j]     # [L3] dP[t, s] = dout_t . v_s
            dS[s] = acc
            rd += acc * P[b, h, t, s]          # sum_s dP[t, s] P[t, s]
        g[:] = 0
        for s in range(t + 1):
            pts = P[b, h, t, s]
            x = pts * (dS[s] - rd) * sc        # [L3] dS[t, s], the softmax Jacobian
            for i in range(d):
                g[i] += x * ks[s, i]           # [L3] dq_t = sum_s dS[t, s] k_s
                gk[s, i] += x * qs[t, i]       # [L3] dk_s = sum_t dS[t, s] q_t
            for j in range(dv):
                gv[s, j] += pts * gs[t, j]     # [L3] dv_s = sum_t P[t, s] dout_t
        _store(g, dq, b, h, t)
    _store_seq(gk, dk, b, h)
    _store_seq(gv, dvv, b, h)
    return finite


@njit(**_PAR)
def _softmax_backward(q, k, v, P, scale, dout, dq, dk, dvv):
    """``_softmax_backward_seq`` for every sequence, in parallel; returns how many had a NaN or inf in their input."""
    bad = 0
    for n in prange(q.shape[0] * q.shape[1]):
        if not _softmax_backward_seq(n, q, k, v, P, scale, dout, dq, dk, dvv):
            bad += 1
    return bad


def softmax_forward(q, k, v, scale):
    """(out (B,H,T,dv) laid out as (B, T, H, dv), P (B,H,T,T), finite) for numpy inputs of one dtype, any strides;
    ``finite``: no NaN/inf in q, k, v. P is the reference's attention map (zero above the diagonal).  [L3]"""
    B, H, T, _ = q.shape
    out = merged_empty(B, H, T, v.shape[3], v.dtype)
    P = np.empty((B, H, T, T), q.dtype)
    bad = _softmax_forward(q, k, v, float(scale), P, out)
    return out, P, bad == 0


def softmax_backward(q, k, v, P, scale, dout):
    """((dq, dk, dv), finite) for numpy inputs of one dtype, any strides, P from ``softmax_forward``; ``finite``: no
    NaN/inf in dout.  [L3]"""
    B, H, T, d = q.shape
    dq, dk, dvv = grad_buffers(B, H, T, d, v.shape[3], q.dtype)
    bad = _softmax_backward(q=q, k=k, v=v, P=P, scale=float(scale), dout=dout, dq=dq, dk=dk, dvv=dvv)
    return (dq, dk, dvv), bad == 0
