"""[L5] GELU (tanh approximation, as jax.nn.gelu's default) and [L6] activation clipping."""
from __future__ import annotations

import math
from typing import NamedTuple

from ._common import array_module, check_dout, check_float_array

_C = math.sqrt(2.0 / math.pi)


class GeluCache(NamedTuple):
    x: object   # (...) the input


def gelu_forward(x):
    """[L5] gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    check_float_array("x", x)
    xp = array_module(x)
    t = xp.tanh(x.dtype.type(_C) * (x + x.dtype.type(0.044715) * x ** 3))
    return 0.5 * x * (1 + t), GeluCache(x)


def gelu_backward(dy, cache: GeluCache):
    """Returns dx (...)."""
    x = cache.x
    check_dout(dy, x.shape, x.dtype)
    xp = array_module(x)
    c = x.dtype.type(_C)
    t = xp.tanh(c * (x + x.dtype.type(0.044715) * x ** 3))
    dt = (1 - t * t) * c * (1 + x.dtype.type(3 * 0.044715) * x * x)
    return dy * (0.5 * (1 + t) + 0.5 * x * dt)


class ClipCache(NamedTuple):
    inside: object   # (...) bool, True where -c < x < c (gradient passes)


def clip_forward(x, *, c):
    """[L6] y = clip(x, -c, c); the gradient is zero outside the open band (-c, c)."""
    check_float_array("x", x)
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise ValueError(f"c: expected a positive finite clipping bound, got {c!r}")
    xp = array_module(x)
    cc = x.dtype.type(c)
    return xp.clip(x, -cc, cc), ClipCache((x > -cc) & (x < cc))


def clip_backward(dy, cache: ClipCache):
    """Returns dx (...)."""
    check_dout(dy, cache.inside.shape, dy.dtype)
    return dy * cache.inside
