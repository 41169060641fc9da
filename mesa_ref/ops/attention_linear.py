"""[L2] Causal linear self-attention (no normalisation, no scaling; official code).

Per batch b and head h:  out_t = sum_{t' <= t} v_{t'} (k_{t'} . q_t).
Shapes: q, k (B, H, T, d); v (B, H, T, dv); out (B, H, T, dv).
"""
from __future__ import annotations

from typing import NamedTuple

from ._common import array_module, causal_mask, check_dout, check_qkv


class LinearAttentionCache(NamedTuple):
    q: object   # (B, H, T, d)
    k: object   # (B, H, T, d)
    v: object   # (B, H, T, dv)
    A: object   # (B, H, T, T) masked scores A[t, t'] = k_{t'} . q_t for t' <= t, else 0


def linear_attention_forward(q, k, v):
    """[L2] out_t = sum_{t'<=t} v_{t'} (k_{t'} . q_t).  q, k (B,H,T,d), v (B,H,T,dv) -> out (B,H,T,dv)."""
    _, _, T, _, _ = check_qkv(q, k, v)
    xp = array_module(q)
    mask = causal_mask(T, xp)                             # (T, T)
    A = (q @ xp.swapaxes(k, -1, -2)) * mask               # (B,H,T,d) x (B,H,d,T) -> (B,H,T,T)
    out = A @ v                                           # (B,H,T,T) x (B,H,T,dv) -> (B,H,T,dv)
    return out, LinearAttentionCache(q, k, v, A)


def linear_attention_backward(dout, cache: LinearAttentionCache):
    """Returns (dq (B,H,T,d), dk (B,H,T,d), dv (B,H,T,dv))."""
    q, k, v, A = cache
    check_dout(dout, v.shape, v.dtype)
    xp = array_module(q)
    T = q.shape[2]
    dA = (dout @ xp.swapaxes(v, -1, -2)) * causal_mask(T, xp)   # (B,H,T,T)
    dq = dA @ k                                                 # (B,H,T,d)
    dk = xp.swapaxes(dA, -1, -2) @ q                            # (B,H,T,d)
    dv = xp.swapaxes(A, -1, -2) @ dout                          # (B,H,T,dv)
    return dq, dk, dv
