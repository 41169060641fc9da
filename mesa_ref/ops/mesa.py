"""The mesa-layer, NumPy reference (docs/math.md: [M1]-[M3], and the forgetting factor [M4]).

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers" (arXiv 2309.05858).
Per head, at every time t the layer solves a ridge regression of the values on the keys seen so far
and applies the solution to the query [M1]:

    o_t = S_t R_t q_t,   S_t = sum_{t'<=t} v_{t'} k_{t'}^T,   R_t = (sum_{t'<=t} k_{t'} k_{t'}^T + lam I)^{-1}

This file is the reference people audit line by line. Read top to bottom it is the paper's layer: the
forward is the Sherman-Morrison recursion [M2] (``mesa_forward``), the backward the closed-form
reverse scan [M3] (``mesa_backward``). Both loop over t and are vectorised over (B, H).

The forgetting factor [M4] (gamma in (0, 1] per head; an extension the paper names as future work)
weights the data by gamma^{t-t'} and the regulariser by gamma^t:

    S_t = gamma S_{t-1} + v_t k_t^T,   R_t = (sum_{t'<=t} gamma^{t-t'} k_{t'} k_{t'}^T + gamma^t lam I)^{-1}

It is an addition kept apart: the functions in the section "forgetting factor [M4]" at the end of the
file (derivation: docs/derivations/mesa.md). ``mesa_forward`` takes its two [M4] lines when gamma is
given and ``mesa_backward`` hands over to ``_mesa_backward_gamma``. Multiplying or dividing by 1 is
exact, so gamma = 1 through the [M4] code gives the [M2]/[M3] numbers bit for bit (tested).

Names (one scheme throughout):
    sizes       B batch, H heads, T time (tokens), d key/query size, d_v value size (usually d).
    gradients   d<x> = dL/d<x>: dq, dk, dv, dlam, dgamma. dout = dL/do (docs/math.md's g_t),
                dqt = dL/dq~ (docs/math.md's dq~_t).
    per token   x_t = x[:, :, t-1]: q_t, k_t, v_t, qt_t (= q~_t), u_t, dout_t.
    gamma       the forgetting factor [M4], never abbreviated.
    D, C        [M3]'s reverse-scan accumulators D_t, C_t; D_lag, C_lag their lag-weighted [M4]
                partners D'_t, C'_t (dgamma only).
    ckpt_every  the "checkpoint" block length (docs/math.md [M3]'s "every C steps"; the public keyword and
                cache field are ``checkpoint_every``). Not the accumulator C.
Shapes:
    q, k, qt, u, dq, dk, dqt: (B, H, T, d)   v, out, dout, dv: (B, H, T, d_v)   lam, gamma: (H,)
    R_t: (B, H, d, d) (symmetric)   S_t: (B, H, d_v, d)   D_t: (B, H, d, d_v)   C_t: (B, H, d, d)
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
from functools import partial
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

    q, k:     (B, H, T, d)    the inputs (references, not copies: do not modify them in place).
    v:        (B, H, T, d_v)  the input values.
    lam:      (H,)            ridge parameter, cast to q's dtype (a private copy).
    gamma:    (H,) or None    forgetting factor in (0, 1], cast to q's dtype (private copy); None = [M2].
    qt:       (B, H, T, d)    q~_t = R_t q_t [M2], needed by every backward.
    backward: str             "store" | "checkpoint" | "downdate".
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
    shapes (q, k: (B, H, T, d); v: (B, H, T, d_v)), non-finite values, mixed dtypes or devices;
    lam not a finite float array of shape (H,) with every entry > 0; gamma (when given) not of
    shape (H,) with entries in (0, 1]; backward not one of "store", "checkpoint", "downdate";
    checkpoint_every not a positive int (or None).

    lam and gamma are cast to q's dtype (copies); the range checks run after the cast, so a lam
    that underflows to 0 in float32 is rejected.

    Returns (q, k, v, lam, gamma, backward, checkpoint_every) where checkpoint_every is resolved
    to ceil(sqrt(T)) when backward == "checkpoint" and it was None, and is None for the other
    strategies (where it is validated but unused).
    """
    B, H, T, d, d_v = check_qkv(q, k, v)
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
# forward [M2]
# --------------------------------------------------------------------------------------------

