"""Finite-difference gradient checking (float64 central differences).

``numerical_gradient(f, x, dout)`` returns d<f(x), dout>/dx by central differences,
perturbing ``x`` in place one entry at a time and restoring it; ``rel_error`` is the
max-relative error used throughout the tests: max|a - b| / max(1e-8, max(|a| + |b|)).
"""
from __future__ import annotations

import numpy as np


def numerical_gradient(f, x: np.ndarray, dout=None, h: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of ``sum(f(x) * dout)`` (or of scalar ``f(x)``) w.r.t. ``x``.

    ``f`` is called with no arguments and must read ``x`` (which is modified in place and
    restored). ``x`` must be float64.
    """
    if x.dtype != np.float64:
        raise ValueError(f"x: gradient checks need float64, got {x.dtype}")
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        old = x[ix]
        x[ix] = old + h
        fp = f()
        x[ix] = old - h
        fm = f()
        x[ix] = old
        if dout is None:
            grad[ix] = (float(fp) - float(fm)) / (2 * h)
        else:
            grad[ix] = np.sum((np.asarray(fp) - np.asarray(fm)) * dout) / (2 * h)
        it.iternext()
    return grad


def rel_error(a, b) -> float:
    """max|a - b| / max(1e-8, max(|a| + |b|)): a scale-aware relative error."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-8, float(np.max(np.abs(a) + np.abs(b)))))
