"""The per-head L2 normalisation of ``ModelConfig.unit_norm`` on the CPU: the ``mesa_ref.ops.l2norm`` op, same
signatures and the reference's cache type.

Re-expresses ``mesa_ref.ops.l2norm`` with the kernels of ``kernels/simd/l2norm.py``, which read the strided q, k, v
views in place; the leading axis is shared out to the thread pool. The cache is the reference's ``L2NormCache``
(x, norm, scale keep their meaning), so either backward takes either forward's cache. CuPy input goes to the
reference op. When a kernel reports a sum that is not finite (NaN or inf in the input, or an overflow), the call goes
to the reference op, which raises its ValueError for NaN/inf or otherwise returns its own result.
"""
from __future__ import annotations

import numpy as np

from mesa_ref.ops import l2norm as _ref

from ..runtime.pool import map_chunks
from ._common import check_numpy_dout, on_numpy, simd

__all__ = ["l2_normalize_forward", "l2_normalize_backward"]


def _four_axes(a):
    """``a`` as a 4-axis array whose last axis is a's: a view with leading unit axes for rank <= 4 (no copy, any
    strides), a reshape of the leading axes into one for rank > 4."""
    if a.ndim <= 4:
        return a.reshape((1,) * (4 - a.ndim) + a.shape)
    return a.reshape((-1,) + a.shape[-3:])


def l2_normalize_forward(x, *, eps=1e-16):
    """y = x / (eps + ||x||) over the last axis."""
    if not on_numpy(x):
        return _ref.l2_normalize_forward(x, eps=eps)
    _ref.check_l2_normalize_inputs(x, eps, finite=False)     # the reference's checks (same ValueErrors); NaN/inf below
    x4 = _four_axes(x)
    y = np.empty(x4.shape, x.dtype)
    norm = np.empty(x4.shape[:-1] + (1,), x.dtype)
    scale = np.empty_like(norm)
    e = x.dtype.type(eps)
    kernel = simd("l2norm").l2norm_fwd
    ok = map_chunks(lambda lo, hi: kernel(x4[lo:hi], e, y[lo:hi], norm[lo:hi], scale[lo:hi]), x4.shape[0])
    if not all(ok):
        return _ref.l2_normalize_forward(x, eps=eps)
    col = x.shape[:-1] + (1,)
    return y.reshape(x.shape), _ref.L2NormCache(x, norm.reshape(col), scale.reshape(col))


def l2_normalize_backward(dy, cache):
    """Returns dx (..., d)."""
    x, norm, scale = cache
    if not on_numpy(x):
        return _ref.l2_normalize_backward(dy, cache)
    check_numpy_dout(dy, x.shape, x.dtype)
    x4, dy4, n4, s4 = (_four_axes(a) for a in (x, dy, norm, scale))
    dx = np.empty(x4.shape, x.dtype)
    kernel = simd("l2norm").l2norm_bwd
    ok = map_chunks(lambda lo, hi: kernel(dy4[lo:hi], x4[lo:hi], n4[lo:hi], s4[lo:hi], dx[lo:hi]), x4.shape[0])
    if not all(ok):
        return _ref.l2_normalize_backward(dy, cache)
    return dx.reshape(x.shape)