def _sm_update(R, k_t):
    """One step of the Sherman-Morrison recursion [M2]: R_t from R_{t-1} (B, H, d, d) and k_t (B, H, d).

    c_t = R_{t-1} k_t;  R_t = R_{t-1} - c_t c_t^T / (1 + k_t . c_t)
    """
    c = np.einsum("bhij,bhj->bhi", R, k_t)                             # [M2] c_t = R_{t-1} k_t   (B,H,d)
    denom = 1 + np.einsum("bhi,bhi->bh", k_t, c)                       # [M2] 1 + k_t . c_t       (B,H)
    return R - c[..., :, None] * c[..., None, :] / denom[..., None, None]  # [M2] R_t             (B,H,d,d)


def mesa_forward(q, k, v, lam, *, gamma=None, backward="store", checkpoint_every=None):
    """Mesa-layer forward by the Sherman-Morrison recursion [M2] (forgetting factor [M4] when gamma is given).

    R_0 = I/lam, S_0 = 0;  c_t = R_{t-1} k_t;  R_t = R_{t-1} - c_t c_t^T / (1 + k_t . c_t);
    S_t = S_{t-1} + v_t k_t^T;  q~_t = R_t q_t;  o_t = S_t q~_t                                  [M2]
    With gamma, R_t and S_t follow [M4] instead (``_sm_update_gamma``; S_t = gamma S_{t-1} + v_t k_t^T).

    Inputs:
        q, k: (B, H, T, d); v: (B, H, T, d_v); lam: (H,) > 0; gamma: (H,) in (0, 1] or None.
        backward: "store" | "checkpoint" | "downdate" (how the backward gets R_t; see module doc).
        checkpoint_every: block length for "checkpoint" (default ceil(sqrt(T))).
    Returns (out, cache): out (B, H, T, d_v) in q's dtype; cache a ``MesaCache``.
    """
    q, k, v, lam, gamma, backward, ckpt_every = validate_mesa_inputs(q, k, v, lam, gamma, backward,
                                                                      checkpoint_every)
    B, H, T, d = q.shape
    d_v = v.shape[3]
    dt = q.dtype

    R = np.broadcast_to(np.eye(d, dtype=dt) / lam[:, None, None], (B, H, d, d)).copy()  # [M2] R_0 = I/lam (B,H,d,d)
    S = np.zeros((B, H, d_v, d), dtype=dt)                             # [M2] S_0 = 0             (B,H,d_v,d)
    qt = np.empty((B, H, T, d), dtype=dt)                              # q~_t                     (B,H,T,d)
    out = np.empty((B, H, T, d_v), dtype=dt)                           # o_t                      (B,H,T,d_v)

    if backward == "store":
        R_times = tuple(range(1, T + 1))
    elif backward == "checkpoint":
        R_times = tuple(range(0, T, ckpt_every))
    else:
        R_times = (T,)
    R_saved = np.empty((B, H, len(R_times), d, d), dtype=dt)           # (B,H,n,d,d)
    slot = {t: j for j, t in enumerate(R_times)}

    for t in range(1, T + 1):                                          # token t at position t-1
        if t - 1 in slot and backward == "checkpoint":
            R_saved[:, :, slot[t - 1]] = R                             # checkpoint R_{t-1} (block start)
        k_t, v_t, q_t = k[:, :, t - 1], v[:, :, t - 1], q[:, :, t - 1]  # (B,H,d), (B,H,d_v), (B,H,d)
        if gamma is None:                                              # the paper's layer
            R = _sm_update(R, k_t)                                     # [M2] R_t                 (B,H,d,d)
            S = S + v_t[..., :, None] * k_t[..., None, :]              # [M2] S_t = S_{t-1} + v_t k_t^T (B,H,d_v,d)
        else:                                                          # forgetting factor
            R = _sm_update_gamma(R, k_t, gamma)                        # [M4] R_t                 (B,H,d,d)
            S = gamma[None, :, None, None] * S + v_t[..., :, None] * k_t[..., None, :]  # [M4] S_t     (B,H,d_v,d)
        qt[:, :, t - 1] = np.einsum("bhij,bhj->bhi", R, q_t)           # [M2] q~_t = R_t q_t      (B,H,d)
        out[:, :, t - 1] = np.einsum("bhij,bhj->bhi", S, qt[:, :, t - 1])  # [M2] o_t = S_t q~_t  (B,H,d_v)
        if backward == "store" or (backward == "downdate" and t == T):
            R_saved[:, :, slot[t]] = R

    cache = MesaCache(q=q, k=k, v=v, lam=lam, gamma=gamma, qt=qt, backward=backward,
                      checkpoint_every=ckpt_every, R_saved=R_saved, R_times=R_times)
    return out, cache


