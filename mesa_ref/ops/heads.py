"""Head layout: moving between the model's fused (B, T, ...) activations and the attention ops' (B, H, T, d).

These are pure data movement (no arithmetic, no gradient of their own: the backward of a split is the
matching merge). They live in the ops namespace, not in the model, so that a backend can choose how
much copying they cost: here every split returns C-contiguous arrays (what batched matmuls want);
``mesa_fast.ops`` returns strided views and kernels that read them in place.

Shapes: B batch, T time, H heads, d width per head.
    split_qkv(qkv (B, T, 3*H*d), H)   -> q, k, v, each (B, H, T, d)     (columns: all q heads, all k, all v)
    merge_qkv(dq, dk, dv (B, H, T, d)) -> (B, T, 3*H*d)                    the layout split_qkv reads
    split_heads(x (B, T, H*d), H)     -> (B, H, T, d)
    merge_heads(x (B, H, T, d))       -> (B, T, H*d)
"""
from __future__ import annotations

from ._common import array_module


def _check_width(name, x, parts):
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"{name}: expected a rank-3 array (B, T, width), got shape {getattr(x, 'shape', type(x))}")
    if parts < 1 or x.shape[2] % parts:
        raise ValueError(f"{name}: width {x.shape[2]} is not a multiple of {parts}")


def qkv_view(qkv, heads):
    """[B, T, 3*H*d] -> a [3, B, H, T, d] view of it (checked; no copy)."""
    _check_width("qkv", qkv, 3 * heads)
    B, T, HD3 = qkv.shape
    return qkv.reshape(B, T, 3, heads, HD3 // (3 * heads)).transpose(2, 0, 3, 1, 4)


def heads_view(x, heads):
    """[B, T, H*d] -> a [B, H, T, d] view of it (checked; no copy)."""
    _check_width("x", x, heads)
    B, T, HD = x.shape
    return x.reshape(B, T, heads, HD // heads).transpose(0, 2, 1, 3)


def split_qkv(qkv, heads):
    """[B, T, 3*H*d] -> q, k, v, each [B, H, T, d] (C-contiguous copies)."""
    x = array_module(qkv).ascontiguousarray(qkv_view(qkv, heads))
    return x[0], x[1], x[2]


def merge_qkv(dq, dk, dv):
    """3 x [B, H, T, d] -> [B, T, 3*H*d], the layout split_qkv reads."""
    if not (dq.shape == dk.shape == dv.shape and dq.ndim == 4):
        raise ValueError(f"dq, dk, dv: expected three (B, H, T, d) arrays of one shape, got "
                         f"{tuple(dq.shape)}, {tuple(dk.shape)}, {tuple(dv.shape)}")
    xp = array_module(dq)
    B, H, T, d = dq.shape
    out = xp.empty((B, T, 3, H, d), dtype=dq.dtype)
    for j, g in enumerate((dq, dk, dv)):
        out[:, :, j] = g.transpose(0, 2, 1, 3)
    return out.reshape(B, T, 3 * H * d)


def split_heads(x, heads):
    """[B, T, H*d] -> [B, H, T, d] (C-contiguous)."""
    return array_module(x).ascontiguousarray(heads_view(x, heads))


def merge_heads(x):
    """[B, H, T, d] -> [B, T, H*d] (C-contiguous; no copy when x's memory is already laid out (B, T, H, d))."""
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"x: expected a rank-4 array (B, H, T, d), got shape {getattr(x, 'shape', type(x))}")
    B, H, T, d = x.shape
    return array_module(x).ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(B, T, H * d)
