"""The mesa-layer, NumPy reference (MATH.md section 3, [M1]-[M4]).

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers" (arXiv 2309.05858).
Per head, at every time t the layer solves a (optionally exponentially weighted) ridge regression
of the values on the keys seen so far and applies the solution to the query [M1]:

    o_t = S_t R_t q_t,   S_t = sum_{t'<=t} gamma^{t-t'} v_{t'} k_{t'}^T,
                         R_t = (sum_{t'<=t} gamma^{t-t'} k_{t'} k_{t'}^T + gamma^t lam I)^{-1}

(gamma = 1, the default, is the paper's layer; gamma < 1 is the forgetting factor [M4]).

This file is the reference people audit line by line: the forward is the Sherman-Morrison
recursion [M2]/[M4], the backward the closed-form reverse scan [M3] (its gamma version is derived
in docs/derivations/mesa.md). Both loop over t and are vectorised over (B, H).

Glossary of shapes:
    B batch, H heads, T time (tokens), d key/query size, dv value size (usually d).
    q, k: (B, H, T, d)   v: (B, H, T, dv)   lam, gamma: (H,)   out: (B, H, T, dv)
    R_t: (B, H, d, d) (symmetric)   S_t: (B, H, dv, d)   q~_t = R_t q_t: (B, H, T, d)
Time index convention: R_t, S_t are the states after t tokens, t = 1..T; R_0 = I/lam, S_0 = 0.
Array position t-1 holds token t.

Three ways to have R_t in the backward, chosen at forward time (``backward=``) [M3]:
    "store"      all R_1..R_T kept in the cache: O(T d^2) memory, the clearest.
    "checkpoint" R_0, R_C, R_2C, ... kept (C = checkpoint_every, default ceil(sqrt(T))); the
                 backward re-runs the forward recursion from each checkpoint: O(T d^2 / C) memory,
                 bit-for-bit the forward's R_t.
    "downdate"   only R_T kept; the backward runs the recursion in reverse by a Sherman-Morrison
                 downdate (the authors' custom backward). O(d^2) memory but it subtracts nearly
                 equal quantities; benchmarks/mesa_stability.py measures how much precision it loses.

Dtypes: the computation runs in q's dtype (float32 in -> float32 arithmetic and output, no silent
upcast). lam and gamma must be float arrays of shape (H,) and are cast to q's dtype.
``mesa_direct`` is the independent float64 oracle (explicit matrices + np.linalg.solve).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from ._common import (
    array_module,
    check_dout,
    check_float_array,
    check_qkv,
)

__all__ = [
    "MesaCache",
    "BACKWARD_STRATEGIES",
    "validate_mesa_inputs",
    "mesa_forward",
    "mesa_backward",
    "mesa_direct",
]

BACKWARD_STRATEGIES = ("store", "checkpoint", "downdate")


class MesaCache(NamedTuple):
    """What ``mesa_forward`` keeps for ``mesa_backward`` (never mutated by the backward).

    q, k:     (B, H, T, d)  the inputs (references, not copies: do not modify them in place).
    v:        (B, H, T, dv) the input values.
    lam:      (H,)          ridge parameter, cast to q's dtype (a private copy).
    gamma:    (H,) or None  forgetting factor in (0, 1], cast to q's dtype (private copy); None = [M2].
    qt:       (B, H, T, d)  q~_t = R_t q_t [M2], needed by every backward.
    backward: str           "store" | "checkpoint" | "downdate".
    checkpoint_every: int or None  block length C for "checkpoint" (None for the other strategies).
    R_saved:  (B, H, n, d, d)  R_{R_times[j]} in R_saved[:, :, j]:
                  store:      n = T, R_times = (1, 2, ..., T)
                  checkpoint: n = ceil(T / C), R_times = (0, C, 2C, ...) (block starts; R_0 = I/lam)
                  downdate:   n = 1, R_times = (T,)
    R_times:  tuple of int, length n (see R_saved).
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    lam: np.ndarray
    gamma: Optional[np.ndarray]
    qt: np.ndarray
    backward: str
    checkpoint_every: Optional[int]
    R_saved: np.ndarray
    R_times: tuple


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