# --------------------------------------------------------------------------------------------
# backward [M3]
# --------------------------------------------------------------------------------------------

def _sm_downdate(R, k_t):
    """Inverse of ``_sm_update``: R_{t-1} from R_t and k_t (the "downdate" strategy of [M3]).

    A_t = A_{t-1} + k_t k_t^T  =>  R_{t-1} = R_t + (R_t k_t)(R_t k_t)^T / (1 - k_t . R_t k_t).
    The denominator 1 - k_t . R_t k_t = 1 / (1 + k_t . R_{t-1} k_t) can be tiny: precision is lost.
    """
    c = np.einsum("bhij,bhj->bhi", R, k_t)                             # [M3] R_t k_t             (B,H,d)
    denom = 1 - np.einsum("bhi,bhi->bh", k_t, c)                       # [M3] 1 - k_t . R_t k_t   (B,H)
    return R + c[..., :, None] * c[..., None, :] / denom[..., None, None]  # [M3] R_{t-1}         (B,H,d,d)


def _apply_R(cache, dqt, update, downdate):
    """u_t = R_t dq~_t for every t [M3], with R_t from the strategy chosen at forward time.

    dqt: (B, H, T, d). update(R, k_t): R_{t-1} -> R_t, the forward's own step (``_sm_update`` for
    [M2], ``_sm_update_gamma`` for [M4]); downdate(R, k_t): its inverse R_t -> R_{t-1}.
    Returns u: (B, H, T, d).
    """
    T = dqt.shape[2]
    if cache.backward == "store":                                      # every R_t in the cache
        return np.einsum("bhtij,bhtj->bhti", cache.R_saved, dqt)       # [M3] u_t = R_t dq~_t     (B,H,T,d)
    u = np.empty_like(dqt)                                             # (B,H,T,d)
    if cache.backward == "checkpoint":                                 # re-run the forward from each checkpoint
        ckpt_every = cache.checkpoint_every
        for j, t0 in enumerate(cache.R_times):                         # block t0+1 .. min(t0+C, T)
            R = cache.R_saved[:, :, j].copy()                          # R_{t0}                   (B,H,d,d)
            for t in range(t0 + 1, min(t0 + ckpt_every, T) + 1):
                R = update(R, cache.k[:, :, t - 1])                    # [M2] R_t, as in forward  (B,H,d,d)
                u[:, :, t - 1] = np.einsum("bhij,bhj->bhi", R, dqt[:, :, t - 1])  # [M3] u_t = R_t dq~_t (B,H,d)
        return u
    R = cache.R_saved[:, :, 0].copy()                                  # "downdate": R_T          (B,H,d,d)
    for t in range(T, 0, -1):
        u[:, :, t - 1] = np.einsum("bhij,bhj->bhi", R, dqt[:, :, t - 1])  # [M3] u_t = R_t dq~_t  (B,H,d)
        if t > 1:
            R = downdate(R, cache.k[:, :, t - 1])                      # [M3] R_{t-1}             (B,H,d,d)
    return u


