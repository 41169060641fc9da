#!/usr/bin/env python
"""Regenerate figures/fig3_depth.{png,json}; see mesa_lab/experiments/depth.py (flags: --quick, --backend, --out, --seed, --replot)."""
import sys

from _figure import run

if __name__ == "__main__":
    sys.exit(run("fig3_depth"))