def _check_head_param(name, x, H, dtype, xp):
    """lam / gamma: a float array of shape (H,), finite, cast to ``dtype`` (a fresh copy)."""
    check_float_array(name, x, ndim=1)
    if tuple(x.shape) != (H,):
        raise ValueError(f"{name}: expected shape (H,) = ({H},), got {tuple(x.shape)}")
    if array_module(x) is not xp:
        raise ValueError(f"{name}: lives on a different device/array module than q")
    return x.astype(dtype, copy=True)


def validate_mesa_inputs(q, k, v, lam, gamma=None, backward="store", checkpoint_every=None):
    """Check every mesa-layer input before any work; return the normalised values.

    Raises ValueError naming the argument on: q, k, v not rank-4 float arrays of consistent
    shapes (q, k: (B, H, T, d); v: (B, H, T, dv)), non-finite values, mixed dtypes or devices;
    lam not a finite float array of shape (H,) with every entry > 0; gamma (when given) not of
    shape (H,) with entries in (0, 1]; backward not one of "store", "checkpoint", "downdate";
    checkpoint_every not a positive int (or None).

    lam and gamma are cast to q's dtype (copies); the range checks run after the cast, so a lam
    that underflows to 0 in float32 is rejected.

    Returns (q, k, v, lam, gamma, backward, checkpoint_every) where checkpoint_every is resolved
    to ceil(sqrt(T)) when backward == "checkpoint" and it was None, and is None for the other
    strategies (where it is validated but unused).
    """
    B, H, T, d, dv = check_qkv(q, k, v)
    xp = array_module(q)
    dtype = q.dtype
    lam = _check_head_param("lam", lam, H, dtype, xp)
    if not bool((lam > 0).all()):
        raise ValueError(f"lam: must be > 0 (in q's dtype {dtype}), got {lam.tolist()}")
    if gamma is not None:
        gamma = _check_head_param("gamma", gamma, H, dtype, xp)
        if not bool(((gamma > 0) & (gamma <= 1)).all()):
            raise ValueError(f"gamma: must be in (0, 1] (in q's dtype {dtype}), got {gamma.tolist()}")
    if not isinstance(backward, str) or backward not in BACKWARD_STRATEGIES:
        raise ValueError(f"backward: expected one of {BACKWARD_STRATEGIES}, got {backward!r}")
    if checkpoint_every is not None:
        if isinstance(checkpoint_every, (bool, np.bool_)) or not isinstance(checkpoint_every, (int, np.integer)):
            raise ValueError(f"checkpoint_every: expected a positive int or None, got {checkpoint_every!r}")
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every: expected a positive int, got {checkpoint_every}")
        checkpoint_every = int(checkpoint_every)
    if backward == "checkpoint":
        if checkpoint_every is None:
            checkpoint_every = max(1, math.ceil(math.sqrt(T)))
    else:
        checkpoint_every = None
    return q, k, v, lam, gamma, backward, checkpoint_every


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------

def _sm_update(R, k_t, g):
    """One step of [M2]/[M4]: R_t from R_{t-1} (B, H, d, d) and k_t (B, H, d); g: (1, H) gamma.

    c_t = R_{t-1} k_t;  R_t = (1/gamma) [R_{t-1} - c_t c_t^T / (gamma + k_t . c_t)]
    (gamma = 1 is the plain Sherman-Morrison update [M2]; multiplying/dividing by 1 is exact).
    """
    c = np.einsum("bhij,bhj->bhi", R, k_t)                             # [M2] c_t = R_{t-1} k_t   (B,H,d)
    denom = g + np.einsum("bhi,bhi->bh", k_t, c)                       # [M4] gamma + k.c         (B,H)
    R = (R - c[..., :, None] * c[..., None, :] / denom[..., None, None]) / g[..., None, None]  # [M2]/[M4]
    return R                                                           # (B,H,d,d)