def mesa_backward(dout, cache):
    """Mesa-layer backward by the closed-form reverse scan [M3] (gamma: ``_mesa_backward_gamma``, [M4]).

    With dout_t = dL/do_t (docs/math.md's g_t) and q~_t from the forward:
        dq~_t = S_t^T dout_t = sum_{t'<=t} k_{t'} (v_{t'} . dout_t)       (forward sweep)
        u_t   = R_t dq~_t,   dq_t = u_t
        D_t   = sum_{t''>=t} q~_{t''} dout_{t''}^T                (d, d_v)   reverse scan
        C_t   = sum_{t''>=t} (u_{t''} q~_{t''}^T + q~_{t''} u_{t''}^T)  (d, d)
        dv_t  = D_t^T k_t,   dk_t = D_t v_t - C_t k_t
        dlam  = - sum_t q~_t . u_t                         (summed over batch -> (H,))        [M3]

    Inputs: dout (B, H, T, d_v) in the forward's dtype; cache from ``mesa_forward`` (not mutated).
    Returns (dq, dk, dv, dlam), plus dgamma when the forward was given gamma;
        dq, dk: (B, H, T, d); dv: (B, H, T, d_v); dlam, dgamma: (H,). All in q's dtype.
    """
    if not isinstance(cache, MesaCache):
        raise ValueError(f"cache: expected a MesaCache from mesa_forward, got {type(cache).__name__}")
    q, k, v, qt = cache.q, cache.k, cache.v, cache.qt
    B, H, T, d = q.shape
    d_v = v.shape[3]
    dt = q.dtype
    check_dout(dout, (B, H, T, d_v), dt)
    if cache.gamma is not None:
        return _mesa_backward_gamma(dout, cache)                       # [M4], end of this file

    # 1. forward sweep: dq~_t = S_t^T dout_t (S_t rebuilt, never stored)
    dqt = np.empty((B, H, T, d), dtype=dt)                             # dq~_t                    (B,H,T,d)
    S = np.zeros((B, H, d_v, d), dtype=dt)                             # S_0 = 0                  (B,H,d_v,d)
    for t in range(1, T + 1):
        S = S + v[:, :, t - 1, :, None] * k[:, :, t - 1, None, :]      # [M2] S_t = S_{t-1} + v_t k_t^T (B,H,d_v,d)
        dqt[:, :, t - 1] = np.einsum("bhij,bhi->bhj", S, dout[:, :, t - 1])  # [M3] dq~_t = S_t^T dout_t (B,H,d)

    # 2. u_t = R_t dq~_t;  dq_t = u_t
    u = _apply_R(cache, dqt, _sm_update, _sm_downdate)                 # [M3] u_t = R_t dq~_t     (B,H,T,d)
    dq = u                                                             # [M3] dq_t = u_t          (B,H,T,d)

    # 3. reverse scan with the accumulators D_t, C_t
    dk = np.empty_like(k)                                              # (B,H,T,d)
    dv = np.empty_like(v)                                              # (B,H,T,d_v)
    D = np.zeros((B, H, d, d_v), dtype=dt)                             # D_{T+1} = 0              (B,H,d,d_v)
    C = np.zeros((B, H, d, d), dtype=dt)                               # C_{T+1} = 0              (B,H,d,d)
    for t in range(T, 0, -1):
        qt_t, u_t, dout_t = qt[:, :, t - 1], u[:, :, t - 1], dout[:, :, t - 1]  # (B,H,d), (B,H,d), (B,H,d_v)
        k_t, v_t = k[:, :, t - 1], v[:, :, t - 1]                      # (B,H,d), (B,H,d_v)
        D = D + qt_t[..., :, None] * dout_t[..., None, :]              # [M3] D_t = D_{t+1} + q~_t dout_t^T (B,H,d,d_v)
        C = C + (u_t[..., :, None] * qt_t[..., None, :]
                 + qt_t[..., :, None] * u_t[..., None, :])             # [M3] C_t = C_{t+1} + u q~^T + q~ u^T (B,H,d,d)
        dv[:, :, t - 1] = np.einsum("bhij,bhi->bhj", D, k_t)           # [M3] dv_t = D_t^T k_t    (B,H,d_v)
        dk[:, :, t - 1] = (np.einsum("bhij,bhj->bhi", D, v_t)
                           - np.einsum("bhij,bhj->bhi", C, k_t))       # [M3] dk_t = D_t v_t - C_t k_t (B,H,d)

    # 4. dlam: the regulariser lam I enters every A_t = R_t^{-1}
    qu = np.einsum("bhti,bhti->bht", qt, u)                            # q~_t . u_t               (B,H,T)
    dlam = -qu.sum(axis=(0, 2))                                        # [M3] dlam = -sum q~.u    (H,)
    return dq, dk, dv, dlam


