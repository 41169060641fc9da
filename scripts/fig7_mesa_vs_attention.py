#!/usr/bin/env python
"""Regenerate figures/fig7_mesa_vs_attention.{png,json}; see mesa_lab/experiments/mesa_vs_attention.py (flags: --quick, --backend, --out, --seed, --replot)."""
import sys

from _figure import run

if __name__ == "__main__":
    sys.exit(run("fig7_mesa_vs_attention"))
