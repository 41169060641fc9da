"""Figures 1 and 2: a trained one-layer linear-attention model on [T1]/[T2] is one step of GD.

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858.

fig1_weights      [P2] W_K^T W_Q and P W_V per head as heat maps, with ``gd_similarity`` per head (the
                  product of the cosine similarities of the two matrices with the [A1] construction's
                  block pattern, ``mesa_ref.analysis.gd_similarity``) and ``gd_similarity_max``.
fig2_one_layer_gd [P3] per-time-step loss of the trained model against [A1] one GD step (eta tuned),
                  [A5] the reverse-engineered algorithm (coefficients read off the weights, and fitted),
                  [A3] tuned ridge regression; plus the [A5] interpolation from the trained weights to
                  their cleaned reading and to their GD component.

Both figures analyse the same job (``jobs``): the content-addressed job store holds its trained parameters,
so running fig1 then fig2 trains once.

Configurations: ``FULL`` is the paper's setup (n = 10, T = 50, one layer of 4 heads with key size 20, init
std 0.0002, AdamW lr 3e-4, 1000 warm-up steps, cosine decay to 1e-5 at 20000 steps, batch 256, 20000 steps;
evaluation seeds 1, 11, 111, 1111, 11111 with 256 sequences each; eta and lam tuned on one batch of 512),
except for one choice of ours in every mode: activation clipping off (``clip=None``; official 1.5).  With
the clip a one-layer model uses the clipping of its own output as a nonlinearity and ends about 10-15% below
the GD curve (ratios 0.83-0.86 in quick runs); without it the layer is exactly a bilinear map and the
comparison with [A1] is the paper's.  ``--clip 1.5`` restores the official setting.  ``QUICK`` (CPU, seconds)
shrinks the sizes and raises init std to 0.02 (the official 0.0002 starts a one-layer model at a saddle it
takes long to leave); the JSON lists every field where it differs from ``FULL``.
"""
from __future__ import annotations


import dataclasses
from dataclasses import dataclass

import numpy as np

from mesa_ref import analysis, solvers
from ..jobs import Job
from .common import Experiment, label_axes, mode_line, plot_per_step, seed_band, seed_text
from .dynamics import (EVAL_SEEDS, DynamicsConfig, baseline_predictions, eval_batches, model_predictions, ratio_after,
                       summarise, train_summary, trained_model, tune_baselines)

FIG1, FIG2 = "fig1_weights", "fig2_one_layer_gd"


@dataclass(frozen=True)
class OneLayerConfig(DynamicsConfig):
    clip: float | None = None       # our choice in every mode (module docstring); the paper clips at 1.5


FULL = OneLayerConfig()
QUICK = dataclasses.replace(FULL, n=6, T=30, heads=2, key_size=12, init_std=0.02, batch=64, steps=300, lr=3e-3,
                            warmup_steps=30, decay_steps=300, final_lr=3e-4, test_batches=2, checkpoint_every=1000,
                            eval_seeds=EVAL_SEEDS[:3], eval_batch=128, tune_batch=256)
SMOKE = dataclasses.replace(FULL, n=3, T=12, heads=2, key_size=3, init_std=0.05, batch=16, steps=20, lr=3e-3,
                            warmup_steps=2, decay_steps=20, final_lr=3e-4, eval_every=10, test_batches=1,
                            checkpoint_every=1000, eval_seeds=EVAL_SEEDS[:2], eval_batch=16, tune_batch=32)
MODES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


def jobs(cfg: OneLayerConfig, seed: int, backend: str) -> dict:
    """One job: the one-layer linear model on [T1]/[T2]."""
    return {"model": Job(cfg.model_config(("linear",)), cfg.linear_task(), cfg.train_config(seed), backend)}


def add_arguments(p):
    p.add_argument("--clip", type=float, default=None,
                   help="activation clipping bound (default: off; the official models clip at 1.5)")


def configure(cfg, args):
    clip = getattr(args, "clip", None)
    return cfg if clip is None else dataclasses.replace(cfg, clip=None if clip <= 0 else float(clip))


def _setup(ctx, cfg, results):
    model, params = trained_model(ctx, results["model"])
    notes = [] if cfg.clip == 1.5 else [f"activation clip {cfg.clip} (paper 1.5): with the clip the one-layer "
                                        "model exploits the clipping of its output and ends below the GD curve"]
    return model, params, train_summary(results["model"]), notes