def _sm_downdate(R, k_t, g):
    """Inverse of ``_sm_update``: R_{t-1} from R_t and k_t (Sherman-Morrison downdate) [M3].

    A_t = gamma A_{t-1} + k k^T  =>  R_{t-1} = gamma [R_t + (R_t k)(R_t k)^T / (1 - k . R_t k)].
    The denominator 1 - k.R_t k = gamma / (gamma + k.R_{t-1} k) can be tiny: precision is lost.
    """
    c = np.einsum("bhij,bhj->bhi", R, k_t)                             # R_t k_t                  (B,H,d)
    denom = 1 - np.einsum("bhi,bhi->bh", k_t, c)                       # 1 - k.R_t k              (B,H)
    R = (R + c[..., :, None] * c[..., None, :] / denom[..., None, None]) * g[..., None, None]
    return R                                                           # (B,H,d,d)


def mesa_forward(q, k, v, lam, *, gamma=None, backward="store", checkpoint_every=None):
    """Mesa-layer forward by the Sherman-Morrison recursion [M2] (forgetting factor [M4]).

    R_0 = I/lam; c_t = R_{t-1} k_t; R_t = R_{t-1} - c c^T/(1 + k.c)            [M2]
        (gamma: R_t = (1/gamma)[R_{t-1} - c c^T/(gamma + k.c)], S_t = gamma S_{t-1} + v k^T  [M4])
    q~_t = R_t q_t;  o_t = S_t q~_t.

    Inputs:
        q, k: (B, H, T, d); v: (B, H, T, dv); lam: (H,) > 0; gamma: (H,) in (0, 1] or None.
        backward: "store" | "checkpoint" | "downdate" (how the backward gets R_t; see module doc).
        checkpoint_every: block length for "checkpoint" (default ceil(sqrt(T))).
    Returns (out, cache): out (B, H, T, dv) in q's dtype; cache a ``MesaCache``.
    """
    q, k, v, lam, gamma, backward, C = validate_mesa_inputs(q, k, v, lam, gamma, backward, checkpoint_every)
    B, H, T, d = q.shape
    dv = v.shape[3]
    dt = q.dtype
    g = (gamma if gamma is not None else np.ones(H, dtype=dt))[None, :]   # (1,H) gamma, 1 for [M2]

    R = np.broadcast_to(np.eye(d, dtype=dt) / lam[:, None, None], (B, H, d, d)).copy()  # [M2] R_0 = I/lam
    S = np.zeros((B, H, dv, d), dtype=dt)                              # S_0 = 0                  (B,H,dv,d)
    qt = np.empty((B, H, T, d), dtype=dt)                              # q~_t                     (B,H,T,d)
    out = np.empty((B, H, T, dv), dtype=dt)                            # o_t                      (B,H,T,dv)

    if backward == "store":
        R_times = tuple(range(1, T + 1))
    elif backward == "checkpoint":
        R_times = tuple(range(0, T, C))
    else:
        R_times = (T,)
    R_saved = np.empty((B, H, len(R_times), d, d), dtype=dt)           # (B,H,n,d,d)
    slot = {t: j for j, t in enumerate(R_times)}

    for t in range(1, T + 1):                                          # token t at position t-1
        if t - 1 in slot and backward == "checkpoint":
            R_saved[:, :, slot[t - 1]] = R                             # checkpoint R_{t-1} (block start)
        k_t, v_t, q_t = k[:, :, t - 1], v[:, :, t - 1], q[:, :, t - 1]  # (B,H,d), (B,H,dv), (B,H,d)
        R = _sm_update(R, k_t, g)                                      # [M2]/[M4] R_t            (B,H,d,d)
        S = g[..., None, None] * S + v_t[..., :, None] * k_t[..., None, :]  # [M4] S_t = gamma S + v k^T
        qt[:, :, t - 1] = np.einsum("bhij,bhj->bhi", R, q_t)           # [M2] q~_t = R_t q_t      (B,H,d)
        out[:, :, t - 1] = np.einsum("bhij,bhj->bhi", S, qt[:, :, t - 1])  # [M2] o_t = S_t q~_t  (B,H,dv)
        if backward == "store" or (backward == "downdate" and t == T):
            R_saved[:, :, slot[t]] = R

    cache = MesaCache(q=q, k=k, v=v, lam=lam, gamma=gamma, qt=qt, backward=backward,
                      checkpoint_every=C, R_saved=R_saved, R_times=R_times)
    return out, cache


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------

