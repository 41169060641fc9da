#!/usr/bin/env python
"""Figure 4: probing across layers [P1] (deep linear and softmax models on [T1]); see mesa_ref/experiments/probing.py.

    python scripts/fig4_probing.py --quick        # CPU, minutes; writes figures/fig4_probing.{png,json}
"""
import os
import sys
from pathlib import Path

# The CPU runs use small matrices, for which a multi-threaded BLAS only adds overhead on a busy machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesa_ref.experiments.probing import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
