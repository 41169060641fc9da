"""Plain Numba kernels for the mesa layer [M2]-[M4]: ``mesa_ref.ops.mesa`` (``mesa_forward`` / ``mesa_backward``),
one sequence per ``prange`` iteration; gamma = 1 when the layer has no forgetting factor.

SIMD twin: ``../simd/mesa.py`` (same arguments; q~_t and w_t come back here as (B, H, T, d) arrays instead of the
lane layout); CUDA twin: ``mesa_fast/cuda/mesa.py``. Read this first (the package docstring,
``kernels/plain/__init__.py``, says how the loops are written).

The recursion uses the rank-1 factor w_t = c_t sqrt(beta_t), beta_t = 1/(gamma + k_t.c_t), as the SIMD kernels do,
so that the update R_ij <- (R_ij - w_i w_j) / gamma keeps R exactly symmetric, and its backward rebuilds R_t with the
forward's own expressions ("store": from the kept w_t; "checkpoint": from R_0 = I/lam), bit for bit.
Shapes: q, k (B, H, T, d), v (B, H, T, dv) C-contiguous (seen as (N, T, w), N = B*H); lam, gamma (H,).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_PAR = dict(cache=True, parallel=True, nogil=True)
_SEQ = dict(cache=True, nogil=True)


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
    _mesa_forward(q=q.reshape(N, T, d), k=k.reshape(N, T, d), v=v.reshape(N, T, dv), lam=np.asarray(lam, dt), gam=gam,
                  store_w=bool(store_w), out=out, qt=qt, wk=wk)
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
    _mesa_backward(k=k.reshape(N, T, d), v=v.reshape(N, T, dv), dout=np.ascontiguousarray(dout).reshape(N, T, dv),
                   lam=np.asarray(lam, dt), gam=gam, has_gamma=has_gamma, store_w=bool(store_w),
                   qt=qt.reshape(N, T, d), wk=wk.reshape(-1, T, d), dq=dq, dk=dk, dv_=dvv, dlam_n=dlam_n,
                   dgam_n=dgam_n)
    dlam = dlam_n.reshape(B, H).sum(axis=0)
    dgamma = dgam_n.reshape(B, H).sum(axis=0) if has_gamma else None
    return dq.reshape(B, H, T, d), dk.reshape(B, H, T, d), dvv.reshape(B, H, T, dv), dlam, dgamma
