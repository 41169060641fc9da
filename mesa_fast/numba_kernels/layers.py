"""Op-level wrappers for the Numba attention / element-wise kernels: the ``mesa_ref.ops`` signatures.

Each function takes the same arguments as its ``mesa_ref.ops`` namesake, validates them with the
same ``mesa_ref.ops._common`` checks (so the same ``ValueError``s, raised before any work), and
returns the same kinds of outputs: NumPy in -> NumPy out of the same dtype. The caches are this
module's own NamedTuples (the model only hands them back to the matching backward); a cache from
the reference (which is what a CuPy call returns) is passed on to the reference backward.

CuPy arrays (GPU) go to the reference implementation, which is written against an array module
and runs on CuPy as it is. NumPy arrays always run the Numba kernels, whatever
``mesa_fast.set_backend`` says: these ops have no CUDA twin, so copying NumPy input to the GPU
would buy nothing.

Ops here: dense [L1] (BLAS, threads run by ``dense.py``), causal linear attention [L2] and
softmax attention [L3] (``attention.py``), LayerNorm [L4] and GELU [L5] (``elementwise.py``),
clipping [L6] (``attention.py``). Attention outputs and gradients come back as (B, H, T, w)
arrays laid out in memory as (B, T, H, w), so the model's merge of the heads costs no copy.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from mesa_ref.ops import activations as _ref_act
from mesa_ref.ops import attention_linear as _ref_lin
from mesa_ref.ops import attention_softmax as _ref_sm
from mesa_ref.ops import dense as _ref_dense
from mesa_ref.ops import layernorm as _ref_ln
from mesa_ref.ops._common import array_module, check_dout, check_float_array, check_qkv

from . import dense as _dense

_K = None
_E = None


def _k():
    """The attention kernel module, imported on first use (importing mesa_fast does not import Numba)."""
    global _K
    if _K is None:
        from . import attention
        _K = attention
    return _K


def _e():
    """The GELU / LayerNorm kernel module, imported on first use."""
    global _E
    if _E is None:
        from . import elementwise
        _E = elementwise
    return _E


def _numpy(*arrays) -> bool:
    return array_module(*arrays) is np


# --------------------------------------------------------------------------------------------
# [L2] causal linear attention
# --------------------------------------------------------------------------------------------

class LinearAttentionFastCache(NamedTuple):
    q: np.ndarray   # (B, H, T, d)
    k: np.ndarray   # (B, H, T, d)
    v: np.ndarray   # (B, H, T, dv)   (no T x T score matrix: the backward re-runs the recurrence)


def linear_attention_forward(q, k, v):
    """[L2] out_t = sum_{t'<=t} v_{t'} (k_{t'} . q_t).  q, k (B,H,T,d), v (B,H,T,dv) -> (out (B,H,T,dv), cache)."""
    if not _numpy(q, k, v):
        return _ref_lin.linear_attention_forward(q, k, v)
    check_qkv(q, k, v)
    return _k().linear_forward(q, k, v), LinearAttentionFastCache(q, k, v)


def linear_attention_backward(dout, cache):
    """Returns (dq (B,H,T,d), dk (B,H,T,d), dv (B,H,T,dv))."""
    if not isinstance(cache, LinearAttentionFastCache):
        return _ref_lin.linear_attention_backward(dout, cache)
    q, k, v = cache
    check_dout(dout, v.shape, v.dtype)
    if not _numpy(dout):
        raise ValueError("dout: lives on a different device/array module than the forward's inputs")
    return _k().linear_backward(q, k, v, dout)


# --------------------------------------------------------------------------------------------
# [L3] causal softmax attention
# --------------------------------------------------------------------------------------------
# The cache is the reference's own SoftmaxAttentionCache(q, k, v, P, scale): analyses read the
# attention map P from it (e.g. the copy-layer experiment), so it keeps the reference's meaning.

def softmax_attention_forward(q, k, v, *, scale=None):
    """[L3] out = softmax(mask(q k^T * scale)) v.  q, k (B,H,T,d), v (B,H,T,dv) -> (out (B,H,T,dv), cache)."""
    if not _numpy(q, k, v):
        return _ref_sm.softmax_attention_forward(q, k, v, scale=scale)
    _, _, T, d, _ = check_qkv(q, k, v)
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a positive finite float, got {scale!r}")
    out, P = _k().softmax_forward(q, k, v, scale)
    return out, _ref_sm.SoftmaxAttentionCache(q, k, v, P, float(scale))


def softmax_attention_backward(dout, cache):
    """Returns (dq (B,H,T,d), dk (B,H,T,d), dv (B,H,T,dv))."""
    q, k, v, P, scale = cache
    if not _numpy(q):
        return _ref_sm.softmax_attention_backward(dout, cache)
    check_dout(dout, v.shape, v.dtype)
    if not _numpy(dout):
        raise ValueError("dout: lives on a different device/array module than the forward's inputs")
    return _k().softmax_backward(q, k, v, P, scale, dout)


# --------------------------------------------------------------------------------------------
# [L1] dense layer (BLAS products, threads run here: see numba_kernels/dense.py)
# --------------------------------------------------------------------------------------------

class DenseFastCache(NamedTuple):
    x2: np.ndarray   # (N, Din) the input, rows flattened, C-contiguous
    W: np.ndarray    # (Din, Dout)
    has_bias: bool
    x_shape: tuple   # the input's shape (..., Din)


def dense_forward(x, W, b=None):
    """[L1] y = x W + b.  x (..., Din), W (Din, Dout), b (Dout,) or None -> (y (..., Dout), cache)."""
    if not _numpy(x, W, b):
        return _ref_dense.dense_forward(x, W, b)
    _ref_dense.check_dense_inputs(x, W, b)        # the reference's checks (same ValueErrors)
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))                  # (N, Din)
    y = _dense.forward(x2, W, b)                                             # (N, Dout)
    return y.reshape(x.shape[:-1] + (W.shape[1],)), DenseFastCache(x2, W, b is not None, tuple(x.shape))


