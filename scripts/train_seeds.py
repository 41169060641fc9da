#!/usr/bin/env python
"""Train the seeded models and the second configurations: mesa_lab/train_seeds.py.  (``--help`` for the flags.)"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesa_lab.train_seeds import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
