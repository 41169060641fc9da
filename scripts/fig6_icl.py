#!/usr/bin/env python
"""Figure 6: few-shot in-context regression [T5]/[P5] with an autoregressively trained model.

A model trained on linear dynamics [T1] (constructed tokens [T2]) is run unchanged on sequences
x_1, y_1, x_2, y_2, ...; a tuned EOS token and a tuned prompt are compared with no EOS and with
least squares [A3] on the same examples, also when the task switches mid-sequence.
See mesa_ref/experiments/icl.py for the method and the quick-mode deviations.

    python scripts/fig6_icl.py --quick [--backend ref|fast] [--out DIR] [--seed N] [--replot]
"""
import os
import sys

# Small matrices: one BLAS thread is much faster than several fighting over a small machine.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mesa_ref.experiments import icl  # noqa: E402
from mesa_ref.experiments.common import run_figure  # noqa: E402

NAME = "fig6_icl"
DESCRIPTION = "In-context few-shot regression with a tuned EOS token and prompt (Fig. 6)."


def compute(ctx):
    cfg = icl.SMOKE if ctx.args.smoke else None
    return icl.compute(ctx, cfg)


def main(argv=None):
    return run_figure(NAME, compute, icl.plot, DESCRIPTION, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