# --------------------------------------------------------------------------------------------
# forgetting factor [M4]: gamma^{t-t'} on the data, gamma^t on the regulariser
# (docs/math.md [M4]; derivation and the dgamma accumulators: docs/derivations/mesa.md sections 2-4)
# --------------------------------------------------------------------------------------------

def _sm_update_gamma(R, k_t, gamma):
    """One step of [M4]: R_t from R_{t-1} (B, H, d, d), k_t (B, H, d) and gamma (H,).

    c_t = R_{t-1} k_t;  R_t = (1/gamma) [R_{t-1} - c_t c_t^T / (gamma + k_t . c_t)]
    """
    c = np.einsum("bhij,bhj->bhi", R, k_t)                             # [M2] c_t = R_{t-1} k_t   (B,H,d)
    denom = gamma[None, :] + np.einsum("bhi,bhi->bh", k_t, c)          # [M4] gamma + k_t . c_t   (B,H)
    R = R - c[..., :, None] * c[..., None, :] / denom[..., None, None]  # [M4] R_{t-1} - c c^T/(gamma + k.c)
    return R / gamma[None, :, None, None]                              # [M4] R_t                 (B,H,d,d)


def _sm_downdate_gamma(R, k_t, gamma):
    """Inverse of ``_sm_update_gamma``: R_{t-1} from R_t, k_t and gamma (the "downdate" strategy).

    A_t = gamma A_{t-1} + k_t k_t^T  =>  R_{t-1} = gamma [R_t + (R_t k_t)(R_t k_t)^T / (1 - k_t . R_t k_t)].
    The denominator 1 - k_t . R_t k_t = gamma / (gamma + k_t . R_{t-1} k_t) can be tiny: precision is lost.
    """
    c = np.einsum("bhij,bhj->bhi", R, k_t)                             # [M3] R_t k_t             (B,H,d)
    denom = 1 - np.einsum("bhi,bhi->bh", k_t, c)                       # [M3] 1 - k_t . R_t k_t   (B,H)
    R = R + c[..., :, None] * c[..., None, :] / denom[..., None, None]  # [M3] R_t + c c^T/(1 - k.c)  (B,H,d,d)
    return R * gamma[None, :, None, None]                              # [M4] R_{t-1}             (B,H,d,d)


