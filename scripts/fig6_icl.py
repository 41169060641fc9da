#!/usr/bin/env python
"""Figure 6: few-shot in-context regression [T5]/[P5] with an autoregressively trained model.

A model trained on linear dynamics [T1] (constructed tokens [T2]) is run unchanged on sequences
x_1, y_1, x_2, y_2, ...; a tuned EOS token and a tuned prompt are compared with no EOS and with
least squares [A3] on the same examples, also when the task switches mid-sequence.
See mesa_lab/experiments/icl.py for the method and the configurations.

    python scripts/fig6_icl.py --quick        # CPU, a few minutes; writes figures/fig6_icl.{png,json}
"""
import sys

from _figure import run

if __name__ == "__main__":
    sys.exit(run("fig6_icl"))
