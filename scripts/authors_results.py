#!/usr/bin/env python
"""The authors' result files as numbers: mesa_lab/authors_results.py.  (``--help`` for the flags.)"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesa_lab.authors_results import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
