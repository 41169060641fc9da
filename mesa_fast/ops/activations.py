"""GELU [L5] and activation clipping [L6] on the CPU: the ``mesa_ref.ops.activations`` ops, same signatures.

Re-expresses ``mesa_ref.ops.activations``: the kernels of ``kernels/simd/activations.py`` (one pass per element,
NaN/inf found in the same pass), the elements shared out to the thread pool (at least ``tuning.GELU_MIN_CHUNK`` /
``tuning.CLIP_MIN_CHUNK`` per range). CuPy input, and a reference cache, go to the reference op.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from mesa_ref.ops import activations as _ref_act
from mesa_ref.ops._common import check_dout, check_float_array

from ..kernels.buffers import flat
from ..runtime import tuning
from ._common import check_numpy_dout, elementwise_split, on_numpy, simd

__all__ = ["GeluFastCache", "gelu_forward", "gelu_backward", "ClipFastCache", "clip_forward", "clip_backward"]


# --------------------------------------------------------------------------------------------
# [L5] GELU (tanh approximation)
# --------------------------------------------------------------------------------------------

class GeluFastCache(NamedTuple):
    x: np.ndarray   # (...) the input
    t: np.ndarray   # (...) tanh(sqrt(2/pi) (x + 0.044715 x^3)), kept so the backward needs no tanh


def gelu_forward(x):
    """[L5] gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).  Ranges shared out to the thread pool; NaN/inf
    in x: found by the kernel, then reported by the reference's check (same message)."""
    if not on_numpy(x):
        return _ref_act.gelu_forward(x)
    check_float_array("x", x, finite=False)
    xf = flat(x)
    y = np.empty(xf.shape, x.dtype)
    t = np.empty(xf.shape, x.dtype)
    if not elementwise_split(simd("activations").gelu_fwd, xf.size, tuning.GELU_MIN_CHUNK, xf, y, t):
        check_float_array("x", x)
    return y.reshape(x.shape), GeluFastCache(x, t.reshape(x.shape))


def gelu_backward(dy, cache):
    """Returns dx (...).  NaN/inf in dy: found by the kernel, reported by the reference's check."""
    if not isinstance(cache, GeluFastCache):
        return _ref_act.gelu_backward(dy, cache)
    x, t = cache
    check_numpy_dout(dy, x.shape, x.dtype)
    dx = np.empty(x.size, x.dtype)
    if not elementwise_split(simd("activations").gelu_bwd, dx.size, tuning.GELU_MIN_CHUNK, flat(dy), flat(x), flat(t),
                             dx):
        check_dout(dy, x.shape, x.dtype)
    return dx.reshape(x.shape)


# --------------------------------------------------------------------------------------------
# [L6] activation clipping
# --------------------------------------------------------------------------------------------

class ClipFastCache(NamedTuple):
    inside: np.ndarray   # (...) uint8, 1 where -c < x < c (the gradient passes)


def clip_forward(x, *, c):
    """[L6] y = clip(x, -c, c); the gradient is zero outside the open band (-c, c).  NaN/inf in x: found by the
    kernel in its one pass, then reported by the reference's check (same message)."""
    if not on_numpy(x):
        return _ref_act.clip_forward(x, c=c)
    check_float_array("x", x, finite=False)
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise ValueError(f"c: expected a positive finite clipping bound, got {c!r}")
    xf = flat(x)
    y = np.empty(xf.shape, x.dtype)
    inside = np.empty(xf.shape, np.uint8)
    cc = x.dtype.type(c)
    kernel = simd("activations").clip_fwd
    if not elementwise_split(lambda a, b, m: kernel(a, cc, b, m), xf.size, tuning.CLIP_MIN_CHUNK, xf, y, inside):
        check_float_array("x", x)
    return y.reshape(x.shape), ClipFastCache(inside.reshape(x.shape))


def clip_backward(dy, cache):
    """Returns dx (...) = dy where -c < x < c, else 0.  NaN/inf in dy: found by the kernel, reported as the
    reference's check reports it."""
    if not isinstance(cache, ClipFastCache):
        return _ref_act.clip_backward(dy, cache)
    check_dout(dy, cache.inside.shape, dy.dtype, finite=False)
    if not on_numpy(dy):
        raise ValueError("dy: lives on a different device/array module than the forward's input")
    dx = np.empty(dy.size, dy.dtype)
    if not elementwise_split(simd("activations").clip_bwd, dx.size, tuning.CLIP_MIN_CHUNK, flat(dy),
                             cache.inside.reshape(-1), dx):
        check_dout(dy, cache.inside.shape, dy.dtype)
    return dx.reshape(dy.shape)
