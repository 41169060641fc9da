"""Second configurations: a figure re-run with the authors' own settings, beside the shipped run.

Where the authors' code trains or measures differently from the paper's text (docs/reproduction.md, "Where the
authors' code differs"), a contested verdict is re-tested by running the figure again under their settings, as
new jobs in the same store: the shipped jobs and figures are untouched.  ``RETESTS`` names, per figure, the flags
that select the second configuration and the directory its figure goes to.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from . import experiment

#: figure -> (flags of the second configuration, its output directory under figures/full/)
RETESTS = {
    "fig3_depth": (("--recipe", "authors"), "recipe_authors"),
    "fig4_probing": (("--softmax-model", "authors"), "recipe_authors"),
    "fig7_mesa_vs_attention": (("--setup", "authors"), "recipe_authors"),
}


def retest_args(figure: str, root: Path) -> list[str]:
    """The figure script's command-line flags for its second configuration (output under ``root``)."""
    flags, sub = RETESTS[figure]
    return [*flags, "--out", str(Path(root) / sub)]


def retest_jobs(figures=None, root: Path = Path("figures/full"), backend: str = "fast",
                longest_first: bool = False) -> list:
    """The jobs of the second configurations (labelled "<figure>/<sub>/<name>").  ``longest_first``: each
    figure's jobs ordered by their estimated training time, longest first (``mesa_lab.cost.jax_hours``, the
    authors' step time scaled to the job: these jobs have no run of ours to go by, and the estimate ranks fig7's
    four as our own timed steps do, benchmarks/results/estimate_jobs_fig7_authors.md), so that on several
    workers the longest does not start last."""
    from ..cost import jax_hours
    from .common import experiment_parser
    figures = list(RETESTS) if figures is None else [f for f in figures if f in RETESTS]
    out = []
    for fig in figures:
        exp = experiment(fig)
        args = experiment_parser(exp).parse_args(retest_args(fig, root))
        cfg = exp.config("full", args)
        sub = RETESTS[fig][1]
        jobs = [dataclasses.replace(j, label=f"{fig}/{sub}/{k}") for k, j in exp.jobs(cfg, args.seed, backend).items()]
        if longest_first:
            jobs.sort(key=lambda j: -jax_hours(j.record())[0])
        out += jobs
    return out
