#!/usr/bin/env python
"""Regenerate figures/fig1_weights.{png,json}; see mesa_lab/experiments/one_layer.py (flags: --quick, --backend, --out, --seed, --replot)."""
import sys

from _figure import run

if __name__ == "__main__":
    sys.exit(run("fig1_weights"))