# ---------------------------------------------------------------------------------------------- fig1
def analyse_fig1(ctx, cfg, results) -> dict:
    model, params, metrics, notes = _setup(ctx, cfg, results)
    mcfg = model.config
    r = analysis.weight_readout(params, mcfg)
    C = solvers.revalg_coeffs_from_weights(*(params[f"l0.{k}"] for k in ("wq", "wk", "wv", "wo")),
                                           mcfg.input_dim, mcfg.heads)
    return {"choices": notes, "train_metrics": metrics, "n": mcfg.input_dim, "heads": mcfg.heads,
            "KQ": r.KQ, "PV": r.PV, "gd_similarity": r.gd_similarity, "gd_similarity_max": r.gd_similarity_max,
            "gd_similarity_layer": r.gd_similarity_layer, "kq_similarity": r.kq_similarity,
            "pv_similarity": r.pv_similarity, "revalg_coeffs": C,
            "notes": "KQ[h] = W_K^T W_Q (rows: key-side token slot, columns: query-side slot); PV[h] = P W_V "
                     "(rows: output coordinate, columns: value-side slot); slots of e_t = (0, s_t, s_t, s_(t-1)). "
                     "gd_similarity[h] = cos(KQ_h, G_KQ) * cos(PV_h[:n], G_PV[:n]) with G the [A1] pattern "
                     "(identity blocks KQ (3,1), (3,2) and PV (0,1), (0,2)); revalg_coeffs C[v,k,q] as in "
                     "mesa_ref.solvers.revalg_coeffs_from_weights."}