def _mesa_backward_gamma(dout, cache):
    """[M3] with the forgetting factor [M4], plus dgamma (docs/derivations/mesa.md sections 3-4).

    The [M3] scan with weights gamma^{t''-t} in the sums and gamma^t on the regulariser:
        dq~_t = S_t^T dout_t,   S_t = gamma S_{t-1} + v_t k_t^T                  (forward sweep)
        u_t   = R_t dq~_t,   dq_t = u_t
        D_t   = gamma D_{t+1} + q~_t dout_t^T,   C_t = gamma C_{t+1} + u_t q~_t^T + q~_t u_t^T
        dv_t  = D_t^T k_t,   dk_t = D_t v_t - C_t k_t
        dlam  = - sum_t gamma^t q~_t . u_t
        dgamma = sum_t [k_t . D'_t v_t - k_t . C'_t k_t / 2 - lam t gamma^{t-1} q~_t . u_t]
                 with the lag-weighted D'_t = sum_{t''>t} (t''-t) gamma^{t''-t-1} q~_{t''} dout_{t''}^T
                 (= gamma D'_{t+1} + D_{t+1}) and C'_t likewise from C. In exact arithmetic this equals
                 -(1/(2 gamma)) sum_t t (k_t . dk_t + v_t . dv_t) (a rescaling identity, tested), but
                 that form cancels badly in float32 at large T; the lag form does not.

    Inputs: dout (B, H, T, d_v), already checked by ``mesa_backward``; cache with cache.gamma (H,).
    Returns (dq, dk, dv, dlam, dgamma): dq, dk (B, H, T, d); dv (B, H, T, d_v); dlam, dgamma (H,).
    """
    q, k, v, qt, lam, gamma = cache.q, cache.k, cache.v, cache.qt, cache.lam, cache.gamma
    B, H, T, d = q.shape
    d_v = v.shape[3]
    dt = q.dtype
    gamma_ = gamma[None, :, None, None]                                # gamma broadcast          (1,H,1,1)

    # 1. forward sweep: dq~_t = S_t^T dout_t
    dqt = np.empty((B, H, T, d), dtype=dt)                             # dq~_t                    (B,H,T,d)
    S = np.zeros((B, H, d_v, d), dtype=dt)                             # S_0 = 0                  (B,H,d_v,d)
    for t in range(1, T + 1):
        S = gamma_ * S + v[:, :, t - 1, :, None] * k[:, :, t - 1, None, :]  # [M4] S_t = gamma S_{t-1} + v_t k_t^T
        dqt[:, :, t - 1] = np.einsum("bhij,bhi->bhj", S, dout[:, :, t - 1])  # [M3] dq~_t = S_t^T dout_t (B,H,d)

    # 2. u_t = R_t dq~_t with the [M4] recursion;  dq_t = u_t
    u = _apply_R(cache, dqt, partial(_sm_update_gamma, gamma=gamma),
                 partial(_sm_downdate_gamma, gamma=gamma))             # [M3] u_t = R_t dq~_t     (B,H,T,d)
    dq = u                                                             # [M3] dq_t = u_t          (B,H,T,d)

    # 3. reverse scan: D_t, C_t decayed by gamma, and their lag-weighted sums D'_t, C'_t for dgamma
    dk = np.empty_like(k)                                              # (B,H,T,d)
    dv = np.empty_like(v)                                              # (B,H,T,d_v)
    D = np.zeros((B, H, d, d_v), dtype=dt)                             # D_{T+1} = 0              (B,H,d,d_v)
    C = np.zeros((B, H, d, d), dtype=dt)                               # C_{T+1} = 0              (B,H,d,d)
    D_lag = np.zeros_like(D)                                           # D'_{T+1} = 0             (B,H,d,d_v)
    C_lag = np.zeros_like(C)                                           # C'_{T+1} = 0             (B,H,d,d)
    dgamma_data = np.zeros((B, H), dtype=dt)                           # data part of dgamma      (B,H)
    for t in range(T, 0, -1):
        qt_t, u_t, dout_t = qt[:, :, t - 1], u[:, :, t - 1], dout[:, :, t - 1]  # (B,H,d), (B,H,d), (B,H,d_v)
        k_t, v_t = k[:, :, t - 1], v[:, :, t - 1]                      # (B,H,d), (B,H,d_v)
        D_lag = gamma_ * D_lag + D                                     # [M4] D'_t = gamma D'_{t+1} + D_{t+1}
        C_lag = gamma_ * C_lag + C                                     # [M4] C'_t = gamma C'_{t+1} + C_{t+1}
        D = gamma_ * D + qt_t[..., :, None] * dout_t[..., None, :]     # [M4] D_t = gamma D_{t+1} + q~_t dout_t^T
        C = gamma_ * C + (u_t[..., :, None] * qt_t[..., None, :]
                          + qt_t[..., :, None] * u_t[..., None, :])    # [M4] C_t = gamma C_{t+1} + u q~^T + q~ u^T
        dv[:, :, t - 1] = np.einsum("bhij,bhi->bhj", D, k_t)           # [M3] dv_t = D_t^T k_t    (B,H,d_v)
        dk[:, :, t - 1] = (np.einsum("bhij,bhj->bhi", D, v_t)
                           - np.einsum("bhij,bhj->bhi", C, k_t))       # [M3] dk_t = D_t v_t - C_t k_t (B,H,d)
        dgamma_data += (np.einsum("bhi,bhij,bhj->bh", k_t, D_lag, v_t)
                        - 0.5 * np.einsum("bhi,bhij,bhj->bh", k_t, C_lag, k_t))  # [M4] k.D'v - k.C'k/2 (B,H)

    # 4. dlam = -sum_t gamma^t q~_t . u_t  (regulariser gamma^t lam I)
    tt = np.arange(1, T + 1, dtype=dt)                                 # t = 1..T                 (T,)
    qu = np.einsum("bhti,bhti->bht", qt, u)                            # q~_t . u_t               (B,H,T)
    gamma_pow = gamma[:, None] ** tt[None, :]                          # gamma^t                  (H,T)
    dlam = -(qu * gamma_pow[None]).sum(axis=(0, 2))                    # [M4] dlam                (H,)

    # 5. dgamma: data part (lag-weighted accumulators) + regulariser part -sum_t lam t gamma^{t-1} q~_t . u_t
    reg_weight = lam[:, None] * tt[None, :] * gamma[:, None] ** (tt[None, :] - 1)  # lam t gamma^{t-1} (H,T)
    dgamma = dgamma_data.sum(axis=0) - (qu * reg_weight[None]).sum(axis=(0, 2))  # [M4] dgamma      (H,)
    return dq, dk, dv, dlam, dgamma