def dense_backward(dy, cache):
    """Returns (dx (..., Din), dW (Din, Dout), db (Dout,) or None)."""
    if not isinstance(cache, DenseFastCache):
        return _ref_dense.dense_backward(dy, cache)
    x2, W, has_bias, x_shape = cache
    check_dout(dy, x_shape[:-1] + (W.shape[1],), x2.dtype)
    if not _numpy(dy):
        raise ValueError("dout: lives on a different device/array module than the forward's input")
    dy2 = np.ascontiguousarray(dy.reshape(-1, dy.shape[-1]))                # (N, Dout)
    dx, dW, db = _dense.backward(dy2, x2, W, has_bias)
    return dx.reshape(x_shape), dW, db


# --------------------------------------------------------------------------------------------
# [L4] LayerNorm (the reference's cache type: xhat, rstd, w keep their meaning)
# --------------------------------------------------------------------------------------------

def layernorm_forward(x, w, b, *, eps=1e-5):
    """[L4] y = (x - mean(x)) / sqrt(var(x) + eps) * w + b over the last axis."""
    if not _numpy(x, w, b):
        return _ref_ln.layernorm_forward(x, w, b, eps=eps)
    _ref_ln.check_layernorm_inputs(x, w, b, eps)  # the reference's checks (same ValueErrors)
    D = x.shape[-1]
    x2 = _k().flat(x).reshape(-1, D)                                        # (M, D)
    y = np.empty(x2.shape, x.dtype)
    xhat = np.empty(x2.shape, x.dtype)
    rstd = np.empty(x2.shape[0], x.dtype)
    _e().layernorm_fwd(x2, _k().flat(w), _k().flat(b), x.dtype.type(eps), y, xhat, rstd)
    return y.reshape(x.shape), _ref_ln.LayerNormCache(xhat.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)), w)