def plot_fig1(data):
    import matplotlib.pyplot as plt
    KQ, PV = np.asarray(data["KQ"]), np.asarray(data["PV"])
    H, n = KQ.shape[0], int(data["n"])
    fig, axes = plt.subplots(2, H, figsize=(3.3 * H + 0.8, 6.6), squeeze=False)
    slots = ["0", "$s_t$", "$s_t$", "$s_{t-1}$"]
    for h in range(H):
        for row, (M, title, ylab, xlab) in enumerate(
                ((KQ[h], r"$W_K^\top W_Q$", "key-side slot", "query-side slot"),
                 (PV[h], r"$P\,W_V$", "output slot", "value-side slot"))):
            ax = axes[row, h]
            v = float(np.abs(M).max()) or 1.0
            im = ax.imshow(M, cmap="RdBu_r", vmin=-v, vmax=v)
            for k in range(1, 4):
                ax.axhline(k * n - 0.5, color="k", lw=0.4, alpha=0.5)
                ax.axvline(k * n - 0.5, color="k", lw=0.4, alpha=0.5)
            ticks = [(k + 0.5) * n - 0.5 for k in range(4)]
            ax.set_xticks(ticks, slots, fontsize=7)
            ax.set_yticks(ticks, slots, fontsize=7)
            ax.set_xlabel(xlab, fontsize=8)
            ax.set_ylabel(ylab, fontsize=8)
            sim = data["kq_similarity" if row == 0 else "pv_similarity"][h]
            ax.set_title(f"head {h + 1}: {title}\ncos with GD pattern {sim:.2f}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
    sims = ", ".join(f"{s:.2f}" for s in data["gd_similarity"])
    fig.suptitle(f"Fig. 1 - trained one-layer linear attention on constructed tokens [T2] (n = {n}); {mode_line(data)}\n"
                 f"GD similarity per head = cos(W_K^T W_Q, GD) x cos(P W_V, GD), the panels' two cosines: {sims}",
                 fontsize=10)
    fig.tight_layout()
    return fig


EXPERIMENT_FIG1 = Experiment(FIG1, "Fig. 1: weights W_K^T W_Q and P W_V of a trained one-layer linear model on [T2] [P2]",
                             MODES, jobs, analyse_fig1, plot_fig1, add_arguments, configure)


# ---------------------------------------------------------------------------------------------- fig2
def analyse_fig2(ctx, cfg, results) -> dict:
    model, params, metrics, notes = _setup(ctx, cfg, results)
    mcfg, task, seeds, B = model.config, cfg.linear_task(), cfg.eval_seeds, cfg.eval_batch
    n = mcfg.input_dim
    tune = task.batch(ctx.rng(7), cfg.tune_batch, np.float64)
    tuned = tune_baselines(task, tune)
    batches = eval_batches(ctx, task, seeds, B)
    preds = baseline_predictions(task, batches, tuned, ["gd", "lsq"])
    preds["model"] = model_predictions(ctx, model, params, batches)
    # [A5] read off the weights, and fitted on the tuning batch
    C_read = solvers.revalg_coeffs_from_weights(*(params[f"l0.{k}"] for k in ("wq", "wk", "wv", "wo")), n,
                                                mcfg.heads)
    s_tune, _ = task.baseline_inputs(tune[0])
    C_fit = solvers.revalg_fit(s_tune, np.asarray(tune[1], np.float64))
    preds["revalg"], preds["revalg_fit"] = [], []
    for x, _ in batches:
        s, _ = task.baseline_inputs(x)
        preds["revalg"].append(solvers.revalg_predict(s, C_read))
        preds["revalg_fit"].append(solvers.revalg_predict(s, C_fit))
    if mcfg.clip is not None:   # the model's output is clipped; so are the baselines it is compared with here
        for k in ("revalg", "revalg_fit"):
            preds[k] = [np.clip(p, -mcfg.clip, mcfg.clip) for p in preds[k]]
    order = ["model", "gd", "revalg", "revalg_fit", "lsq"]
    out = summarise({k: preds[k] for k in order}, batches)
    # [A5] interpolation in product form: trained -> cleaned reading, trained -> GD construction
    alphas = np.linspace(0.0, 1.0, 11)
    KQ, PV = analysis.weight_products(params, mcfg)
    KQg, PVg, eta_implied = analysis.gd_project(KQ, PV, n)
    interp = {"alpha": alphas.tolist(),
              "to_revalg": analysis.product_interpolation_losses(mcfg, params, "revalg", alphas, batches,
                                                                 ops=ctx.ops).tolist(),
              "to_gd": analysis.product_interpolation_losses(mcfg, params, (KQg, PVg), alphas, batches,
                                                             ops=ctx.ops).tolist(),
              "gd_eta_implied": eta_implied}
    r = analysis.weight_readout(params, mcfg)
    return {"choices": notes, "train_metrics": metrics, "tuned": tuned, **out,
            "model_vs_gd_ratio_t10": ratio_after(out["per_step_loss"], "model", "gd"),
            "model_vs_lsq_ratio_t10": ratio_after(out["per_step_loss"], "model", "lsq"),
            "revalg_coeffs_read": C_read, "revalg_coeffs_fit": C_fit, "interpolation": interp,
            "gd_similarity": r.gd_similarity, "gd_similarity_max": r.gd_similarity_max,
            "notes": "per_step_loss[m][t-1]: loss at time t (sum over sequences and dims / (2B)), mean over the "
                     "evaluation seeds; per_step_spread: std over seeds. model_vs_gd_ratio_t10 = mean_{t>=10} "
                     "model / mean_{t>=10} gd. revalg: [A5] with coefficients read off the trained weights; "
                     "revalg_fit: fitted by least squares on the tuning batch. interpolation: mean loss along "
                     "straight lines (in product form, mesa_ref.analysis.product_interpolation_losses) from "
                     "the trained weights (alpha 0) to their cleaned [A5] reading / their GD component (each head "
                     "projected onto the [A1] pattern, mesa_ref.analysis.gd_project; a GD step with eta = "
                     "interpolation.gd_eta_implied) (alpha 1)."}


STYLES = {"model": dict(color="C0", lw=2.2, label="trained 1-layer linear attention"),
          "gd": dict(color="C1", ls="--", lw=1.6, label="[A1] one GD step (tuned eta)"),
          "revalg": dict(color="C2", ls=":", lw=1.6, label="[A5] reverse-engineered (read off weights)"),
          "revalg_fit": dict(color="C4", ls="-.", lw=1.2, label="[A5] reverse-engineered (fitted)"),
          "lsq": dict(color="k", lw=1.4, label="[A3] least squares (tuned lam)")}


def plot_fig2(data):
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.6, 1]})
    seed_band(ax, data, "per_step_loss.model", color=STYLES["model"]["color"])     # before the legend is made
    plot_per_step(ax, data["per_step_loss"], data.get("per_step_spread"), styles=STYLES)
    r = data.get("model_vs_gd_ratio_t10")
    ax.set_title("per-time-step loss on [T1] (filled bands: +-1 std over evaluation seeds)"
                 + (f"\nmodel / GD averaged over t >= 10: {r:.3f}{seed_text(data, 'model_vs_gd_ratio_t10')}"
                    if r is not None else ""), fontsize=10)
    it = data["interpolation"]
    ax2.plot(it["alpha"], it["to_revalg"], "o-", color="C2", label="trained -> [A5] cleaned reading")
    ax2.plot(it["alpha"], it["to_gd"], "s-", color="C1", label="trained -> its [A1] GD component")
    ax2.axhline(data["final_loss"]["model"], color="C0", lw=1, ls=":", label="trained model")
    ax2.axhline(data["final_loss"]["gd"], color="C1", lw=1, ls=":", label="GD (tuned eta)")
    label_axes(ax2, "interpolation alpha (0: trained weights, 1: constructed)", "test loss (MSE / 2, mean over t)",
               "[A5] loss along weight interpolation", title_size=10)
    fig.suptitle("Fig. 2 - a trained one-layer linear self-attention layer implements one step of gradient "
                 f"descent\n{mode_line(data)}", fontsize=11)
    fig.tight_layout()
    return fig


EXPERIMENT_FIG2 = Experiment(FIG2, "Fig. 2: per-time-step loss of a trained one-layer linear model vs one GD step, "
                             "[A5], least squares", MODES, jobs, analyse_fig2, plot_fig2, add_arguments, configure)
