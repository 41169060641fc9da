"""The head layout ops (no arithmetic) for the fast kernels: views instead of copies; ``mesa_ref.ops.heads``'s
signatures.

split_qkv and split_heads return strided views of the model's buffer (NumPy) and merge_qkv is free for the gradients
the fast attention backwards return; CuPy input goes to the reference's copies. merge_heads is the reference's own
(a reshape of the merged-layout outputs the attention kernels write).
"""
from __future__ import annotations

import numpy as np

from mesa_ref.ops import heads as _ref_heads

from ._common import on_numpy

__all__ = ["split_qkv", "split_heads", "merge_qkv"]


# The reference copies every split into C-contiguous (B, H, T, d) arrays for its batched matmuls. The
# Numba kernels read any strides (``kernels/simd/attention_lanes.py``: ``_strided``), so here a split is a view of
# the model's buffer, and the attention backwards write dq, dk, dv into one buffer in the fused QKV layout, so the
# merge before the QKV product's backward is a reshape. Other kernels (the mesa-layer's) copy
# strided input themselves where they need contiguous rows.

def split_qkv(qkv, heads):
    """[B, T, 3*H*d] -> q, k, v, each [B, H, T, d]: strided views of ``qkv`` (NumPy) or the reference's copies."""
    if not on_numpy(qkv):
        return _ref_heads.split_qkv(qkv, heads)
    x = _ref_heads.qkv_view(qkv, heads)                                     # [3,B,H,T,d] view
    return x[0], x[1], x[2]


def split_heads(x, heads):
    """[B, T, H*d] -> [B, H, T, d]: a strided view of ``x`` (NumPy) or the reference's copy."""
    if not on_numpy(x):
        return _ref_heads.split_heads(x, heads)
    return _ref_heads.heads_view(x, heads)


def _same_view(a, b):
    return (a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def merge_qkv(dq, dk, dv):
    """3 x [B, H, T, d] -> [B, T, 3*H*d].  No copy when the three are the views ``kernels.buffers.qkv_empty`` makes
    (what the fast attention backwards return); otherwise the reference's copy."""
    base = dq.base
    if (isinstance(dq, np.ndarray) and isinstance(base, np.ndarray) and dk.base is base and dv.base is base
            and dq.ndim == 4 and base.flags.c_contiguous):
        B, H, T, d = dq.shape
        if base.size == 3 * dq.size:
            full = base.reshape(B, T, 3, H, d)
            if all(_same_view(g, full[:, :, j].transpose(0, 2, 1, 3)) for j, g in enumerate((dq, dk, dv))):
                return full.reshape(B, T, 3 * H * d)
    return _ref_heads.merge_qkv(dq, dk, dv)
