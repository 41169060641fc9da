#!/usr/bin/env python
"""Figure 8: character-level language modelling [T6] with softmax, linear, mesa and hybrid Transformers.

Equal-size models trained on the same batches; held-out loss per position and learning curves.
Default corpus: the text of the standard library's pydoc_data.topics (offline); --text FILE takes any
UTF-8 file.  See mesa_ref/experiments/language.py for the setup and the quick-mode choices.

    python scripts/fig8_language.py --quick [--text FILE] [--backend ref|fast] [--out DIR] [--seed N] [--replot]
"""
import os
import sys

# Small matrices: one BLAS thread is much faster than several fighting over a small machine.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mesa_ref.experiments import language  # noqa: E402
from mesa_ref.experiments.common import figure_parser, run_figure  # noqa: E402

NAME = "fig8_language"
DESCRIPTION = "Language modelling with softmax, linear, mesa and hybrid Transformers (Fig. 8)."


def compute(ctx):
    cfg = language.SMOKE if ctx.args.smoke else None
    return language.compute(ctx, cfg, text_path=ctx.args.text)


def build_parser():
    parser = figure_parser(NAME, DESCRIPTION)
    parser.add_argument("--text", metavar="FILE", default=None,
                        help="UTF-8 text file to model (default: the text of pydoc_data.topics)")
    return parser


def main(argv=None):
    return run_figure(NAME, compute, language.plot, DESCRIPTION, argv=argv, parser=build_parser())


if __name__ == "__main__":
    sys.exit(main())
