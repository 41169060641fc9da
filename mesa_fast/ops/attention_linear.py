"""Causal linear attention [L2] on the fast kernels: the ``mesa_ref.ops.attention_linear`` op, same signatures.

NumPy input runs the Numba kernels that ``mesa_fast.kernels.kernel_module("linear")`` picks (SIMD by default:
``kernels/simd/attention_linear.py``; plain: ``kernels/plain/attention_linear.py``), whatever ``mesa_fast.set_backend``
says (there is no CUDA twin); CuPy input, and a reference cache, go to the reference op. The output comes back as a
(B, H, T, dv) array laid out in memory as (B, T, H, dv), the gradients as views of one buffer in the fused QKV layout,
so the model's merges cost no copy. The cache is this module's ``LinearAttentionFastCache``: just (q, k, v), as the
kernels keep the running state S_t in registers and the backward re-runs the recurrence.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mesa_ref.ops import attention_linear as _ref_lin
from mesa_ref.ops._common import check_dout, check_qkv

from ..kernels import kernel_module
from ._common import check_numpy_dout, on_numpy

__all__ = ["LinearAttentionFastCache", "linear_attention_forward", "linear_attention_backward"]


class LinearAttentionFastCache(NamedTuple):
    q: np.ndarray   # (B, H, T, d)
    k: np.ndarray   # (B, H, T, d)
    v: np.ndarray   # (B, H, T, dv)   (no T x T score matrix: the backward re-runs the recurrence)


def linear_attention_forward(q, k, v):
    """[L2] out_t = sum_{t'<=t} v_{t'} (k_{t'} . q_t).  q, k (B,H,T,d), v (B,H,T,dv) -> (out (B,H,T,dv), cache).

    NaN/inf in q, k, v are found by the kernel as it loads them (no separate pass over three strided views);
    then the reference's check runs on the inputs one by one, so the ValueError names the argument with the
    reference's words, and nothing is returned."""
    if not on_numpy(q, k, v):
        return _ref_lin.linear_attention_forward(q, k, v)
    check_qkv(q, k, v, finite=False)
    out, finite = kernel_module("linear").linear_forward(q, k, v)
    if not finite:
        check_qkv(q, k, v)
    return out, LinearAttentionFastCache(q, k, v)


def linear_attention_backward(dout, cache):
    """Returns (dq (B,H,T,d), dk (B,H,T,d), dv (B,H,T,dv)).  NaN/inf in dout: found by the kernel as it reads
    dout, then reported by the reference's check (same message)."""
    if not isinstance(cache, LinearAttentionFastCache):
        return _ref_lin.linear_attention_backward(dout, cache)
    q, k, v = cache
    check_numpy_dout(dout, v.shape, v.dtype, inputs="inputs")
    grads, finite = kernel_module("linear").linear_backward(q, k, v, dout)
    if not finite:
        check_dout(dout, v.shape, v.dtype)
    return grads
