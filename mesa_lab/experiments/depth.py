"""Figure 3: per-time-step loss of linear-attention models of growing depth on [T1]/[T2].

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858.

[P3] per-time-step loss of trained linear models with L layers (``linear_L<L>``) against [A3] tuned
least squares (``lsq``), [A1] one GD step (``gd``), [A2] L steps of GD (``gd_K<L>``, eta tuned) and
[A4] preconditioned GD with an L-1-term Neumann series (``neumann_K<L-1>``: the multi-layer
construction uses one layer per term and a final gradient step; eta tuned).  Deeper models should
approach least squares.  ``depth_check`` in the JSON records, for each consecutive pair of depths,
whether the deeper model's mean loss is no worse than the shallower one's within the seed spread
(the larger of the two std's over seeds).

Configurations: ``FULL`` is the paper's setup (n = 10, T = 50, depths 1, 2, 4, 6, the official model: 4 heads,
key size 20, clip 1.5, init std 0.0002; AdamW lr 3e-4, 1000 warm-up steps, cosine to 1e-5 at 20000, batch 256,
20000 steps; evaluation seeds 1, 11, 111, 1111, 11111 x 256; tuning batch 512).  ``QUICK`` (CPU, a minute)
shrinks it; the JSON lists every field where it differs from ``FULL``.  The six-layer job is also figure 4's
deep linear model (the same job, trained once).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..jobs import Job
from .common import Experiment, label_axes, mode_line, plot_per_step, second_configuration, seed_band
from .dynamics import (EVAL_SEEDS, DynamicsConfig, eval_batches, evaluate_models, ratio_after, train_summary,
                       trained_model, tune_baselines, tune_k_step)

NAME = "fig3_depth"


@dataclass(frozen=True)
class DepthConfig(DynamicsConfig):
    depths: tuple = (1, 2, 4, 6)
    steps_by_depth: tuple = ()       # ((L, steps), ...): training steps of depth L in place of ``steps``
    heads_by_depth: tuple = ()       # ((L, heads), ...): heads of depth L in place of ``heads``
    clip_mode: str = "global_norm"   # gradient clipping: "global_norm" | "elementwise" (the authors' optax.clip)


FULL = DepthConfig()
#: The authors' recipe for this figure, read from their code (run_construction_experiments.ipynb and the
#: "probing_constr" entries of their configs/config.py): constant lr 1e-4 (no warm-up, no decay), weight decay
#: 0.1, element-wise gradient clipping at 1, activation clip 4, 5,000 / 5,000 / 10,000 / 15,000 steps for
#: 1 / 2 / 4 / 6 layers, 2 heads in the one-layer model.  ``--recipe authors`` trains it beside FULL (other
#: keys; the shipped jobs are untouched); everything else is FULL's.
AUTHORS = dataclasses.replace(FULL, clip=4.0, lr=1e-4, warmup_steps=0, final_lr=1e-4, weight_decay=0.1,
                              clip_mode="elementwise", steps_by_depth=((1, 5000), (2, 5000), (4, 10000), (6, 15000)),
                              heads_by_depth=((1, 2),))
QUICK = dataclasses.replace(FULL, n=6, T=30, depths=(1, 2, 4), heads=2, key_size=6, init_std=0.02, batch=64, steps=300,
                            lr=3e-3, warmup_steps=30, decay_steps=300, final_lr=3e-4, test_batches=2,
                            checkpoint_every=1000, eval_seeds=EVAL_SEEDS[:3], eval_batch=128, tune_batch=256)
SMOKE = dataclasses.replace(FULL, n=3, T=12, depths=(1, 2), heads=1, key_size=3, init_std=0.05, batch=16, steps=10,
                            lr=3e-3, warmup_steps=2, decay_steps=10, final_lr=3e-4, eval_every=10, test_batches=1,
                            checkpoint_every=1000, eval_seeds=EVAL_SEEDS[:2], eval_batch=16, tune_batch=32)
MODES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


def jobs(cfg: DepthConfig, seed: int, backend: str) -> dict:
    """One linear-attention model per depth: ``linear_L<L>``."""
    steps, heads = dict(cfg.steps_by_depth), dict(cfg.heads_by_depth)
    out = {}
    for L in cfg.depths:
        model = cfg.model_config(("linear",) * L, **({"heads": heads[L]} if L in heads else {}))
        changes = {"clip_mode": cfg.clip_mode}
        if L in steps:
            changes.update(steps=steps[L], decay_steps=max(steps[L], cfg.warmup_steps),
                           eval_every=min(cfg.eval_every, steps[L]))
        out[f"linear_L{L}"] = Job(model, cfg.linear_task(), cfg.train_config(seed, **changes), backend)
    return out


RECIPES = {"paper": None, "authors": AUTHORS}


def add_arguments(p):
    p.add_argument("--recipe", choices=tuple(RECIPES), default="paper",
                   help="paper: the paper's training recipe (FULL); authors: the authors' own (depth.AUTHORS: "
                        "constant lr 1e-4, weight decay 0.1, clip 4, 5k-15k steps); full size only")


def configure(cfg, args):
    recipe = getattr(args, "recipe", "paper")
    if recipe == "paper":
        return cfg
    return second_configuration("recipe", recipe, cfg, FULL, RECIPES[recipe], args)


def analyse(ctx, cfg: DepthConfig, results) -> dict:
    depths = [L for L in cfg.depths if f"linear_L{L}" in results]     # all of them unless --partial
    task, seeds, B = cfg.linear_task(), cfg.eval_seeds, cfg.eval_batch
    trained = {k: trained_model(ctx, r) for k, r in results.items()}
    metrics = {k: train_summary(r) for k, r in results.items()}
    tune = task.batch(ctx.rng(7), cfg.tune_batch, np.float64)
    tuned = tune_baselines(task, tune)
    baselines = ["gd"]
    for L in depths:
        if L > 1:
            baselines += [f"gd_K{L}", f"neumann_K{L - 1}"]
    for b in baselines[1:]:
        tuned[b] = tune_k_step(task, tune, b, tuned["lam"])
    baselines.append("lsq")
    batches = eval_batches(ctx, task, seeds, B)
    out = evaluate_models(ctx, task, trained, batches, tuned, baselines)
    names = [f"linear_L{L}" for L in depths]
    checks = []
    for a, b in zip(names, names[1:]):
        tol = max(out["final_spread"][a], out["final_spread"][b])
        checks.append({"shallower": a, "deeper": b, "loss_shallower": out["final_loss"][a],
                       "loss_deeper": out["final_loss"][b], "tolerance": tol,
                       "deeper_no_worse": bool(out["final_loss"][b] <= out["final_loss"][a] + tol)})
    return {"train_metrics": metrics, "tuned": tuned, **out, "depth_check": checks,
            "ratio_to_lsq_t10": {k: ratio_after(out["per_step_loss"], k, "lsq") for k in names},
            "notes": "per_step_loss[m][t-1]: loss at time t (sum over sequences and dims / (2B)), mean over the "
                     "evaluation seeds; per_step_spread: std over seeds; final_loss: mean over t; final_spread: "
                     "std over seeds of the per-seed mean loss. gd_K<k>: k GD steps [A2]; neumann_K<k>: "
                     "preconditioned GD with a Neumann series of k terms beyond the identity [A4]."}


def plot(data):
    import matplotlib.pyplot as plt
    ps = data["per_step_loss"]
    models = [k for k in ps if k.startswith("linear_L")]
    base = [k for k in ps if not k.startswith("linear_L")]
    cmap = plt.get_cmap("viridis")
    styles = {k: dict(color=cmap(0.85 * i / max(1, len(models) - 1)), lw=2.2,
                      label=f"trained linear, {k[8:]} layer{'s' if k[8:] != '1' else ''}")
              for i, k in enumerate(models)}
    styles["lsq"] = dict(color="k", lw=1.4, label="[A3] least squares (tuned lam)")
    styles["gd"] = dict(color="C1", ls="--", lw=1.2, label="[A1] one GD step")
    for i, k in enumerate(b for b in base if b.startswith("gd_K")):
        styles[k] = dict(color="C3", ls="--", lw=1.0, alpha=0.5 + 0.5 * i / 3, label=f"[A2] {k[4:]} GD steps")
    for i, k in enumerate(b for b in base if b.startswith("neumann_K")):
        styles[k] = dict(color="C4", ls=":", lw=1.2, alpha=0.5 + 0.5 * i / 3,
                         label=f"[A4] Neumann ({k[9:]} terms) + GD step")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.6, 1]})
    for k in models:                                 # before plot_per_step makes the legend
        seed_band(ax, data, f"per_step_loss.{k}", color=styles[k]["color"])
    plot_per_step(ax, {k: ps[k] for k in models + base}, data.get("per_step_spread"), styles=styles,
                  legend=dict(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3))
    ax.set_title("per-time-step loss on [T1] (filled bands: +-1 std over evaluation seeds)", fontsize=10)
    depths = [int(k[8:]) for k in models]
    fl, sp = data["final_loss"], data.get("final_spread", {})
    ax2.errorbar(depths, [fl[k] for k in models], yerr=[sp.get(k, 0.0) for k in models], fmt="o-", color="C0",
                 capsize=3, label="trained linear models (seed 0; bars: evaluation seeds)")
    ts = data.get("training_seeds") or {}
    if all((ts.get("std") or {}).get(f"final_loss.{k}") is not None for k in models) and ts:
        ax2.errorbar(np.asarray(depths) + 0.08, [ts["mean"][f"final_loss.{k}"] for k in models],
                     yerr=[ts["std"][f"final_loss.{k}"] for k in models], fmt="D--", color="C2", capsize=3, mfc="none",
                     label=f"mean over {len(ts['seeds'])} training seeds (bars: their std)")
    for k, st, name in (("lsq", dict(color="k"), "least squares"), ("gd", dict(color="C1", ls="--"), "one GD step")):
        ax2.axhline(fl[k], lw=1.2, label=styles[k]["label"], **st)
        ax2.annotate(name, (0.02, fl[k]), xycoords=("axes fraction", "data"), xytext=(0, 3),
                     textcoords="offset points", fontsize=8, color=st["color"], va="bottom")
    ax2.set_yscale("log")
    ax2.set_xticks(depths)
    label_axes(ax2, "number of layers", "test loss (MSE / 2, mean over t)", "mean loss vs depth",
               title_size=10, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1)
    fig.suptitle(f"Fig. 3 - deeper linear self-attention models approach least squares\n{mode_line(data)}",
                 fontsize=11)
    fig.tight_layout()
    return fig


EXPERIMENT = Experiment(NAME, "Fig. 3: per-time-step loss of linear models of growing depth vs least squares and GD "
                        "baselines", MODES, jobs, analyse, plot, add_arguments=add_arguments, configure=configure)
