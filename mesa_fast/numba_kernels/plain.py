"""Plain Numba kernels: causal linear attention [L2], causal softmax attention [L3], the mesa layer [M2]-[M4].

The same computations as ``attention.py`` and ``mesa.py`` next to this file, written the plain way: one
``prange`` over the N = B*H (batch, head) sequences, and inside it ordinary loops over that one sequence,
following the reference ops line by line (``mesa_ref/ops/attention_linear.py``'s recurrent form,
``attention_softmax.py``, ``mesa.py``). No lane vectors, no gathering of several sequences into one buffer, no
blocks of rows unrolled by hand. Read this file first: it is the readable statement of what the SIMD kernels
compute, and tests/test_plain_kernels.py holds it to the reference ops. Which version an op runs is decided by
``numba_kernels.DEFAULT_KERNELS`` after ``benchmarks/bench_plain_vs_simd.py`` (the SIMD version only where it is
clearly faster).

Each public function takes and returns what its namesake in ``attention.py`` / ``mesa.py`` does, so the op
wrappers (``layers.py``, ``mesa_fast/mesa.py``) call either one (``numba_kernels.kernels`` picks; the
environment variable MESA_FAST_KERNELS=plain|simd overrides the default). Two things come back in another
layout:
* ``softmax_forward``'s maps are the reference's (B, H, T, T) array P, zero above the diagonal.
* ``forward`` (the mesa layer) returns q~_t and w_t as (B, H, T, d) arrays.
Output layouts are the SIMD kernels' ones: attention outputs laid out in memory as (B, T, H, dv), attention
gradients in the fused QKV layout (``attention.merged_empty`` / ``qkv_empty``), so the model's merges stay free.

How the loops are written. Each kernel is a function of one sequence (``_*_seq``) and a ``prange`` driver that
calls it for every sequence; the sequence's function is compiled on its own, as an ordinary function, because
LLVM did not vectorise the same loops written inline in the ``prange`` body. Each sequence's rows are copied into
small contiguous buffers, and every inner loop runs along one contiguous row. Where the math allows, the inner
loop carries no sum from one iteration to the next (out_t += s q_i along a row of S^T rather than a dot product),
so LLVM's loop vectoriser can use SIMD instructions by itself; the dot products that remain (k.c, q_t.k_s, ...)
run as scalar loops.

Arithmetic: in the input dtype (float32 in -> float32 arithmetic), IEEE operations, no fast-math and no fused
multiply-adds, the sums in the order the loops say. The mesa recursion uses the rank-1 factor
w_t = c_t sqrt(beta_t), beta_t = 1/(gamma + k_t.c_t), as ``mesa.py`` does, so that the update
R_ij <- (R_ij - w_i w_j) / gamma keeps R exactly symmetric, and its backward rebuilds R_t with the forward's own
expressions ("store": from the kept w_t; "checkpoint": from R_0 = I/lam), bit for bit.

NaN/inf: the attention kernels add up x - x over every input value they read (0 when all are finite, NaN
otherwise) and return whether the sum stayed 0; the op then runs the reference's check for its message. The mesa
layer's inputs are checked by the op before the kernel runs (``validate_mesa_inputs``, ``check_dout``).

Threads: ``parallel=True``; the sequences are shared out to ``numba.get_num_threads()`` threads, each sequence's
result computed by one thread alone, so results do not depend on the thread count.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .attention import _grad_buffers, merged_empty

_PAR = dict(cache=True, parallel=True, nogil=True)
_SEQ = dict(cache=True, nogil=True)


# --------------------------------------------------------------------------------------------
# one sequence's rows in and out
# --------------------------------------------------------------------------------------------

@njit(**_SEQ)
def _load(x, b, h, t, buf, chk):
    """buf[:] = x[b, h, t, :] (any strides); returns chk + the sum of x - x over the row (NaN if one is not
    finite)."""
    for i in range(buf.shape[0]):
        xi = x[b, h, t, i]
        buf[i] = xi
        chk += xi - xi
    return chk


@njit(**_SEQ)
def _store(buf, x, b, h, t):
    """x[b, h, t, :] = buf."""
    for i in range(buf.shape[0]):
        x[b, h, t, i] = buf[i]


@njit(**_SEQ)
def _load_seq(x, b, h, buf, chk):
    """buf[t, :] = x[b, h, t, :] for every t (buf: (T, w)); returns chk as ``_load`` does."""
    for t in range(buf.shape[0]):
        chk = _load(x, b, h, t, buf[t], chk)
    return chk


@njit(**_SEQ)
def _store_seq(buf, x, b, h):
    for t in range(buf.shape[0]):
        _store(buf[t], x, b, h, t)


@njit(**_SEQ)
def _load_backward_inputs(n, q, k, v, dout):
    """Sequence n's q, k, v, dout as (T, width) buffers, and whether its dout is all finite (the backwards)."""
    H, T, d, dv = q.shape[1], q.shape[2], q.shape[3], v.shape[3]
    b, h = n // H, n % H
    zero = q.dtype.type(0)
    qs = np.empty((T, d), q.dtype)
    ks = np.empty((T, d), q.dtype)
    vs = np.empty((T, dv), q.dtype)
    gs = np.empty((T, dv), q.dtype)
    _load_seq(q, b, h, qs, zero)
    _load_seq(k, b, h, ks, zero)
    _load_seq(v, b, h, vs, zero)
    return qs, ks, vs, gs, _load_seq(dout, b, h, gs, zero) == 0


