"""Training seeds: which full-size models are trained more than once, and the jobs that does.

A training seed is the ``--seed`` a figure's jobs are built with: it sets the model's initialisation and the
training data stream (``TrainConfig.seed``).  Seed 0 is the shipped run of every figure; ``TRAINING_SEEDS``
adds two more for the models whose verdicts rest on them (``SEEDED``).  The seeds' jobs are ordinary jobs of
the same store, so seed 0's keys are the shipped ones and the other seeds only add results.

The figures whose models are shared take their seeds with them: fig6 analyses fig3's 2-layer model and
fig4's linear probe is fig3's 6-layer model, so training fig3's seeds trains theirs.
"""
from __future__ import annotations

import dataclasses

from . import experiment

#: training seeds behind a seeded verdict (0 is the shipped run)
TRAINING_SEEDS = (0, 1, 2)

#: figure -> the job names trained at every training seed (None: all of the figure's jobs)
SEEDED = {
    "fig2_one_layer_gd": None,
    "fig8_language": None,
    "fig3_depth": None,
    "fig6_icl": None,
    "fig7_mesa_vs_attention": ("T4/mesa_L2", "T4/softmax_L2"),
    "fig5_copy_layer": None,
    "fig4_probing": ("softmax", "linear"),
}


def seeded_names(figure: str, jobs: dict) -> list[str]:
    """The names of ``jobs`` (one figure's {name: Job}) that ``SEEDED`` trains at every seed."""
    names = SEEDED.get(figure, ())
    return list(jobs) if names is None else [n for n in names if n in jobs]


def seed_jobs(figures=None, seeds=TRAINING_SEEDS, mode: str = "full", backend: str = "fast") -> list:
    """The seeded jobs of ``figures`` (default: every figure of ``SEEDED``, in its order: cheap figures
    first, so whole figures finish early), labelled "<figure>/<name>/seed<S>"."""
    figures = list(SEEDED) if figures is None else list(figures)
    unknown = [f for f in figures if f not in SEEDED]
    if unknown:
        raise ValueError(f"figures: {', '.join(unknown)} not seeded (seeded: {', '.join(SEEDED)})")
    out = []
    for fig in figures:
        exp = experiment(fig)
        cfg = exp.config(mode)
        for s in seeds:
            jobs = exp.jobs(cfg, s, backend)
            out += [dataclasses.replace(jobs[n], label=f"{fig}/{n}/seed{s}") for n in seeded_names(fig, jobs)]
    return out
