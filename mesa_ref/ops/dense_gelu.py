"""[L1] + [L5] The MLP's first layer as one op: g = gelu(x W + b).

The composition of ``dense_forward`` and ``gelu_forward`` (and of their backwards), so that a backend may fuse
the two passes over the (N, M) hidden activations (mesa_fast does, row block by row block).
Shapes: x (..., Din), W (Din, M), b (M,) or None, g (..., M).
"""
from __future__ import annotations

from typing import NamedTuple

from .activations import GeluCache, gelu_backward, gelu_forward
from .dense import DenseCache, dense_backward, dense_forward


class DenseGeluCache(NamedTuple):
    dense: DenseCache   # of z = x W + b
    gelu: GeluCache     # of g = gelu(z)


def dense_gelu_forward(x, W, b=None):
    """[L1] + [L5] g = gelu(x W + b).  x (..., Din), W (Din, M), b (M,) or None -> (g (..., M), cache).  The checks
    are dense_forward's, then gelu_forward's on z (a finite x W + b that overflows raises there)."""
    z, dc = dense_forward(x, W, b)
    g, gc = gelu_forward(z)
    return g, DenseGeluCache(dc, gc)


def dense_gelu_backward(dg, cache: DenseGeluCache, *, input_grad: bool = True):
    """Returns (dx (..., Din) or None with ``input_grad=False``, dW (Din, M), db (M,) or None)."""
    return dense_backward(gelu_backward(dg, cache.gelu), cache.dense, input_grad=input_grad)