# --------------------------------------------------------------------------------------------
# linear attention [L2] (the recurrent form of mesa_ref.ops.attention_linear)
# --------------------------------------------------------------------------------------------

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
    gradients are laid out as ``attention.linear_backward``'s.  [L2]"""
    B, H, T, d = q.shape
    dq, dk, dvv = _grad_buffers(B, H, T, d, v.shape[3], q.dtype)
    bad = _linear_backward(q, k, v, dout, dq, dk, dvv)
    return (dq, dk, dvv), bad == 0


# --------------------------------------------------------------------------------------------
# softmax attention [L3] (mesa_ref.ops.attention_softmax)
# --------------------------------------------------------------------------------------------

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
    dq, dk, dvv = _grad_buffers(B, H, T, d, v.shape[3], q.dtype)
    bad = _softmax_backward(q, k, v, P, float(scale), dout, dq, dk, dvv)
    return (dq, dk, dvv), bad == 0


# --------------------------------------------------------------------------------------------
# the mesa layer [M2]-[M4] (mesa_ref.ops.mesa; gamma = 1 when the layer has no forgetting factor)
# --------------------------------------------------------------------------------------------

@njit(**_SEQ)
def _rank1_factor(R, k, gam, c, w):
    """c = R k (R symmetric, so by rows of R), then w = c sqrt(beta), beta = 1/(gamma + k.c) > 0.  [M2]/[M4]
    (c c^T / (gamma + k.c) = w w^T.)"""
    c[:] = 0
    for i in range(k.shape[0]):
        ki = k[i]
        for j in range(k.shape[0]):
            c[j] += R[i, j] * ki                   # [M2] c_t = R_{t-1} k_t
    den = gam
    for i in range(k.shape[0]):
        den += k[i] * c[i]                         # [M4] gamma + k_t . c_t
    sb = math.sqrt(w.dtype.type(1) / den)
    for i in range(k.shape[0]):
        w[i] = c[i] * sb


@njit(**_SEQ)
def _update_R(R, w, igam, x, y):
    """R <- (R - w w^T) / gamma (as a multiply by igam = 1/gamma), then y = R x with the new R.  [M2]/[M4]
    R stays exactly symmetric (w_i w_j == w_j w_i), so y is summed along rows."""
    d = w.shape[0]
    y[:] = 0
    for i in range(d):
        wi, xi = w[i], x[i]
        for j in range(d):
            r = (R[i, j] - wi * w[j]) * igam       # [M4] R_t = (R_{t-1} - c c^T/(gamma + k.c)) / gamma
            R[i, j] = r
            y[j] += r * xi


@njit(**_SEQ)
def _init_R(R, lam):
    """R_0 = I / lam.  [M2]"""
    R[:] = 0
    for i in range(R.shape[0]):
        R[i, i] = R.dtype.type(1) / lam


