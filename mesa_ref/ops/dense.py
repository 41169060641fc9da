"""[L1] Dense layer: y = x W (+ b).

Shapes: x (..., Din), W (Din, Dout), b (Dout,) or None, y (..., Dout).
"""
from __future__ import annotations

from typing import NamedTuple

from ._common import array_module, check_dout, check_float_array, check_same_dtype


class DenseCache(NamedTuple):
    x: object        # (..., Din) the input
    W: object        # (Din, Dout)
    has_bias: bool


def check_dense_inputs(x, W, b=None, *, finite=True):
    """The checks of dense_forward (shared with mesa_fast's dense op): ValueError naming the argument.
    ``finite=False`` leaves out the NaN/inf checks (for a caller that checks them another way)."""
    check_float_array("x", x, finite=finite)
    check_float_array("W", W, ndim=2, finite=finite)
    if b is not None:
        check_float_array("b", b, ndim=1, finite=finite)
    check_same_dtype(x=x, W=W, b=b)
    if x.ndim < 1 or x.shape[-1] != W.shape[0]:
        raise ValueError(f"W: expected first dimension {x.shape[-1]} (x's last), got shape {tuple(W.shape)}")
    if b is not None and b.shape[0] != W.shape[1]:
        raise ValueError(f"b: expected shape ({W.shape[1]},), got {tuple(b.shape)}")


def dense_forward(x, W, b=None):
    """[L1] y = x W + b.  x (..., Din), W (Din, Dout), b (Dout,) or None -> y (..., Dout)."""
    check_dense_inputs(x, W, b)
    xp = array_module(x)
    # flatten to one 2-D product: BLAS on a contiguous (N, Din) matrix, whatever x's strides are
    y = (xp.ascontiguousarray(x.reshape(-1, x.shape[-1])) @ W).reshape(x.shape[:-1] + (W.shape[1],))
    if b is not None:
        y = y + b
    return y, DenseCache(x, W, b is not None)


def dense_backward(dy, cache: DenseCache, *, input_grad: bool = True):
    """Returns (dx (..., Din), dW (Din, Dout), db (Dout,) or None); dx is None with ``input_grad=False`` (the
    model's first block when nobody wants the gradient w.r.t. the input: one product fewer)."""
    x, W, has_bias = cache
    check_dout(dy, x.shape[:-1] + (W.shape[1],), x.dtype)
    xp = array_module(x)
    x2 = xp.ascontiguousarray(x.reshape(-1, x.shape[-1]))     # (N, Din)
    dy2 = xp.ascontiguousarray(dy.reshape(-1, dy.shape[-1]))  # (N, Dout)
    dx = (dy2 @ W.T).reshape(x.shape) if input_grad else None   # (..., Din)
    dW = x2.T @ dy2                                       # (Din, Dout)
    db = xp.sum(dy2, axis=0) if has_bias else None        # (Dout,)
    return dx, dW, db
