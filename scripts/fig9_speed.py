#!/usr/bin/env python
"""Figure 9: mesa-layer forward+backward time vs T per backend; see mesa_lab/experiments/speed.py.

    python scripts/fig9_speed.py --quick        # a small sweep on this machine + any recorded benchmark JSON
    python scripts/fig9_speed.py                # the paper's shape (B=256, d=20), into figures/full/

No training jobs: the figure is a timing sweep (the common flags --scheduler, --workers, --store are accepted
and have nothing to do).
"""
import sys

from _figure import run

if __name__ == "__main__":
    sys.exit(run("fig9_speed"))
