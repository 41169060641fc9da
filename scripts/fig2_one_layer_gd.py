#!/usr/bin/env python
"""Regenerate figures/fig2_one_layer_gd.{png,json}; see mesa_ref/experiments/one_layer.py (flags: --quick, --backend, --out, --seed, --replot)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesa_ref.experiments.one_layer import main_fig2  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_fig2())