def _u_store(cache, a):
    """u_t = R_t a_t with every R_t from the cache ("store")."""
    return np.einsum("bhtij,bhtj->bhti", cache.R_saved, a)              # [M3] u_t = R_t dq~_t     (B,H,T,d)


def _u_checkpoint(cache, a, g):
    """u_t = R_t a_t, re-running the forward recursion [M2]/[M4] from each checkpoint."""
    T = a.shape[2]
    C = cache.checkpoint_every
    u = np.empty_like(a)
    for j, t0 in enumerate(cache.R_times):                             # block t0+1 .. min(t0+C, T)
        R = cache.R_saved[:, :, j].copy()                              # R_{t0}                   (B,H,d,d)
        for t in range(t0 + 1, min(t0 + C, T) + 1):
            R = _sm_update(R, cache.k[:, :, t - 1], g)                 # [M2]/[M4] R_t, as in forward
            u[:, :, t - 1] = np.einsum("bhij,bhj->bhi", R, a[:, :, t - 1])  # [M3] u_t = R_t dq~_t
    return u


def _u_downdate(cache, a, g):
    """u_t = R_t a_t, running the recursion backwards from R_T by Sherman-Morrison downdates."""
    T = a.shape[2]
    u = np.empty_like(a)
    R = cache.R_saved[:, :, 0].copy()                                  # R_T                      (B,H,d,d)
    for t in range(T, 0, -1):
        u[:, :, t - 1] = np.einsum("bhij,bhj->bhi", R, a[:, :, t - 1])  # [M3] u_t = R_t dq~_t
        if t > 1:
            R = _sm_downdate(R, cache.k[:, :, t - 1], g)               # R_{t-1}                  (B,H,d,d)
    return u


