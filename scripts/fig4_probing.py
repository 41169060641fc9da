#!/usr/bin/env python
"""Figure 4: probing across layers [P1] (deep linear and softmax models on [T1]); see mesa_lab/experiments/probe_layers.py.

    python scripts/fig4_probing.py --quick        # CPU, minutes; writes figures/fig4_probing.{png,json}
"""
import sys

from _figure import run

if __name__ == "__main__":
    sys.exit(run("fig4_probing"))
