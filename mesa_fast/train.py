"""Training on the fast backend: ``python -m mesa_fast.train [flags]``.

The training loop and command line are written once, in ``mesa_ref/train.py``; this entry point
is the same command with ``--backend fast`` as its default (``--backend ref`` still works).
"""
from __future__ import annotations

import sys

import numpy as np

from mesa_ref.train import TrainConfig, reference_backend, train  # noqa: F401  (re-exported for convenience)
from mesa_ref.train import main as _ref_main

__all__ = ["main", "train", "TrainConfig", "resolve_backend"]


def resolve_backend(name: str):
    """(ops namespace, array module) for "ref" or "fast".  The fast backend on CuPy (``get_backend() == "cupy"``)
    works on CuPy arrays, so parameters and batches live on the GPU.  Choosing "fast" keeps freed memory in the C
    heap (``keep_freed_memory``), the process-wide setting the training step wants; it is made here, never on
    import."""
    if name != "fast":
        return reference_backend(name)
    import mesa_fast
    mesa_fast.keep_freed_memory()
    if mesa_fast.get_backend() == "cupy":
        import cupy
        return mesa_fast.ops, cupy
    return mesa_fast.ops, np


def main(argv=None) -> int:
    """``mesa_ref.train.main`` with ``--backend fast`` by default. Returns the exit status."""
    return _ref_main(argv, prog="python -m mesa_fast.train", default_backend="fast", backends=resolve_backend)


if __name__ == "__main__":
    sys.exit(main())
