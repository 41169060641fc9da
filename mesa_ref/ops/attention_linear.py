"""[L2] Causal linear self-attention (no normalisation, no scaling; official code).

Per batch b and head h:  out_t = sum_{t' <= t} v_{t'} (k_{t'} . q_t).

Two forms of the same sums, each a forward/backward pair:
    T x T form       ``linear_attention_forward`` / ``linear_attention_backward`` (the ops namespace's op):
                     the masked score matrix A[t, t'] = k_{t'} . q_t for t' <= t, then out = A v.
    recurrent form   ``linear_attention_recurrent_forward`` / ``linear_attention_recurrent_backward``:
                     the running state S_t = S_{t-1} + v_t k_t^T, out_t = S_t q_t; nothing T x T is formed.
                     The plain version of what mesa_fast/kernels/*/attention_linear.py compute (module-level
                     here, not part of the ops namespace).

Names: B batch, H heads, T time, d key/query size, d_v value size; dout = dL/dout, d<x> = dL/d<x>.
Time index: t is the array position, 0..T-1 (S_t includes token t).
Shapes: q, k, dq, dk (B, H, T, d); v, out, dout, dv (B, H, T, d_v); S_t, G_t (B, H, d_v, d).
"""
from __future__ import annotations

from typing import NamedTuple

from ._common import array_module, causal_mask, check_dout, check_qkv


class LinearAttentionCache(NamedTuple):
    q: object   # (B, H, T, d)
    k: object   # (B, H, T, d)
    v: object   # (B, H, T, d_v)
    A: object   # (B, H, T, T) masked scores A[t, t'] = k_{t'} . q_t for t' <= t, else 0


def linear_attention_forward(q, k, v):
    """[L2] out_t = sum_{t'<=t} v_{t'} (k_{t'} . q_t).  q, k (B,H,T,d), v (B,H,T,d_v) -> out (B,H,T,d_v)."""
    _, _, T, _, _ = check_qkv(q, k, v)
    xp = array_module(q)
    mask = causal_mask(T, xp)                             # (T, T)
    A = (q @ xp.swapaxes(k, -1, -2)) * mask               # (B,H,T,d) x (B,H,d,T) -> (B,H,T,T)
    out = A @ v                                           # (B,H,T,T) x (B,H,T,d_v) -> (B,H,T,d_v)
    return out, LinearAttentionCache(q, k, v, A)


def linear_attention_backward(dout, cache: LinearAttentionCache):
    """Returns (dq (B,H,T,d), dk (B,H,T,d), dv (B,H,T,d_v))."""
    q, k, v, A = cache
    check_dout(dout, v.shape, v.dtype)
    xp = array_module(q)
    T = q.shape[2]
    dA = (dout @ xp.swapaxes(v, -1, -2)) * causal_mask(T, xp)   # (B,H,T,T)
    dq = dA @ k                                                 # (B,H,T,d)
    dk = xp.swapaxes(dA, -1, -2) @ q                            # (B,H,T,d)
    dv = xp.swapaxes(A, -1, -2) @ dout                          # (B,H,T,d_v)
    return dq, dk, dv


# --------------------------------------------------------------------------------------------
# recurrent form
# --------------------------------------------------------------------------------------------

class LinearAttentionRecurrentCache(NamedTuple):
    """What ``linear_attention_recurrent_forward`` keeps: the inputs only (the state is rebuilt)."""
    q: object   # (B, H, T, d)
    k: object   # (B, H, T, d)
    v: object   # (B, H, T, d_v)


