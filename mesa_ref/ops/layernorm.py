"""[L4] Layer normalisation over the last axis.

y = (x - mean) * rstd * w + b,  rstd = 1/sqrt(var + eps).
Shapes: x (..., D), w (D,), b (D,).
"""
from __future__ import annotations

from typing import NamedTuple

from ._common import array_module, check_dout, check_float_array, check_same_dtype


class LayerNormCache(NamedTuple):
    xhat: object   # (..., D) normalised input
    rstd: object   # (..., 1) reciprocal standard deviation
    w: object      # (D,)


def check_layernorm_inputs(x, w, b, eps, *, finite=True):
    """The checks of layernorm_forward (shared with mesa_fast's LayerNorm): ValueError naming the argument.
    ``finite=False`` leaves out the NaN/inf checks (for a caller that checks them another way)."""
    check_float_array("x", x, finite=finite)
    check_float_array("w", w, ndim=1, finite=finite)
    check_float_array("b", b, ndim=1, finite=finite)
    check_same_dtype(x=x, w=w, b=b)
    D = x.shape[-1]
    if w.shape != (D,) or b.shape != (D,):
        raise ValueError(f"w, b: expected shape ({D},), got {tuple(w.shape)} and {tuple(b.shape)}")
    if not eps > 0:
        raise ValueError(f"eps: expected > 0, got {eps!r}")


def layernorm_forward(x, w, b, *, eps=1e-5):
    """[L4] y = (x - mean(x)) / sqrt(var(x) + eps) * w + b over the last axis."""
    check_layernorm_inputs(x, w, b, eps)
    xp = array_module(x)
    mean = x.mean(axis=-1, keepdims=True)                          # (..., 1)
    xc = x - mean                                                  # (..., D)
    var = (xc * xc).mean(axis=-1, keepdims=True)                   # (..., 1)
    rstd = 1.0 / xp.sqrt(var + x.dtype.type(eps))                  # (..., 1)
    xhat = xc * rstd                                               # (..., D)
    return xhat * w + b, LayerNormCache(xhat, rstd, w)


def layernorm_backward(dy, cache: LayerNormCache):
    """Returns (dx (..., D), dw (D,), db (D,))."""
    xhat, rstd, w = cache
    check_dout(dy, xhat.shape, xhat.dtype)
    D = xhat.shape[-1]
    lead = tuple(range(dy.ndim - 1))
    dw = (dy * xhat).sum(axis=lead)                                # (D,)
    db = dy.sum(axis=lead)                                         # (D,)
    g = dy * w                                                     # (..., D)
    dx = rstd * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * (g * xhat).sum(axis=-1, keepdims=True) / D)
    return dx, dw, db
