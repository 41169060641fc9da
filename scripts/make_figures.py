#!/usr/bin/env python
"""Regenerate every figure: mesa_lab/make_figures.py.  (``--help`` for the flags.)"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesa_lab.make_figures import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
