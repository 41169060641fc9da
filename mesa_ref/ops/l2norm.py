"""L2 normalisation over the last axis (the model's ``unit_norm``: each head's q, k or v scaled to unit norm).

    n = ||x||_2 (over the last axis),   s = 1 / (eps + n),   y = s x.
Shapes: x (..., d) -> y (..., d); n and s are (..., 1).

Backward (dn/dx = x / n):
    dx = s dy - s^2 <dy, x> x / n.
At n = 0 (x = 0) the second term vanishes (it is O(n) as x -> 0) and dx = dy / eps, the exact derivative there:
y(t u) = t u / (eps + |t| ||u||) has slope u / eps at t = 0. Large (eps = 1e-16) but finite.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from ._common import array_module, check_dout, check_float_array


class L2NormCache(NamedTuple):
    x: object      # (..., d) the input
    norm: object   # (..., 1) ||x||
    scale: object  # (..., 1) 1 / (eps + ||x||)


def check_l2_normalize_inputs(x, eps, *, finite=True):
    """The forward's checks (also the fast op's): a float array of rank >= 1 and a positive finite eps; with
    ``finite``, no NaN or inf in x."""
    check_float_array("x", x, finite=finite)
    if x.ndim < 1:
        raise ValueError(f"x: expected an array of rank >= 1 (normalised over its last axis), got shape {x.shape}")
    if isinstance(eps, bool) or not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps: expected a positive finite number, got {eps!r}")


def l2_normalize_forward(x, *, eps=1e-16):
    """y = x / (eps + ||x||) over the last axis."""
    check_l2_normalize_inputs(x, eps)
    xp = array_module(x)
    norm = xp.sqrt((x * x).sum(axis=-1, keepdims=True))                  # (..., 1)
    scale = 1 / (x.dtype.type(eps) + norm)                                 # (..., 1)
    return x * scale, L2NormCache(x, norm, scale)


def l2_normalize_backward(dy, cache: L2NormCache):
    """Returns dx (..., d)."""
    x, norm, scale = cache
    check_dout(dy, x.shape, x.dtype)
    xp = array_module(x)
    safe = xp.where(norm > 0, norm, x.dtype.type(1))                       # (..., 1); x = 0 where norm = 0
    proj = (dy * x).sum(axis=-1, keepdims=True)                            # (..., 1) <dy, x>
    return scale * (dy - x * (scale * proj / safe))