def mesa_backward(dout, cache):
    """Mesa-layer backward by the closed-form reverse scan [M3] (gamma version: docs/derivations/mesa.md).

    With g_t = dL/do_t and q~_t, u_t as below (weights w = gamma^{t''-t}, all 1 without gamma):
        dq~_t = S_t^T g_t = sum_{t'<=t} gamma^{t-t'} k_{t'} (v_{t'} . g_t)     (forward sweep)
        u_t   = R_t dq~_t,   dq_t = u_t                                        [M3]
        D_t   = sum_{t''>=t} w q~_{t''} g_{t''}^T                 (d, dv)       reverse scan
        C_t   = sum_{t''>=t} w (u_{t''} q~_{t''}^T + q~_{t''} u_{t''}^T)  (d, d)
        dv_t  = D_t^T k_t,   dk_t = D_t v_t - C_t k_t                          [M3]
        dlam  = - sum_t gamma^t q~_t . u_t                 (summed over batch -> (H,))
        dgamma = sum_t [k_t . D'_t v_t - k_t . C'_t k_t / 2 - lam t gamma^{t-1} q~_t . u_t]   [M4]
                 with the lag-weighted D'_t = sum_{t''>t} (t''-t) gamma^{t''-t-1} q~_{t''} g_{t''}^T
                 (= gamma D'_{t+1} + D_{t+1}) and C'_t likewise from C. In exact arithmetic this equals
                 -(1/(2 gamma)) sum_t t (k_t . dk_t + v_t . dv_t) (a rescaling identity, tested), but
                 that form cancels badly in float32 at large T; the lag form does not.

    Inputs: dout (B, H, T, dv) in the forward's dtype; cache from ``mesa_forward`` (not mutated).
    Returns (dq, dk, dv, dlam), plus dgamma when the forward was given gamma;
        dq, dk: (B, H, T, d); dv: (B, H, T, dv); dlam, dgamma: (H,). All in q's dtype.
    """
    if not isinstance(cache, MesaCache):
        raise ValueError(f"cache: expected a MesaCache from mesa_forward, got {type(cache).__name__}")
    q, k, v, qt = cache.q, cache.k, cache.v, cache.qt
    B, H, T, d = q.shape
    dv_ = v.shape[3]
    dt = q.dtype
    check_dout(dout, (B, H, T, dv_), dt)
    lam, gamma = cache.lam, cache.gamma                                 # (H,), (H,) or None
    g = (gamma if gamma is not None else np.ones(H, dtype=dt))[None, :]   # (1,H)

    # 1. forward sweep: a_t = dq~_t = S_t^T g_t (S_t rebuilt, never stored)               [M3]
    a = np.empty((B, H, T, d), dtype=dt)                                # dq~_t                   (B,H,T,d)
    S = np.zeros((B, H, dv_, d), dtype=dt)                              # S_t                     (B,H,dv,d)
    for t in range(1, T + 1):
        S = g[..., None, None] * S + v[:, :, t - 1, :, None] * k[:, :, t - 1, None, :]  # [M4] S_t
        a[:, :, t - 1] = np.einsum("bhij,bhi->bhj", S, dout[:, :, t - 1])  # [M3] dq~_t = S_t^T g_t

    # 2. u_t = R_t dq~_t, with R_t from the strategy chosen at forward time                 [M3]
    if cache.backward == "store":
        u = _u_store(cache, a)
    elif cache.backward == "checkpoint":
        u = _u_checkpoint(cache, a, g)
    else:
        u = _u_downdate(cache, a, g)
    dq = u                                                              # [M3] dq_t = u_t          (B,H,T,d)

    # 3. reverse scan with the accumulators D_t, C_t                                          [M3]
    #    with gamma also their lag-weighted sums D'_t, C'_t for dgamma                         [M4]
    dk = np.empty_like(k)                                               # (B,H,T,d)
    dv = np.empty_like(v)                                               # (B,H,T,dv)
    D = np.zeros((B, H, d, dv_), dtype=dt)                              # D_{T+1} = 0             (B,H,d,dv)
    Cacc = np.zeros((B, H, d, d), dtype=dt)                             # C_{T+1} = 0             (B,H,d,d)
    if gamma is not None:
        D1 = np.zeros_like(D)                                           # D'_{T+1} = 0            (B,H,d,dv)
        C1 = np.zeros_like(Cacc)                                        # C'_{T+1} = 0            (B,H,d,d)
        dgamma_data = np.zeros((B, H), dtype=dt)                        # data part of dgamma     (B,H)
    gg = g[..., None, None]                                             # (1,H,1,1)
    for t in range(T, 0, -1):
        qt_t, u_t, g_t = qt[:, :, t - 1], u[:, :, t - 1], dout[:, :, t - 1]
        k_t, v_t = k[:, :, t - 1], v[:, :, t - 1]
        if gamma is not None:
            D1 = gg * D1 + D                                            # [M4] D'_t = gamma D'_{t+1} + D_{t+1}
            C1 = gg * C1 + Cacc                                         # [M4] C'_t = gamma C'_{t+1} + C_{t+1}
        D = gg * D + qt_t[..., :, None] * g_t[..., None, :]                            # [M3] D_t
        Cacc = gg * Cacc + (u_t[..., :, None] * qt_t[..., None, :]
                            + qt_t[..., :, None] * u_t[..., None, :])                  # [M3] C_t
        dv[:, :, t - 1] = np.einsum("bhij,bhi->bhj", D, k_t)                          # [M3] dv_t = D_t^T k_t
        dk[:, :, t - 1] = (np.einsum("bhij,bhj->bhi", D, v_t)
                           - np.einsum("bhij,bhj->bhi", Cacc, k_t))                   # [M3] dk_t = D v - C k
        if gamma is not None:
            dgamma_data += (np.einsum("bhi,bhij,bhj->bh", k_t, D1, v_t)
                            - 0.5 * np.einsum("bhi,bhij,bhj->bh", k_t, C1, k_t))      # [M4] k.D'v - k.C'k/2

    # 4. dlam = -sum_t gamma^t q~_t . u_t  (regulariser gamma^t lam I)                      [M3]/[M4]
    tt = np.arange(1, T + 1, dtype=dt)                                  # t = 1..T                (T,)
    qu = np.einsum("bhti,bhti->bht", qt, u)                             # q~_t . u_t              (B,H,T)
    if gamma is None:
        dlam = -qu.sum(axis=(0, 2))                                     # (H,)
        return dq, dk, dv, dlam
    gpow = gamma[:, None] ** tt[None, :]                                # gamma^t                 (H,T)
    dlam = -(qu * gpow[None]).sum(axis=(0, 2))                          # (H,)

    # 5. dgamma: data part (lag-weighted accumulators) + regulariser part
    #    -sum_t t gamma^{t-1} lam q~_t . u_t   (docs/derivations/mesa.md)                    [M4]
    treg = lam[:, None] * tt[None, :] * gamma[:, None] ** (tt[None, :] - 1)  # lam t gamma^{t-1}   (H,T)
    dgamma = dgamma_data.sum(axis=0) - (qu * treg[None]).sum(axis=(0, 2))     # (H,)
    return dq, dk, dv, dlam, dgamma


