#!/usr/bin/env python
"""Regenerate figures/fig7_mesa_vs_attention.{png,json}; see mesa_ref/experiments/mesa_vs_attention.py (flags: --quick, --backend, --out, --seed, --replot)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesa_ref.experiments.mesa_vs_attention import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
