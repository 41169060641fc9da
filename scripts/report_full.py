#!/usr/bin/env python
"""The numbers of docs/reproduction.md, read from the full-size figure JSON: mesa_lab/report.py.  (``--help`` for the flags.)"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesa_lab.report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
