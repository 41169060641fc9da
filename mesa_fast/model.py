"""The Transformer bound to ``mesa_fast.ops``.

The model is written once, in ``mesa_ref/model.py``; this module only hands it the fast ops
namespace, so ``mesa_fast.model.Transformer(cfg)`` is ``mesa_ref.model.Transformer(cfg, ops=mesa_fast.ops)``.
"""
from __future__ import annotations

from mesa_ref.model import ForwardCache, Transformer as _RefTransformer  # noqa: F401

from . import ops as fast_ops

__all__ = ["Transformer", "ForwardCache"]


class Transformer(_RefTransformer):
    """``mesa_ref.model.Transformer`` with ``ops=mesa_fast.ops`` by default (any other ops namespace may
    still be passed)."""

    def __init__(self, config=None, *, ops=None):
        super().__init__(config, ops=fast_ops if ops is None else ops)
