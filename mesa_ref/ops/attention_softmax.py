"""[L3] Causal softmax self-attention.

a_t = sum_{t' <= t} v_{t'} softmax_{t'}(k_{t'} . q_t * scale), scale = 1/sqrt(d) by default.
Numerically stable (row max subtracted), masked so position t sees t' <= t only.
Shapes: q, k (B, H, T, d); v (B, H, T, dv); out (B, H, T, dv); attention map P (B, H, T, T).
"""
from __future__ import annotations

import math
from typing import NamedTuple

from ._common import array_module, causal_mask, check_dout, check_qkv


class SoftmaxAttentionCache(NamedTuple):
    q: object      # (B, H, T, d)
    k: object      # (B, H, T, d)
    v: object      # (B, H, T, dv)
    P: object      # (B, H, T, T) attention weights, rows sum to 1, zero above the diagonal
    scale: float


def softmax_attention_forward(q, k, v, *, scale=None):
    """[L3] out = softmax(mask(q k^T * scale)) v.  q, k (B,H,T,d), v (B,H,T,dv) -> out (B,H,T,dv)."""
    _, _, T, d, _ = check_qkv(q, k, v)
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a positive finite float, got {scale!r}")
    xp = array_module(q)
    mask = causal_mask(T, xp)                                   # (T, T)
    S = (q @ xp.swapaxes(k, -1, -2)) * q.dtype.type(scale)      # (B,H,T,T)
    S = xp.where(mask, S, -xp.inf)
    S = S - S.max(axis=-1, keepdims=True)                       # the diagonal is always unmasked
    E = xp.exp(S)
    P = E / E.sum(axis=-1, keepdims=True)                       # (B,H,T,T)
    out = P @ v                                                 # (B,H,T,dv)
    return out, SoftmaxAttentionCache(q, k, v, P, float(scale))


def softmax_attention_backward(dout, cache: SoftmaxAttentionCache):
    """Returns (dq (B,H,T,d), dk (B,H,T,d), dv (B,H,T,dv))."""
    q, k, v, P, scale = cache
    check_dout(dout, v.shape, v.dtype)
    xp = array_module(q)
    dv = xp.swapaxes(P, -1, -2) @ dout                          # (B,H,T,dv)
    dP = dout @ xp.swapaxes(v, -1, -2)                          # (B,H,T,T)
    dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))        # softmax Jacobian; 0 where masked
    dS = dS * q.dtype.type(scale)
    dq = dS @ k                                                 # (B,H,T,d)
    dk = xp.swapaxes(dS, -1, -2) @ q                            # (B,H,T,d)
    return dq, dk, dv