@njit(**_SEQ)
def _mesa_forward_seq(n, q, k, v, lam, gam, store_w, out, qt, wk):
    """[M2]/[M4] for sequence n = b*H + h of (N, T, w) arrays; lam, gam: (H,). Writes out, qt (q~_t) and, when
    store_w, wk (w_t)."""
    N, T, d = q.shape
    dv = v.shape[2]
    H = lam.shape[0]
    dt = q.dtype.type
    g = gam[n % H]
    ig = dt(1) / g
    R = np.empty((d, d), q.dtype)               # R_t (symmetric)
    ST = np.zeros((d, dv), q.dtype)             # S_t^T
    c = np.empty(d, q.dtype)
    w = np.empty(d, q.dtype)
    o = np.empty(dv, q.dtype)
    _init_R(R, lam[n % H])                      # [M2] R_0 = I/lam
    for t in range(T):
        _rank1_factor(R, k[n, t], g, c, w)      # [M2]/[M4] c_t, w_t
        if store_w:
            wk[n, t] = w
        _update_R(R, w, ig, q[n, t], qt[n, t])  # [M2] R_t; q~_t = R_t q_t
        o[:] = 0
        for i in range(d):
            ki, qi = k[n, t, i], qt[n, t, i]
            for j in range(dv):
                s = g * ST[i, j] + v[n, t, j] * ki   # [M4] S_t = gamma S_{t-1} + v_t k_t^T
                ST[i, j] = s
                o[j] += s * qi                  # [M2] o_t = S_t q~_t
        out[n, t] = o


@njit(**_PAR)
def _mesa_forward(q, k, v, lam, gam, store_w, out, qt, wk):
    """``_mesa_forward_seq`` for every sequence, in parallel."""
    for n in prange(q.shape[0]):
        _mesa_forward_seq(n, q, k, v, lam, gam, store_w, out, qt, wk)


@njit(**_SEQ)
def _mesa_backward_seq(n, k, v, dout, lam, gam, has_gamma, store_w, qt, wk, dq, dk, dv_, dlam_n, dgam_n):
    """[M3]/[M4] for sequence n: a forward sweep for dq~_t = S_t^T dout_t and u_t = R_t dq~_t (= dq_t, R_t rebuilt
    as the forward built it), then the reverse scan with D_t, C_t (and D'_t, C'_t for dgamma). Writes dq, dk,
    dv_ (N, T, w) at n and the sequence's share of dlam, dgamma at dlam_n[n], dgam_n[n]."""
    N, T, d = k.shape
    dv = v.shape[2]
    H = lam.shape[0]
    dt = k.dtype.type
    half = dt(0.5)
    g = gam[n % H]
    ig = dt(1) / g
    lm = lam[n % H]
    # 1. forward sweep
    R = np.empty((d, d), k.dtype)
    S = np.zeros((dv, d), k.dtype)              # S_t
    c = np.empty(d, k.dtype)
    w = np.empty(d, k.dtype)
    a = np.empty(d, k.dtype)                    # dq~_t
    _init_R(R, lm)
    for t in range(T):
        a[:] = 0
        for j in range(dv):
            vj, gj = v[n, t, j], dout[n, t, j]
            for i in range(d):
                s = g * S[j, i] + vj * k[n, t, i]   # [M4] S_t = gamma S_{t-1} + v_t k_t^T
                S[j, i] = s
                a[i] += s * gj                  # [M3] dq~_t = S_t^T dout_t
        if store_w:
            w[:] = wk[n, t]
        else:
            _rank1_factor(R, k[n, t], g, c, w)  # the forward's own expressions
        _update_R(R, w, ig, a, dq[n, t])        # [M3] R_t; u_t = R_t dq~_t = dq_t
    # 2. reverse scan
    D = np.zeros((d, dv), k.dtype)              # D_t = gamma D_{t+1} + q~_t dout_t^T
    C = np.zeros((d, d), k.dtype)               # C_t = gamma C_{t+1} + u q~^T + q~ u^T (symmetric)
    D1 = np.zeros((d, dv) if has_gamma else (0, 0), k.dtype)   # D'_t [M4]
    C1 = np.zeros((d, d) if has_gamma else (0, 0), k.dtype)    # C'_t [M4]
    gdv = np.empty(dv, k.dtype)
    gdk = np.empty(d, k.dtype)
    dla = dt(0)
    dga = dt(0)
    for t in range(T - 1, -1, -1):
        gdv[:] = 0
        gdk[:] = 0
        kdv = dt(0)
        kck = dt(0)
        for i in range(d):
            qi, ui, ki = qt[n, t, i], dq[n, t, i], k[n, t, i]
            acc = dt(0)
            lag = dt(0)
            for j in range(dv):
                old = D[i, j]
                x = g * old + qi * dout[n, t, j]    # [M4] D_t
                D[i, j] = x
                acc += x * v[n, t, j]            # [M3] (D_t v_t)_i
                gdv[j] += x * ki                 # [M3] dv_t = D_t^T k_t
                if has_gamma:
                    y = g * D1[i, j] + old       # [M4] D'_t = gamma D'_{t+1} + D_{t+1}
                    D1[i, j] = y
                    lag += y * v[n, t, j]
            gdk[i] += acc                        # [M3] dk_t = D_t v_t ...
            kdv += ki * lag                      # [M4] k_t . D'_t v_t
            lag = dt(0)
            for j in range(d):
                old = C[i, j]
                x = g * old + (ui * qt[n, t, j] + qi * dq[n, t, j])   # [M4] C_t
                C[i, j] = x
                gdk[j] -= x * ki                 # [M3] ... - C_t k_t (C symmetric: by rows)
                if has_gamma:
                    y = g * C1[i, j] + old       # [M4] C'_t = gamma C'_{t+1} + C_{t+1}
                    C1[i, j] = y
                    lag += y * k[n, t, j]
            kck += ki * lag                      # [M4] k_t . C'_t k_t
        dk[n, t] = gdk
        dv_[n, t] = gdv
        qu = dt(0)
        for i in range(d):
            qu += qt[n, t, i] * dq[n, t, i]      # q~_t . u_t
        dla -= dt(g ** (t + 1)) * qu             # [M4] dlam = -sum_t gamma^t q~_t.u_t ([M3] with gamma = 1)
        if has_gamma:
            dga += kdv - half * kck              # [M4] k.D'v - k.C'k/2
            dga -= dt(lm * (t + 1) * g ** t) * qu   # [M4] - lam t gamma^{t-1} q~_t.u_t
    dlam_n[n] = dla
    dgam_n[n] = dga


