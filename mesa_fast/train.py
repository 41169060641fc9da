"""Training on the fast backend: ``python -m mesa_fast.train [flags]``.

The training loop and command line are written once, in ``mesa_ref/train.py``; this entry point
is the same command with ``--backend fast`` as its default (``--backend ref`` still works).
"""
from __future__ import annotations

import sys

from mesa_ref.train import TrainConfig, train  # noqa: F401  (re-exported for convenience)
from mesa_ref.train import main as _ref_main

__all__ = ["main", "train", "TrainConfig"]


def main(argv=None) -> int:
    """``mesa_ref.train.main`` with ``--backend fast`` by default. Returns the exit status."""
    return _ref_main(argv, default_backend="fast")


if __name__ == "__main__":
    sys.exit(main())
