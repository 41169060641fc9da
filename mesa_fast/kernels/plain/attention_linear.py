"""Plain Numba kernels for causal linear attention [L2]: the recurrent form of ``mesa_ref.ops.attention_linear``
(``linear_attention_recurrent_forward`` / ``_backward``), one sequence per ``prange`` iteration.

SIMD twin: ``../simd/attention_linear.py`` (same arguments, same results up to rounding). Read this first (the
package docstring, ``kernels/plain/__init__.py``, says how the loops are written).
Shapes: q, k (B, H, T, d); v, dout (B, H, T, dv), any strides; out laid out as (B, T, H, dv), the gradients in the
fused QKV layout (``kernels/buffers.py``).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..buffers import grad_buffers, merged_empty
from .rows import _load, _load_backward_inputs, _store

_PAR = dict(cache=True, parallel=True, nogil=True)
_SEQ = dict(cache=True, nogil=True)


@njit(**_SEQ)
def _linear_forward_seq(n, q, k, v, out):
    """[L2] S_t = S_{t-1} + v_t k_t^T, out_t = S_t q_t for sequence n = b*H + h. Returns whether its q, k, v
    were all finite."""
    B, H, T, d = q.shape
    dv = v.shape[3]
    dt = q.dtype.type
    b, h = n // H, n % H
    ST = np.zeros((d, dv), q.dtype)          # S_t^T: ST[i, j] = S_t[j, i]
    qt = np.empty(d, q.dtype)
    kt = np.empty(d, q.dtype)
    vt = np.empty(dv, q.dtype)
    o = np.empty(dv, q.dtype)
    chk = dt(0)
    for t in range(T):
        chk = _load(q, b, h, t, qt, chk)
        chk = _load(k, b, h, t, kt, chk)
        chk = _load(v, b, h, t, vt, chk)
        o[:] = 0
        for i in range(d):
            ki, qi = kt[i], qt[i]
            for j in range(dv):
                s = ST[i, j] + vt[j] * ki      # [L2] S_t = S_{t-1} + v_t k_t^T
                ST[i, j] = s
                o[j] += s * qi                 # [L2] out_t = S_t q_t
        _store(o, out, b, h, t)
    return chk == 0


@njit(**_PAR)
def _linear_forward(q, k, v, out):
    """``_linear_forward_seq`` for every sequence, in parallel; returns how many had a NaN or inf in their input."""
    bad = 0
    for n in prange(q.shape[0] * q.shape[1]):
        if not _linear_forward_seq(n, q, k, v, out):
            bad += 1
    return bad


@njit(**_SEQ)
def _linear_backward_seq(n, q, k, v, dout, dq, dk, dvv):
    """[L2] backward: forward sweep dq_t = S_t^T dout_t; reverse sweep G_t = G_{t+1} + dout_t q_t^T,
    dk_t = G_t^T v_t, dv_t = G_t k_t, for sequence n. Returns whether its dout was all finite."""
    B, H, T, d = q.shape
    dv = v.shape[3]
    dt = q.dtype.type
    b, h = n // H, n % H
    qs, ks, vs, gs, finite = _load_backward_inputs(n, q, k, v, dout)
    # forward sweep
    S = np.zeros((dv, d), q.dtype)            # S_t
    g = np.empty(d, q.dtype)
    for t in range(T):
        g[:] = 0
        for j in range(dv):
            vj, gj = vs[t, j], gs[t, j]
            for i in range(d):
                s = S[j, i] + vj * ks[t, i]    # [L2] S_t = S_{t-1} + v_t k_t^T
                S[j, i] = s
                g[i] += s * gj                 # [L2] dq_t = S_t^T dout_t
        _store(g, dq, b, h, t)
    # reverse sweep
    G = np.zeros((dv, d), q.dtype)            # G_t
    gk = np.empty(d, q.dtype)
    gv = np.empty(dv, q.dtype)
    for t in range(T - 1, -1, -1):
        gk[:] = 0
        for j in range(dv):
            gj, vj = gs[t, j], vs[t, j]
            acc = dt(0)
            for i in range(d):
                x = G[j, i] + gj * qs[t, i]    # [L2] G_t = G_{t+1} + dout_t q_t^T
                G[j, i] = x
                acc += x * ks[t, i]            # [L2] dv_t = G_t k_t
                gk[i] += x * vj                # [L2] dk_t = G_t^T v_t
            gv[j] = acc
        _store(gk, dk, b, h, t)
        _store(gv, dvv, b, h, t)
    return finite


@njit(**_PAR)
def _linear_backward(q, k, v, dout, dq, dk, dvv):
    """``_linear_backward_seq`` for every sequence, in parallel; returns how many had a NaN or inf in their input."""
    bad = 0
    for n in prange(q.shape[0] * q.shape[1]):
        if not _linear_backward_seq(n, q, k, v, dout, dq, dk, dvv):
            bad += 1
    return bad


def linear_forward(q, k, v):
    """(out (B,H,T,dv), finite) for numpy q, k (B,H,T,d), v (B,H,T,dv) of one dtype, any strides; ``finite``: no
    NaN/inf in q, k, v. ``out`` is laid out in memory as (B, T, H, dv).  [L2]"""
    B, H, T, _ = q.shape
    out = merged_empty(B, H, T, v.shape[3], v.dtype)
    bad = _linear_forward(q, k, v, out)
    return out, bad == 0


def linear_backward(q, k, v, dout):
    """((dq, dk, dv), finite) for numpy inputs of one dtype, any strides; ``finite``: no NaN/inf in dout. The
    gradients are laid out as the SIMD twin's (``buffers.grad_buffers``).  [L2]"""
    B, H, T, d = q.shape
    dq, dk, dvv = grad_buffers(B, H, T, d, v.shape[3], q.dtype)
    bad = _linear_backward(q, k, v, dout, dq, dk, dvv)
    return (dq, dk, dvv), bad == 0