# --------------------------------------------------------------------------------------------
# oracle
# --------------------------------------------------------------------------------------------

def mesa_direct(q, k, v, lam, gamma=None):
    """Independent oracle for [M1]/[M4]: explicit matrices and np.linalg.solve at every t.

    A_t = sum_{t'<=t} gamma^{t-t'} k_{t'} k_{t'}^T + gamma^t lam I,  S_t = sum_{t'<=t} gamma^{t-t'} v k^T,
    o_t = S_t A_t^{-1} q_t.  Each A_t, S_t is summed from scratch (no recursion shared with the
    forward). Always computes in float64; O(T^2 d^2 + T d^3) per (B, H).

    Inputs as ``mesa_forward`` (validated by the same checks). Returns out (B, H, T, dv), float64.
    """
    q, k, v, lam, gamma, _, _ = validate_mesa_inputs(q, k, v, lam, gamma)
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    lam = np.asarray(lam, dtype=np.float64)
    gamma = np.ones_like(lam) if gamma is None else np.asarray(gamma, dtype=np.float64)
    B, H, T, d = q.shape
    out = np.empty((B, H, T, v.shape[3]))
    eye = np.eye(d)
    for t in range(1, T + 1):
        w = gamma[:, None] ** (t - np.arange(1, t + 1))[None, :]        # gamma^{t-t'}            (H,t)
        kw = k[:, :, :t] * w[None, :, :, None]                          # (B,H,t,d)
        A = np.swapaxes(kw, -1, -2) @ k[:, :, :t] + (gamma ** t * lam)[None, :, None, None] * eye  # (B,H,d,d)
        S = np.swapaxes(v[:, :, :t] * w[None, :, :, None], -1, -2) @ k[:, :, :t]                # (B,H,dv,d)
        x = np.linalg.solve(A, q[:, :, t - 1][..., None])[..., 0]       # A_t^{-1} q_t            (B,H,d)
        out[:, :, t - 1] = np.einsum("bhij,bhj->bhi", S, x)             # (B,H,dv)
    return out