# --------------------------------------------------------------------------------------------
# oracle
# --------------------------------------------------------------------------------------------

def mesa_direct(q, k, v, lam, gamma=None):
    """Independent oracle for [M1]/[M4]: explicit matrices and np.linalg.solve at every t.

    A_t = sum_{t'<=t} gamma^{t-t'} k_{t'} k_{t'}^T + gamma^t lam I,  S_t = sum_{t'<=t} gamma^{t-t'} v k^T,
    o_t = S_t A_t^{-1} q_t.  Each A_t, S_t is summed from scratch (no recursion shared with the
    forward). Always computes in float64; O(T^2 d^2 + T d^3) per (B, H).

    Inputs as ``mesa_forward`` (validated by the same checks). Returns out (B, H, T, d_v), float64.
    """
    q, k, v, lam, gamma, _, _ = validate_mesa_inputs(q, k, v, lam, gamma)
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    lam = np.asarray(lam, dtype=np.float64)
    gamma = np.ones_like(lam) if gamma is None else np.asarray(gamma, dtype=np.float64)
    B, H, T, d = q.shape
    out = np.empty((B, H, T, v.shape[3]))                               # (B,H,T,d_v)
    eye = np.eye(d)
    for t in range(1, T + 1):
        w = gamma[:, None] ** (t - np.arange(1, t + 1))[None, :]        # gamma^{t-t'}            (H,t)
        kw = k[:, :, :t] * w[None, :, :, None]                          # (B,H,t,d)
        A = np.swapaxes(kw, -1, -2) @ k[:, :, :t] + (gamma ** t * lam)[None, :, None, None] * eye  # (B,H,d,d)
        S = np.swapaxes(v[:, :, :t] * w[None, :, :, None], -1, -2) @ k[:, :, :t]                # (B,H,d_v,d)
        x = np.linalg.solve(A, q[:, :, t - 1][..., None])[..., 0]       # A_t^{-1} q_t            (B,H,d)
        out[:, :, t - 1] = np.einsum("bhij,bhj->bhi", S, x)             # o_t = S_t A_t^{-1} q_t  (B,H,d_v)
    return out