@njit(**_PAR)
def _mesa_backward(k, v, dout, lam, gam, has_gamma, store_w, qt, wk, dq, dk, dv_, dlam_n, dgam_n):
    """``_mesa_backward_seq`` for every sequence, in parallel."""
    for n in prange(k.shape[0]):
        _mesa_backward_seq(n, k, v, dout, lam, gam, has_gamma, store_w, qt, wk, dq, dk, dv_, dlam_n, dgam_n)


def forward(q, k, v, lam, gamma, store_w):
    """The mesa-layer forward. q, k (B,H,T,d), v (B,H,T,dv) C-contiguous, lam/gamma (H,) (gamma may be None).
    Returns out (B,H,T,dv), q~_t (B,H,T,d) and w_t = c_t sqrt(beta_t) (B,H,T,d; empty unless store_w)."""
    B, H, T, d = q.shape
    dv = v.shape[3]
    N = B * H
    dt = q.dtype
    gam = np.ones(H, dt) if gamma is None else np.asarray(gamma, dt)
    out = np.empty((N, T, dv), dt)
    qt = np.empty((N, T, d), dt)
    wk = np.empty((N, T, d) if store_w else (0, T, d), dt)
    _mesa_forward(q.reshape(N, T, d), k.reshape(N, T, d), v.reshape(N, T, dv), np.asarray(lam, dt), gam,
                  bool(store_w), out, qt, wk)
    return out.reshape(B, H, T, dv), qt.reshape(B, H, T, d), wk.reshape(-1, H, T, d)


def backward(dout, k, v, lam, gamma, store_w, qt, wk):
    """The mesa-layer backward, with qt, wk from ``forward``. Returns dq, dk (B,H,T,d), dv (B,H,T,dv),
    dlam (H,), dgamma (H,) or None."""
    B, H, T, d = k.shape
    dv = v.shape[3]
    N = B * H
    dt = k.dtype
    has_gamma = gamma is not None
    gam = np.asarray(gamma, dt) if has_gamma else np.ones(H, dt)
    dq = np.empty((N, T, d), dt)
    dk = np.empty((N, T, d), dt)
    dvv = np.empty((N, T, dv), dt)
    dlam_n = np.empty(N, dt)
    dgam_n = np.empty(N, dt)
    _mesa_backward(k.reshape(N, T, d), v.reshape(N, T, dv), np.ascontiguousarray(dout).reshape(N, T, dv),
                   np.asarray(lam, dt), gam, has_gamma, bool(store_w), qt.reshape(N, T, d),
                   wk.reshape(-1, T, d), dq, dk, dvv, dlam_n, dgam_n)
    dlam = dlam_n.reshape(B, H).sum(axis=0)
    dgamma = dgam_n.reshape(B, H).sum(axis=0) if has_gamma else None
    return dq.reshape(B, H, T, d), dk.reshape(B, H, T, d), dvv.reshape(B, H, T, dv), dlam, dgamma
