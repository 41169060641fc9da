#!/usr/bin/env python
"""Regenerate figures/fig3_depth.{png,json}; see mesa_ref/experiments/depth.py (flags: --quick, --backend, --out, --seed, --replot)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesa_ref.experiments.depth import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
