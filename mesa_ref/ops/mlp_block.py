"""[L4] + [L1] + [L5] The pre-LayerNorm MLP sub-block with its residual branch as one op:

    y = x + mlp(layernorm(x; w, b)),   mlp(m) = gelu(m W1 + b1) W2 + b2.

The composition of ``layernorm`` and ``mlp`` and the residual addition, in the order the model wrote them
before this op existed, so its values are those of the three steps one after the other. As one op a backend
may run the whole sub-block row block by row block, so that the normalised input, the MLP's output and their
gradients never go out to memory (mesa_fast does). The model uses it where an MLP follows a LayerNorm and
nothing is clipped between the residual addition and the next block.
Shapes: x (..., D), w, b (D,), W1 (D, M), b1 (M,) or None, W2 (M, D), b2 (D,) or None, y (..., D).
"""
from __future__ import annotations

from typing import NamedTuple

from .layernorm import LayerNormCache, layernorm_backward, layernorm_forward
from .mlp import MLPCache, mlp_backward, mlp_forward


class MLPBlockCache(NamedTuple):
    ln: LayerNormCache    # of m = layernorm(x)
    mlp: MLPCache         # of delta = mlp(m)


def check_residual_width(x, W2):
    """The MLP must map back to the residual stream's width: ValueError otherwise."""
    if W2.ndim != 2 or W2.shape[1] != x.shape[-1]:
        raise ValueError(f"W2: expected shape (M, {x.shape[-1]}) (the residual width), got {tuple(W2.shape)}")


def mlp_block_forward(x, w, b, W1, b1, W2, b2, *, eps=1e-5):
    """[L4] + [L1] + [L5] y = x + gelu(layernorm(x) W1 + b1) W2 + b2 -> (y (..., D), cache).  The checks are
    layernorm_forward's, then mlp_forward's on the normalised input, then the residual width."""
    m, c1 = layernorm_forward(x, w, b, eps=eps)
    delta, c2 = mlp_forward(m, W1, b1, W2, b2)
    check_residual_width(x, W2)
    return x + delta, MLPBlockCache(c1, c2)


def mlp_block_backward(dy, cache: MLPBlockCache):
    """Returns (dx (..., D), dw (D,), db (D,), dW1, db1 or None, dW2, db2 or None), in the order of the forward's
    inputs; dx is the residual branch's dy plus what comes back through the MLP and the LayerNorm."""
    dm, dW1, db1, dW2, db2 = mlp_backward(dy, cache.mlp)
    dx, dw, db = layernorm_backward(dm, cache.ln)
    return dy + dx, dw, db, dW1, db1, dW2, db2
