#!/usr/bin/env python
"""Figure 5: the copy layer (first softmax layer builds (s_t, s_{t-1}) from raw tokens); see mesa_lab/experiments/copy_layer.py.

    python scripts/fig5_copy_layer.py --quick        # CPU, minutes; writes figures/fig5_copy_layer.{png,json}
"""
import sys

from _figure import run

if __name__ == "__main__":
    sys.exit(run("fig5_copy_layer"))
