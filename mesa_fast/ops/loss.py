"""The MSE loss's forward on the CPU: ``mesa_ref.ops.loss.mse_forward``, same signature and cache type.

One kernel pass (``kernels/simd/loss.py``); the reference's cache type, so the reference's ``mse_backward`` (and
``cross_entropy_*``, which have no fast kernel) serve this namespace as they are. CuPy input goes to the reference.
"""
from __future__ import annotations

import numpy as np

from mesa_ref.ops import loss as _ref_loss
from mesa_ref.ops._common import check_float_array, check_same_dtype

from ._common import on_numpy, simd

__all__ = ["mse_forward"]


def mse_forward(pred, target):
    """L = sum ||pred - target||^2 / (2 N), N = prod(leading dims): the reference's op in one kernel pass
    (``kernels/simd/loss.py``: ``mse_fwd``), the sum of squares accumulated in float64. NaN/inf in pred or target:
    found in diff by the kernel, then reported by the reference's checks (same messages); a finite pred and target
    whose difference overflows pass, as in the reference."""
    if not on_numpy(pred, target) or not getattr(pred, "size", 0):
        return _ref_loss.mse_forward(pred, target)                  # CuPy, or nothing to sum
    check_float_array("pred", pred, finite=False)
    check_float_array("target", target, finite=False)
    check_same_dtype(pred=pred, target=target)
    if pred.shape != target.shape:
        raise ValueError(f"target: expected shape {tuple(pred.shape)} (pred's), got {tuple(target.shape)}")
    n = pred.shape[-1] if pred.ndim else 1
    p2, t2 = pred.reshape(-1, n), target.reshape(-1, n)          # views where the leading dims merge
    diff = np.empty(p2.shape, pred.dtype)
    total, finite = simd("loss").mse_fwd(p2, t2, diff)
    if not finite:
        check_float_array("pred", pred)
        check_float_array("target", target)
    N = int(np.prod(pred.shape[:-1])) if pred.ndim > 1 else 1
    return pred.dtype.type(total / (2 * N)), _ref_loss.MSECache(diff.reshape(pred.shape), N)
