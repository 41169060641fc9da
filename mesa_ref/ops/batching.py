"""How a backend schedules the samples of one training step: ``batch_map(fn, n)``.

Not a layer: every op of this namespace is exact per sample, and the model's losses are means over samples, so a
batch's loss and gradients are the size-weighted means of those of any split of the batch into contiguous
shards (``Transformer.loss_and_grads`` combines them). A backend decides the split. The reference runs the whole
batch as one shard on the calling thread, which is also what every backend does when it has one thread.
"""
from __future__ import annotations


def batch_size(x) -> int:
    """The number of samples of a batch array x (its leading axis), at least 1, else ValueError."""
    if getattr(x, "ndim", 0) < 1 or x.shape[0] < 1:
        raise ValueError(f"batch_map: expected a batch with at least one sample on axis 0, got shape "
                         f"{getattr(x, 'shape', None)}")
    return int(x.shape[0])


def batch_map(fn, x):
    """[(lo, hi, fn(lo, hi))] over contiguous shards [lo, hi) covering the samples 0..n-1 of the batch x (its
    leading axis), in order.

    The reference: one shard, [(0, n, fn(0, n))]."""
    n = batch_size(x)
    return [(0, n, fn(0, n))]
