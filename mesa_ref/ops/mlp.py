"""[L1] + [L5] The MLP sub-block as one op: y = gelu(x W1 + b1) W2 + b2.

The composition of ``dense_gelu_forward`` and ``dense_forward`` (and of their backwards), so that a backend may
keep the hidden activations (N, M) in cache between the two products instead of writing them out and reading
them back (mesa_fast does, row block by row block).
Shapes: x (..., D), W1 (D, M), b1 (M,) or None, W2 (M, E), b2 (E,) or None, y (..., E).
"""
from __future__ import annotations

from typing import NamedTuple

from .dense import DenseCache, dense_backward, dense_forward
from .dense_gelu import DenseGeluCache, dense_gelu_backward, dense_gelu_forward


class MLPCache(NamedTuple):
    fc1: DenseGeluCache   # of g = gelu(x W1 + b1)
    fc2: DenseCache       # of y = g W2 + b2


def mlp_forward(x, W1, b1, W2, b2):
    """[L1] + [L5] y = gelu(x W1 + b1) W2 + b2 -> (y (..., E), cache).  The checks are dense_gelu_forward's, then
    dense_forward's on the hidden activations g."""
    g, c1 = dense_gelu_forward(x, W1, b1)
    y, c2 = dense_forward(g, W2, b2)
    return y, MLPCache(c1, c2)


def mlp_backward(dy, cache: MLPCache):
    """Returns (dx (..., D), dW1 (D, M), db1 (M,) or None, dW2 (M, E), db2 (E,) or None), in the order of the
    forward's inputs."""
    dg, dW2, db2 = dense_backward(dy, cache.fc2)
    dx, dW1, db1 = dense_gelu_backward(dg, cache.fc1)
    return dx, dW1, db1, dW2, db2
