"""Causal softmax attention [L3] on the fast kernels: the ``mesa_ref.ops.attention_softmax`` op, same signatures.

NumPy input runs the Numba kernels that ``mesa_fast.kernels.kernel_module("softmax")`` picks (SIMD by default:
``kernels/simd/attention_softmax.py``; plain: ``kernels/plain/attention_softmax.py``), whatever
``mesa_fast.set_backend`` says (there is no CUDA twin); CuPy input, and a reference cache, go to the reference op.
Outputs are laid out as linear attention's (``attention_linear.py``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from mesa_ref.ops import attention_softmax as _ref_sm
from mesa_ref.ops._common import check_dout, check_qkv

from ..kernels import kernel_module
from ._common import check_numpy_dout, on_numpy

__all__ = ["SoftmaxAttentionFastCache", "softmax_attention_forward", "softmax_attention_backward"]


# The cache keeps the attention maps as the kernels lay them out (the SIMD kernels: one (T, T, 16) block per
# group of 16 sequences, flat; the plain kernels: the reference's (B, H, T, T) map), so the backward reads them
# with no transposition; ``cache.P`` makes the reference's map when an analysis asks for it (e.g. the copy-layer
# experiment).

class SoftmaxAttentionFastCache(NamedTuple):
    q: np.ndarray        # (B, H, T, d)
    k: np.ndarray        # (B, H, T, d)
    v: np.ndarray        # (B, H, T, dv)
    lanes: np.ndarray    # the attention maps as the kernels lay them out (``softmax_forward`` of simd / plain)
    scale: float

    @property
    def P(self):
        """(B, H, T, T) attention weights, rows sum to 1, zero above the diagonal (the reference cache's P)."""
        B, H, T, _ = self.q.shape
        if self.lanes.ndim == 4:         # the plain kernels' map is already the reference's
            return self.lanes.copy()
        from ..kernels.simd.attention_softmax import lanes_to_map  # noqa: PLC0415  (the SIMD kernels' lane layout)
        return lanes_to_map(self.lanes, B, H, T)


def softmax_attention_forward(q, k, v, *, scale=None):
    """[L3] out = softmax(mask(q k^T * scale)) v.  q, k (B,H,T,d), v (B,H,T,dv) -> (out (B,H,T,dv), cache)."""
    if not on_numpy(q, k, v):
        return _ref_sm.softmax_attention_forward(q, k, v, scale=scale)
    _, _, T, d, _ = check_qkv(q, k, v, finite=False)
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a positive finite float, got {scale!r}")
    out, lanes, finite = kernel_module("softmax").softmax_forward(q, k, v, scale)
    if not finite:                      # found by the kernel as it loaded q, k, v; the reference's message
        check_qkv(q, k, v)
    return out, SoftmaxAttentionFastCache(q, k, v, lanes, float(scale))


def softmax_attention_backward(dout, cache):
    """Returns (dq (B,H,T,d), dk (B,H,T,d), dv (B,H,T,dv)).  A reference cache goes to the reference backward."""
    if not isinstance(cache, SoftmaxAttentionFastCache):
        return _ref_sm.softmax_attention_backward(dout, cache)
    q, k, v, lanes, scale = cache
    check_numpy_dout(dout, v.shape, v.dtype, inputs="inputs")
    grads, finite = kernel_module("softmax").softmax_backward(q, k, v, lanes, scale, dout)
    if not finite:
        check_dout(dout, v.shape, v.dtype)
    return grads