def layernorm_backward(dy, cache):
    """Returns (dx (..., D), dw (D,), db (D,))."""
    xhat, rstd, w = cache
    if not _numpy(xhat):
        return _ref_ln.layernorm_backward(dy, cache)
    check_dout(dy, xhat.shape, xhat.dtype)
    if not _numpy(dy):
        raise ValueError("dout: lives on a different device/array module than the forward's input")
    D = xhat.shape[-1]
    dx = np.empty(xhat.shape, xhat.dtype)
    dw = np.empty(D, xhat.dtype)
    db = np.empty(D, xhat.dtype)
    _e().layernorm_bwd(_k().flat(dy).reshape(-1, D), _k().flat(xhat).reshape(-1, D), _k().flat(rstd),
                       _k().flat(w), dx.reshape(-1, D), dw, db)
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# [L5] GELU (tanh approximation)
# --------------------------------------------------------------------------------------------

class GeluFastCache(NamedTuple):
    x: np.ndarray   # (...) the input
    t: np.ndarray   # (...) tanh(sqrt(2/pi) (x + 0.044715 x^3)), kept so the backward needs no tanh


def gelu_forward(x):
    """[L5] gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    if not _numpy(x):
        return _ref_act.gelu_forward(x)
    check_float_array("x", x)
    xf = _k().flat(x)
    y = np.empty(xf.shape, x.dtype)
    t = np.empty(xf.shape, x.dtype)
    _e().gelu_fwd(xf, y, t)
    return y.reshape(x.shape), GeluFastCache(x, t.reshape(x.shape))


def gelu_backward(dy, cache):
    """Returns dx (...)."""
    if not isinstance(cache, GeluFastCache):
        return _ref_act.gelu_backward(dy, cache)
    x, t = cache
    check_dout(dy, x.shape, x.dtype)
    if not _numpy(dy):
        raise ValueError("dout: lives on a different device/array module than the forward's input")
    dx = np.empty(x.size, x.dtype)
    _e().gelu_bwd(_k().flat(dy), _k().flat(x), _k().flat(t), dx)
    return dx.reshape(x.shape)


# --------------------------------------------------------------------------------------------
# [L6] activation clipping
# --------------------------------------------------------------------------------------------

class ClipFastCache(NamedTuple):
    inside: np.ndarray   # (...) uint8, 1 where -c < x < c (the gradient passes)


def clip_forward(x, *, c):
    """[L6] y = clip(x, -c, c); the gradient is zero outside the open band (-c, c)."""
    if not _numpy(x):
        return _ref_act.clip_forward(x, c=c)
    check_float_array("x", x)
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise ValueError(f"c: expected a positive finite clipping bound, got {c!r}")
    xf = _k().flat(x)
    y = np.empty(xf.shape, x.dtype)
    inside = np.empty(xf.shape, np.uint8)
    _k().clip_fwd(xf, x.dtype.type(c), y, inside)
    return y.reshape(x.shape), ClipFastCache(inside.reshape(x.shape))


def clip_backward(dy, cache):
    """Returns dx (...) = dy where -c < x < c, else 0."""
    if not isinstance(cache, ClipFastCache):
        return _ref_act.clip_backward(dy, cache)
    check_dout(dy, cache.inside.shape, dy.dtype)
    if not _numpy(dy):
        raise ValueError("dy: lives on a different device/array module than the forward's input")
    dx = np.empty(dy.size, dy.dtype)
    _k().clip_bwd(_k().flat(dy), cache.inside.reshape(-1), dx)
    return dx.reshape(dy.shape)


# the op names this module provides (mesa_fast.ops imports exactly these, overriding the reference's)
FAST_OPS = ("dense_forward", "dense_backward", "linear_attention_forward", "linear_attention_backward",
            "softmax_attention_forward", "softmax_attention_backward", "layernorm_forward", "layernorm_backward",
            "gelu_forward", "gelu_backward", "clip_forward", "clip_backward")
__all__ = list(FAST_OPS)
