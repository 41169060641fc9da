#!/usr/bin/env python
"""Figure 6: few-shot in-context regression [T5]/[P5] with an autoregressively trained model.

A model trained on linear dynamics [T1] (constructed tokens [T2]) is run unchanged on sequences
x_1, y_1, x_2, y_2, ...; a tuned EOS token and a tuned prompt are compared with no EOS and with
least squares [A3] on the same examples, also when the task switches mid-sequence.
See mesa_ref/experiments/icl.py for the method and the configurations.

    python scripts/fig6_icl.py --quick        # CPU, a few minutes; writes figures/fig6_icl.{png,json}
"""
import os
import sys
from pathlib import Path

# Small matrices: one BLAS thread is much faster than several fighting over a small machine.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesa_ref.experiments.icl import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
