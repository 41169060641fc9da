#!/usr/bin/env python
"""Figure 8: language modelling [T6] with softmax, linear, mesa and hybrid Transformers of one size.

Four training jobs on the same batches; held-out loss per position and learning curves.  Default corpus: the
text of the standard library's pydoc_data.topics (offline); --text FILE takes any UTF-8 file.  See
mesa_lab/experiments/language.py for the setup and the sizes.

    python scripts/fig8_language.py --quick [--text FILE] [--backend ref|fast] [--out DIR] [--seed N] [--replot]
    python scripts/fig8_language.py [--workers N | --scheduler ADDR] [--no-train]     # full size, figures/full/
"""
import sys

from _figure import run

if __name__ == "__main__":
    sys.exit(run("fig8_language"))
