"""Adam / AdamW on a dict of named arrays (NumPy or CuPy), updated in place: the one optimiser of the toolkit.

    opt = AdamW(params, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, lr_scale=())
    opt = AdamW(params, tcfg)          # the same, read from any object with those five attributes (TrainConfig)
    opt.update(params, grads, lr)      # lr: one float, or {name: float} (one learning rate per entry)

One step, t = 1, 2, ... (Loshchilov & Hutter's decoupled weight decay; ``weight_decay=0`` is plain Adam):

    m <- b1 m + (1 - b1) g             v <- b2 v + (1 - b2) g^2
    p <- p - lr_k (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) - lr_k wd p

with lr_k = lr (or lr[name]) times the factor of the first ``(suffix, factor)`` in ``lr_scale`` whose suffix
ends the parameter's name (1 when none does). The state ``m``, ``v`` (dicts like ``params``, in each
parameter's dtype and array module) and the step count ``t`` are plain attributes, so a checkpoint can save
and restore them. Every product is taken in the parameter's dtype (float32 parameters: float32 arithmetic).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from .ops._common import array_module, is_array

__all__ = ["AdamW", "check_lr_scale"]

_OPTIONS = ("b1", "b2", "eps", "weight_decay", "lr_scale")
_DEFAULTS = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "lr_scale": ()}


def check_lr_scale(lr_scale) -> tuple:
    """((suffix, factor), ...) with non-empty string suffixes and finite factors > 0, as a tuple of
    (str, float) pairs; ValueError otherwise."""
    bad = ValueError(f"lr_scale: expected ((parameter-name suffix, factor > 0), ...), got {lr_scale!r}")
    try:
        scale = tuple((k, float(f)) for k, f in lr_scale)
    except (TypeError, ValueError):
        raise bad from None
    if not all(isinstance(k, str) and k and f > 0 and math.isfinite(f) for k, f in scale):
        raise bad
    return scale


def _number(name, x, lo, hi, *, lo_open=False, hi_open=False):
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {x!r}") from None
    ok = math.isfinite(x) and (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name}: expected a finite number in {interval}, got {x!r}")
    return x


class AdamW:
    """Adam with decoupled weight decay (see the module docstring) on a dict of float arrays, in place."""

    def __init__(self, params: Mapping, config=None, *, b1=None, b2=None, eps=None, weight_decay=None,
                 lr_scale=None):
        given = {k: v for k, v in zip(_OPTIONS, (b1, b2, eps, weight_decay, lr_scale)) if v is not None}
        if config is not None:
            if given:
                raise ValueError(f"AdamW: give the options either as a config object or as keywords, not both "
                                 f"(got config and {sorted(given)})")
            missing = [k for k in _OPTIONS if not hasattr(config, k)]
            if missing:
                raise ValueError(f"config: expected attributes {list(_OPTIONS)}; "
                                 f"{type(config).__name__} lacks {missing}")
            given = {k: getattr(config, k) for k in _OPTIONS}
        opts = {**_DEFAULTS, **given}
        self.b1 = _number("b1", opts["b1"], 0.0, 1.0, hi_open=True)
        self.b2 = _number("b2", opts["b2"], 0.0, 1.0, hi_open=True)
        self.eps = _number("eps", opts["eps"], 0.0, math.inf, lo_open=True, hi_open=True)
        self.weight_decay = _number("weight_decay", opts["weight_decay"], 0.0, math.inf, hi_open=True)
        self.lr_scale = check_lr_scale(opts["lr_scale"])
        if not isinstance(params, Mapping) or not params:
            raise ValueError(f"params: expected a non-empty dict of arrays, got {type(params).__name__}")
        for k, p in params.items():
            if not is_array(p) or p.dtype.kind != "f":
                raise ValueError(f"params[{k!r}]: expected a float array, got "
                                 f"{getattr(p, 'dtype', type(p).__name__)}")
        self.m = {k: array_module(p).zeros_like(p) for k, p in params.items()}
        self.v = {k: array_module(p).zeros_like(p) for k, p in params.items()}
        self.t = 0
        self._factor = {}

    def factor(self, name: str) -> float:
        """The learning-rate factor of parameter ``name`` (``lr_scale``: first matching suffix; else 1)."""
        f = self._factor.get(name)
        if f is None:
            f = self._factor[name] = next((f for suffix, f in self.lr_scale if name.endswith(suffix)), 1.0)
        return f

    def update(self, params: Mapping, grads: Mapping, lr) -> None:
        """One step on every entry of ``params`` (in place), with ``grads`` of the same names and shapes.

        ``lr``: a float >= 0 for every entry, or a mapping {name: float >= 0} covering every entry."""
        per_name = isinstance(lr, Mapping)
        for k, p in params.items():
            if k not in self.m:
                raise ValueError(f"params[{k!r}]: not among the parameters this optimiser was built for")
            if k not in grads:
                raise ValueError(f"grads: missing the gradient of {k!r}")
            if tuple(grads[k].shape) != tuple(p.shape):
                raise ValueError(f"grads[{k!r}]: expected shape {tuple(p.shape)}, got {tuple(grads[k].shape)}")
            if per_name and k not in lr:
                raise ValueError(f"lr: missing the learning rate of {k!r}")
        rates = {k: _number(f"lr[{k!r}]" if per_name else "lr", lr[k] if per_name else lr, 0.0, math.inf,
                            hi_open=True) for k in params}
        self.t += 1
        bc1 = 1 - self.b1 ** self.t
        bc2 = 1 - self.b2 ** self.t
        wd = self.weight_decay
        for k, p in params.items():
            g = grads[k]
            step = rates[k] * self.factor(k)
            m, v = self.m[k], self.v[k]
            dt = p.dtype.type
            m *= dt(self.b1); m += dt(1 - self.b1) * g
            v *= dt(self.b2); v += dt(1 - self.b2) * (g * g)
            upd = (m / dt(bc1)) / (array_module(p).sqrt(v / dt(bc2)) + dt(self.eps))
            if wd:
                upd += dt(wd) * p
            p -= dt(step) * upd
