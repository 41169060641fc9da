#!/usr/bin/env python
"""Figure 8: language modelling [T6] with softmax, linear, mesa and hybrid Transformers of one size.

Four training jobs on the same batches; held-out loss per position and learning curves.  Default corpus: the
text of the standard library's pydoc_data.topics (offline); --text FILE takes any UTF-8 file.  See
mesa_ref/experiments/language.py for the setup and the sizes.

    python scripts/fig8_language.py --quick [--text FILE] [--backend ref|fast] [--out DIR] [--seed N] [--replot]
    python scripts/fig8_language.py [--workers N | --scheduler ADDR] [--no-train]     # full size, figures/full/
"""
import os
import sys
from pathlib import Path

# Small matrices: one BLAS thread is much faster than several fighting over a small machine.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesa_ref.experiments.language import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
