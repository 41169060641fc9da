#!/usr/bin/env python
"""Figure 5: the copy layer (first softmax layer builds (s_t, s_{t-1}) from raw tokens); see mesa_ref/experiments/copy_layer.py.

    python scripts/fig5_copy_layer.py --quick        # CPU, minutes; writes figures/fig5_copy_layer.{png,json}
"""
import os
import sys
from pathlib import Path

# The CPU runs use small matrices, for which a multi-threaded BLAS only adds overhead on a busy machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesa_ref.experiments.copy_layer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