def linear_attention_recurrent_forward(q, k, v):
    """[L2] by its running state, O(d d_v) memory per sequence instead of the T x T scores.

    S_{-1} = 0;  S_t = S_{t-1} + v_t k_t^T;  out_t = S_t q_t = sum_{t'<=t} v_{t'} (k_{t'} . q_t)   [L2]
    Inputs: q, k (B, H, T, d); v (B, H, T, d_v). Returns (out (B, H, T, d_v), LinearAttentionRecurrentCache).
    """
    B, H, T, d, d_v = check_qkv(q, k, v)
    xp = array_module(q)
    S = xp.zeros((B, H, d_v, d), dtype=q.dtype)                           # S_{-1} = 0            (B,H,d_v,d)
    out = xp.empty((B, H, T, d_v), dtype=q.dtype)                         # (B,H,T,d_v)
    for t in range(T):
        S = S + v[:, :, t, :, None] * k[:, :, t, None, :]                 # [L2] S_t = S_{t-1} + v_t k_t^T (B,H,d_v,d)
        out[:, :, t] = xp.einsum("bhij,bhj->bhi", S, q[:, :, t])          # [L2] out_t = S_t q_t  (B,H,d_v)
    return out, LinearAttentionRecurrentCache(q, k, v)


def linear_attention_recurrent_backward(dout, cache: LinearAttentionRecurrentCache):
    """Backward of [L2] in the recurrent form: a forward sweep for dq, a reverse sweep for dk, dv.

    dq_t = S_t^T dout_t                          (S_t rebuilt going forward, as in the forward)
    G_T = 0;  G_t = G_{t+1} + dout_t q_t^T = sum_{t''>=t} dout_{t''} q_{t''}^T           (reverse sweep)
    dk_t = G_t^T v_t;   dv_t = G_t k_t                                                         [L2]
    (From out_{t''} = sum_{t<=t''} v_t (k_t . q_{t''}): dk_t = sum_{t''>=t} q_{t''} (v_t . dout_{t''}),
    dv_t = sum_{t''>=t} dout_{t''} (q_{t''} . k_t).)
    Inputs: dout (B, H, T, d_v) in the forward's dtype; cache from ``linear_attention_recurrent_forward``.
    Returns (dq (B, H, T, d), dk (B, H, T, d), dv (B, H, T, d_v)).
    """
    if not isinstance(cache, LinearAttentionRecurrentCache):
        raise ValueError("cache: expected a LinearAttentionRecurrentCache from linear_attention_recurrent_forward, "
                         f"got {type(cache).__name__}")
    q, k, v = cache
    B, H, T, d = q.shape
    d_v = v.shape[3]
    check_dout(dout, (B, H, T, d_v), q.dtype)
    xp = array_module(q)
    if array_module(dout) is not xp:
        raise ValueError(f"dout: expected a {xp.__name__} array like the forward's inputs")
    dq = xp.empty_like(q)                                                 # (B,H,T,d)
    dk = xp.empty_like(k)                                                 # (B,H,T,d)
    dv = xp.empty_like(v)                                                 # (B,H,T,d_v)

    # forward sweep: dq_t = S_t^T dout_t
    S = xp.zeros((B, H, d_v, d), dtype=q.dtype)                           # S_{-1} = 0            (B,H,d_v,d)
    for t in range(T):
        S = S + v[:, :, t, :, None] * k[:, :, t, None, :]                 # [L2] S_t = S_{t-1} + v_t k_t^T (B,H,d_v,d)
        dq[:, :, t] = xp.einsum("bhij,bhi->bhj", S, dout[:, :, t])        # [L2] dq_t = S_t^T dout_t (B,H,d)

    # reverse sweep: G_t = sum_{t''>=t} dout_{t''} q_{t''}^T
    G = xp.zeros((B, H, d_v, d), dtype=q.dtype)                           # G_T = 0               (B,H,d_v,d)
    for t in range(T - 1, -1, -1):
        G = G + dout[:, :, t, :, None] * q[:, :, t, None, :]          # [L2] G_t = G_{t+1} + dout_t q_t^T (B,H,d_v,d)
        dk[:, :, t] = xp.einsum("bhij,bhi->bhj", G, v[:, :, t])           # [L2] dk_t = G_t^T v_t (B,H,d)
        dv[:, :, t] = xp.einsum("bhij,bhj->bhi", G, k[:, :, t])           # [L2] dv_t = G_t k_t   (B,H,d_v)
    return dq, dk, dv
