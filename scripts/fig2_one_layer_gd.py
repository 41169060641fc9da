#!/usr/bin/env python
"""Regenerate figures/fig2_one_layer_gd.{png,json}; see mesa_lab/experiments/one_layer.py (flags: --quick, --backend, --out, --seed, --replot)."""
import sys

from _figure import run

if __name__ == "__main__":
    sys.exit(run("fig2_one_layer_gd"))
