"""Figure 3: per-time-step loss of linear-attention models of growing depth on [T1]/[T2].

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858.

[P3] per-time-step loss of trained linear models with L layers (``linear_L<L>``) against [A3] tuned
least squares (``lsq``), [A1] one GD step (``gd``), [A2] L steps of GD (``gd_K<L>``, eta tuned) and
[A4] preconditioned GD with an L-1-term Neumann series (``neumann_K<L-1>``: the multi-layer
construction uses one layer per term and a final gradient step; eta tuned).  Deeper models should
approach least squares.  ``depth_check`` in the JSON records, for each consecutive pair of depths,
whether the deeper model's mean loss is no worse than the shallower one's within the seed spread
(the larger of the two std's over seeds).

Configurations (recorded in the JSON, deviations listed):

* full: n = 10, T = 50, depths 1, 2, 4, 6, the official model (4 heads, key size 20, clip 1.5, init
  std 0.0002), AdamW lr 3e-4, 1000 warm-up steps, cosine to 1e-5 at 20000, batch 256, 20000 steps;
  evaluation seeds 1, 11, 111, 1111, 11111 x 256; tuning batch 512.
* quick: n = 6, T = 30, depths 1, 2, 4, 2 heads of key size 6, init std 0.02, batch 64, 300 steps,
  lr 3e-3 with 30 warm-up steps and cosine decay to 3e-4; evaluation seeds 1, 11, 111 x 128;
  tuning batch 256.
"""
from __future__ import annotations


import numpy as np

from ..config import ModelConfig
from ..train import TrainConfig
from .common import plot_per_step, run_figure
from .dynamics import (EVAL_SEEDS, LinearTask, eval_batches, evaluate_models, ratio_after, train_cached,
                       tune_baselines, tune_k_step)

NAME = "fig3_depth"


def setup(ctx):
    seed = ctx.seed
    if getattr(ctx.args, "smoke", False):
        n, T = 3, 12
        base = ModelConfig(layers=("linear",), heads=1, width=4 * n, key_size=n, input_dim=n, output_dim=n,
                           init_std=0.05)
        tcfg = TrainConfig(steps=10, batch=16, lr=3e-3, warmup_steps=2, decay_steps=10, final_lr=3e-4,
                           eval_every=10, test_batches=1, checkpoint_every=1000, seed=seed)
        return base, tcfg, LinearTask(n=n, T=T), (1, 2), EVAL_SEEDS[:2], 16, 32, ["smoke test sizes"]
    if ctx.quick:
        n, T = 6, 30
        base = ModelConfig(layers=("linear",), heads=2, width=4 * n, key_size=6, input_dim=n, output_dim=n,
                           init_std=0.02)
        tcfg = TrainConfig(steps=300, batch=64, lr=3e-3, warmup_steps=30, decay_steps=300, final_lr=3e-4,
                           eval_every=100, test_batches=2, checkpoint_every=1000, seed=seed)
        dev = ["n = 6, T = 30 (paper 10, 50)", "depths 1, 2, 4 (paper 1, 2, 4, 6)",
               "2 heads, key size 6 (paper 4, 20)", "init std 0.02 (paper 0.0002)",
               "batch 64, 300 steps (paper 256, 20000)",
               "lr 3e-3, 30 warm-up steps, cosine to 3e-4 at 300 (paper 3e-4, 1000, 1e-5 at 20000)",
               "3 evaluation seeds x 128 sequences (paper 5 x 256); tuning batch 256 (paper 512)"]
        return base, tcfg, LinearTask(n=n, T=T), (1, 2, 4), EVAL_SEEDS[:3], 128, 256, dev
    return (ModelConfig(layers=("linear",)), TrainConfig(steps=20000, seed=seed), LinearTask(), (1, 2, 4, 6),
            EVAL_SEEDS, 256, 512, [])


def compute(ctx) -> dict:
    base, tcfg, task, depths, seeds, B, Btune, dev = setup(ctx)
    trained, metrics = {}, {}
    for L in depths:
        cfg = base.replace(layers=("linear",) * L)
        model, params, m = train_cached(ctx, cfg, task, tcfg, f"linear_L{L}")
        trained[f"linear_L{L}"] = (model, params)
        metrics[f"linear_L{L}"] = m
    tune = task.batch(ctx.rng(7), Btune, np.float64)
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
    config = {"model_base": base.to_dict(), "depths": list(depths),
              "train": {k: getattr(tcfg, k) for k in tcfg.__dataclass_fields__}, "task": task.to_dict(),
              "eval_seeds": list(seeds), "eval_batch": B, "tune_batch": Btune, "deviations": dev}
    return {"config": config, "train_metrics": metrics, "tuned": tuned, **out, "depth_check": checks,
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
    plot_per_step(ax, {k: ps[k] for k in models + base}, data.get("per_step_spread"), styles=styles)
    ax.set_title("per-time-step loss on [T1] (bands: +-1 std over evaluation seeds)", fontsize=10)
    depths = [int(k[8:]) for k in models]
    fl, sp = data["final_loss"], data.get("final_spread", {})
    ax2.errorbar(depths, [fl[k] for k in models], yerr=[sp.get(k, 0.0) for k in models], fmt="o-", color="C0",
                 capsize=3, label="trained linear models")
    for k, st in (("lsq", dict(color="k")), ("gd", dict(color="C1", ls="--"))):
        ax2.axhline(fl[k], lw=1.2, label=styles[k]["label"], **st)
    ax2.set_yscale("log")
    ax2.set_xticks(depths)
    ax2.set_xlabel("number of layers")
    ax2.set_ylabel("test loss (MSE / 2, mean over t)")
    ax2.set_title("mean loss vs depth (bars: std over seeds)", fontsize=10)
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8, loc="center right")
    fig.suptitle("Fig. 3 - deeper linear self-attention models approach least squares", fontsize=11)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    desc = "Fig. 3: per-time-step loss of linear models of growing depth vs least squares and GD baselines"
    return run_figure(NAME, compute, plot, desc, argv=argv)
