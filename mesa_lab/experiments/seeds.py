"""Training seeds: which full-size models are trained more than once, and the spread that gives.

A training seed is the ``--seed`` a figure's jobs are built with: it sets the model's initialisation and the
training data stream (``TrainConfig.seed``).  Seed 0 is the shipped run of every figure; ``TRAINING_SEEDS``
adds two more for the models whose verdicts rest on them (``SEEDED``).  The seeds' jobs are ordinary jobs of
the same store, so seed 0's keys are the shipped ones and the other seeds only add results.

The figures whose models are shared take their seeds with them: fig6 analyses fig3's 2-layer model and
fig4's linear probe is fig3's 6-layer model, so training fig3's seeds trains theirs.

A seeded figure runs its analysis once per training seed, on the same evaluation data (the evaluation streams
follow the figure's ``--seed``, not the training seed), with the seed's models in place of seed 0's.  Its JSON
keeps seed 0's numbers where they always were and adds ``training_seeds``: for each of the figure's headline
numbers (``Seeded.metrics``, dotted paths into the analysis, ``*`` matching any key) the value at every seed,
their mean and their standard deviation over seeds (ddof 1).  So the spread is over training alone; the bands
the figures already draw are over evaluation batches of one trained model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import experiment

#: training seeds behind a seeded verdict (0 is the shipped run)
TRAINING_SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Seeded:
    names: tuple | None          # the figure's jobs trained at every seed (None: all of them)
    metrics: tuple               # dotted paths of the numbers gathered per seed


#: figure -> what is trained at every training seed, in the order train_seeds.py takes them (cheap figures first;
#: fig7's two [T4] models, 1.7 CPU hours a seed, before fig3's four, 2.7, whose seeds also serve fig4 and fig6)
SEEDED = {
    "fig2_one_layer_gd": Seeded(None, ("per_step_loss.model", "final_loss.model", "model_vs_gd_ratio_t10",
                                       "model_vs_lsq_ratio_t10", "gd_similarity_max", "interpolation.to_gd",
                                       "interpolation.to_revalg", "interpolation.gd_eta_implied")),
    "fig8_language": Seeded(None, ("heldout_loss.*", "loss_per_position.*")),
    "fig7_mesa_vs_attention": Seeded(("T4/mesa_L2", "T4/softmax_L2"),
                                     ("tasks.T4.per_step_loss.mesa_L2", "tasks.T4.per_step_loss.softmax_L2",
                                      "tasks.T4.final_loss.mesa_L2", "tasks.T4.final_loss.softmax_L2")),
    "fig3_depth": Seeded(None, ("per_step_loss.linear_L*", "final_loss.linear_L*", "ratio_to_lsq_t10.*")),
    "fig6_icl": Seeded(None, ("error_vs_examples.no_eos", "error_vs_examples.eos", "error_vs_examples.eos_prompt",
                              "error_vs_examples.two_task.no_eos", "error_vs_examples.two_task.eos",
                              "error_vs_examples.two_task.eos_prompt")),
    "fig5_copy_layer": Seeded(None, ("prev_token_attention", "self_attention", "probe_previous_error",
                                     "probe_current_error")),
    "fig4_probing": Seeded(("softmax", "linear"), ("probe_error.softmax.*", "probe_error.linear.*")),
}


def seeded_names(figure: str, jobs: dict) -> list[str]:
    """The names of ``jobs`` (one figure's {name: Job}) that ``SEEDED`` trains at every seed."""
    if figure not in SEEDED:
        return []
    names = SEEDED[figure].names
    return list(jobs) if names is None else [n for n in names if n in jobs]


def seed_jobs(figures=None, seeds=TRAINING_SEEDS, mode: str = "full", backend: str = "fast", store=None) -> list:
    """The seeded jobs of ``figures`` (default: every figure of ``SEEDED``, in its order: cheap figures
    first, so whole figures finish early), labelled "<figure>/<name>/seed<S>".

    With ``store`` (a ``mesa_lab.jobs.Store``), each figure's jobs are taken longest first: ordered by the CPU
    time that the same model at seed 0 recorded in the store (a model without a finished seed-0 run counts as
    0; ties keep seed order).  Workers take jobs in this order, so a figure's longest jobs do not start last,
    after its short ones, and the figure is complete sooner."""
    figures = list(SEEDED) if figures is None else list(figures)
    unknown = [f for f in figures if f not in SEEDED]
    if unknown:
        raise ValueError(f"figures: {', '.join(unknown)} not seeded (seeded: {', '.join(SEEDED)})")
    out = []
    for fig in figures:
        exp = experiment(fig)
        cfg = exp.config(mode)
        jobs = [(n, j) for s in seeds for n, j in seed_variant(exp.name, exp.jobs(cfg, s, backend), s).items()]
        if store is not None:
            shipped = exp.jobs(cfg, 0, backend)
            spent = {n: recorded_cpu_seconds(store, shipped[n]) for n in seeded_names(fig, shipped)}
            jobs.sort(key=lambda nj: -spent[nj[0]])
        out += [j for _, j in jobs]
    return out


def recorded_cpu_seconds(store, job) -> float:
    """The CPU seconds a finished job recorded in ``store`` (0.0 when it is not finished)."""
    result = store.get(job)
    return float(result.cost.get("cpu_seconds", 0.0)) if result is not None else 0.0


def seed_variant(figure: str, jobs: dict, seed: int) -> dict:
    """{name: Job} of the seeded jobs among ``jobs`` (built with training seed ``seed``), labelled with it."""
    return {n: dataclasses.replace(jobs[n], label=f"{figure}/{n}/seed{seed}") for n in seeded_names(figure, jobs)}


# ---------------------------------------------------------------------------------------------- the spread
def pick(data: dict, pattern: str) -> dict:
    """{dotted path: value} of the entries of ``data`` that ``pattern`` names ("a.*.c": any key in the middle).
    A path that is absent is skipped (a figure analysed with --partial lacks some models)."""
    found = {"": data}
    for part in pattern.split("."):
        nxt = {}
        for path, node in found.items():
            if not isinstance(node, dict):
                continue
            keys = [k for k in node if _matches(k, part)]
            for k in keys:
                nxt[f"{path}.{k}" if path else k] = node[k]
        found = nxt
    return found


def _matches(key: str, part: str) -> bool:
    if part.endswith("*"):
        return key.startswith(part[:-1])
    return key == part


def seed_spread(per_seed: dict, patterns) -> dict:
    """The ``training_seeds`` record from {seed: analysis dict}: per metric path, the values at each seed (in
    seed order), their mean and their std over seeds (ddof 1; None with one seed).  Lists are taken element by
    element; a metric missing at some seed is left out."""
    seeds = sorted(per_seed)
    paths = {}
    for s in seeds:
        for pat in patterns:
            for path in pick(per_seed[s], pat):
                paths.setdefault(path, None)
    rec = {"seeds": seeds, "per_seed": {}, "mean": {}, "std": {}}
    for path in paths:
        vals = [pick(per_seed[s], path).get(path) for s in seeds]
        if any(v is None for v in vals):
            continue
        a = np.asarray(vals, dtype=float)
        rec["per_seed"][path] = a.tolist()
        rec["mean"][path] = a.mean(axis=0).tolist()
        rec["std"][path] = a.std(axis=0, ddof=1).tolist() if len(seeds) > 1 else None
    return rec
