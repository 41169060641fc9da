"""[L4] + [L1] A LayerNorm and the dense layer it feeds as one op:

    y = layernorm(x; w, b) W (+ c).

The composition of ``layernorm`` and ``dense``, so its values are those of the two ops one after the other. As one
op a backend may normalise the rows block by block right before their product, so that the product reads the
normalised rows from cache and the LayerNorm's cache need not be written out (mesa_fast does). The model uses it
for the pre-LayerNorm query/key/value product of every block and for the final LayerNorm and the readout.
Shapes: x (..., D), w, b (D,), W (D, O), c (O,) or None, y (..., O).
"""
from __future__ import annotations

from typing import NamedTuple

from .dense import DenseCache, dense_backward, dense_forward
from .layernorm import LayerNormCache, layernorm_backward, layernorm_forward


class LayerNormDenseCache(NamedTuple):
    ln: LayerNormCache    # of a = layernorm(x)
    dense: DenseCache     # of y = a W + c


def layernorm_dense_forward(x, w, b, W, c=None, *, eps=1e-5):
    """[L4] + [L1] y = layernorm(x) W + c -> (y (..., O), cache).  The checks are layernorm_forward's, then
    dense_forward's on the normalised input."""
    a, c1 = layernorm_forward(x, w, b, eps=eps)
    y, c2 = dense_forward(a, W, c)
    return y, LayerNormDenseCache(c1, c2)


def layernorm_dense_backward(dy, cache: LayerNormDenseCache):
    """Returns (dx (..., D), dw (D,), db (D,), dW (D, O), dc (O,) or None), in the order of the forward's inputs."""
    da, dW, dc = dense_backward(dy, cache.dense)
    dx, dw, db = layernorm_backward(da, cache.ln)
    return dx, dw, db, dW, dc
