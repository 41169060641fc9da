"""Losses: mean squared error with the official normalisation, and cross-entropy.

MSE (official `_compute_loss`): L = 1/(2 N) sum ||target - pred||^2 where N is the number of
prediction vectors (B * T for (B, T, n) predictions).  Cross-entropy: mean over positions of
-log softmax(logits)[target].
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._common import array_module, check_float_array, check_same_dtype


class MSECache(NamedTuple):
    diff: object   # (..., n) pred - target
    N: int         # number of prediction vectors


def mse_forward(pred, target):
    """L = sum ||pred - target||^2 / (2 N),  pred, target (..., n), N = prod(leading dims)."""
    check_float_array("pred", pred)
    check_float_array("target", target)
    check_same_dtype(pred=pred, target=target)
    if pred.shape != target.shape:
        raise ValueError(f"target: expected shape {tuple(pred.shape)} (pred's), got {tuple(target.shape)}")
    diff = pred - target
    N = int(np.prod(pred.shape[:-1])) if pred.ndim > 1 else 1
    return (diff * diff).sum() / (2 * N), MSECache(diff, N)


def mse_backward(dloss, cache: MSECache):
    """Returns dpred (..., n) = dloss * (pred - target) / N."""
    return cache.diff * (cache.diff.dtype.type(dloss) / cache.N)


class CrossEntropyCache(NamedTuple):
    probs: object    # (..., V) softmax of the logits
    targets: object  # (...) int


def cross_entropy_forward(logits, targets):
    """L = mean over positions of -log softmax(logits)[target].  logits (..., V), targets (...) int."""
    check_float_array("logits", logits)
    xp = array_module(logits)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets: expected shape {tuple(logits.shape[:-1])}, got {tuple(targets.shape)}")
    if targets.dtype.kind not in "iu":
        raise ValueError(f"targets: expected an integer array, got dtype {targets.dtype}")
    V = logits.shape[-1]
    if targets.size and (int(targets.min()) < 0 or int(targets.max()) >= V):
        raise ValueError(f"targets: values must lie in [0, {V}), got range [{int(targets.min())}, {int(targets.max())}]")
    z = logits - logits.max(axis=-1, keepdims=True)
    logZ = xp.log(xp.exp(z).sum(axis=-1, keepdims=True))
    logp = z - logZ                                                     # (..., V)
    picked = xp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return -picked.mean(), CrossEntropyCache(xp.exp(logp), targets)


def cross_entropy_backward(dloss, cache: CrossEntropyCache):
    """Returns dlogits (..., V) = dloss * (softmax - onehot) / N."""
    probs, targets = cache
    xp = array_module(probs)
    g = probs.copy()
    flat = g.reshape(-1, g.shape[-1])
    flat[xp.arange(flat.shape[0]), targets.reshape(-1)] -= 1
    return g * (probs.dtype.type(dloss) / max(1, targets.size))
