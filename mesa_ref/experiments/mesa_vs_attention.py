"""Figure 7: the mesa-layer [M1] against linear [L2] and softmax [L3] attention on [T1], [T3] and [T4].

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858.

Per task, [P3] per-time-step loss of trained models ``mesa_L<L>``, ``linear_L<L>``, ``softmax_L<L>``
(L layers) against [A3] tuned least squares ``lsq`` and [A1] one GD step ``gd``.  One mesa layer
should match least squares on [T1].

Tasks: [T1] linear dynamics with constructed tokens [T2]; [T3] partially observed dynamics
(m < n observations, tokens = the last k observations, linear embedding; softmax models add the
sinusoidal positional encoding [L7]); [T4] nonlinear dynamics with constructed tokens.  Baselines
regress on the task's natural inputs: [T1] s_{t'} on s_{t'-1}; [T3] o_{t'} on the history token of
t'-1; [T4] s_{t'} on the true features phi(s_{t'-1}) (``lsq``, an oracle the models lack) and on the raw
states (``lsq_linear``).

JSON layout: ``tasks`` maps "T1", "T3", "T4" to {per_step_loss, per_step_spread, final_loss,
final_spread, tuned, ...}; the top-level ``per_step_loss``/``final_loss``/``per_step_spread`` are
[T1]'s (method -> list of T floats / float), so the [T1] curves are where the figure contract looks.

Configurations (recorded in the JSON, deviations listed):

* both: activation clipping off (official 1.5): the clip also clips the read-out prediction, and about
  1% of the [T1] state entries exceed 1.5, so with the clip even the exact ridge construction in a
  mesa layer scores 1.36x least squares over t >= 10 (1.00x without; measured on the quick sizes).
* full: n = 10, T = 50, every task with L = 1 and 2 of each kind, 4 heads, key size 20,
  init std 0.0002, AdamW lr 3e-4 (4e-4 for mesa), 1000 warm-up steps, cosine to 1e-5 at 20000,
  batch 256, 20000 steps; [T3] m = 5, k = 4; evaluation seeds 1, 11, 111, 1111, 11111 x 256.
* quick: n = 6, T = 30, one head of key size 6 (the mesa-layer needs d >= n), batch 64, init std 0.02 for
  the attention models and the paper's 0.0002 for the mesa models; [T1] all six models, [T3] and [T4] the
  one-layer models only; attention models 300 steps at lr 3e-3 (30 warm-up steps, cosine to 3e-5);
  mesa models lr 3e-3 (10% warm-up, cosine to 3e-6), lam initialised to 1e-3 (paper 1), no weight decay,
  lam's parameter stepping at 30x the learning rate (``TrainConfig.lr_scale``), 20000 steps for the [T1]
  one-layer model (the one the figure's claim is about) and 3000 for the others; [T3] m = 3, k = 4;
  evaluation seeds 1, 11, 111 x 128; tuning batch 256.

Why the mesa recipe (measured on the quick sizes, float32, [T1] one-layer model; "ratio" = mean_{t>=10}
model / least squares): with the first quick recipe (600 steps at lr 1e-2, one rate for every parameter)
the ratio was 4.8 although the mean over all t was within 4%.  The layer's effective regulariser
lam / |W_K|^2 settles near 0.1 (least squares' tuned lam is 6e-4).  The reason is the first token:
s_0 = 0, so k_1 is made only of the key weights' stray components on the s_t blocks; with a small lam
the pair (k_1, v_1 = s_1) is fitted exactly and its 1/|k_1| gain spoils the early predictions (loss
2.96 instead of 1.0 at t = 1 with lam = 2e-4), so lam can fall only as fast as those stray components
shrink, and they shrink at the pace of the (decaying) learning rate.  Zeroing them by hand lets lam
fall to 2e-4 and the all-t loss improve.  The loss differences that lam controls are at t >= n, tiny
next to the t < n part of the training loss, so lam's gradient is weak and noisy: a long schedule
that ends at a small learning rate, plus a larger step for lam's one parameter, is what gets there.
Measured (seed 0 unless said): 600 steps 4.7; 2000 steps 2.0 (lam step x10); 20000 steps at lr
1e-3 -> 1e-5 (lam step x1): effective lam 0.016; 20000 steps at lr 3e-3 -> 3e-6: 1.17 (lam step x1),
1.075 (x10; seed 1: 1.073), 1.050 (x30).
With its weights set to the exact construction (key s_{t-1}, query and value s_t, lam = the tuned one)
the layer scores 1.00x least squares.
"""
from __future__ import annotations


import numpy as np

from ..config import ModelConfig
from ..train import TrainConfig
from .common import plot_per_step, run_figure
from .dynamics import (EVAL_SEEDS, LinearTask, NonlinearTask, PartialTask, eval_batches, evaluate_models,
                       ratio_after, train_cached, tune_baselines)

NAME = "fig7_mesa_vs_attention"
KINDS = ("mesa", "linear", "softmax")
CLIP_NOTE = ("activation clipping off (paper 1.5): the clip also clips the prediction, and about 1% of the "
             "[T1] state entries exceed 1.5, which puts a floor above least squares' noise level at late t "
             "(the exact ridge construction in a mesa layer scores 1.36x least squares over t >= 10 with the "
             "clip, 1.00x without)")


def setup(ctx):
    """(task specs: [(task name, task, base model config, [(model name, config, train config)])], eval seeds,
    eval batch, tune batch, deviations)."""
    seed = ctx.seed
    smoke = getattr(ctx.args, "smoke", False)
    if smoke or ctx.quick:
        n, T = (3, 12) if smoke else (6, 30)
        m, k = (2, 2) if smoke else (3, 4)
        B, steps = (16, 10) if smoke else (64, 300)

        def tc(mesa, long=False):
            if mesa:   # see the module docstring: the [T1] one-layer mesa model gets the paper's step count
                s = 10 if smoke else (20000 if long else 3000)
                lr, final, scale = 3e-3, 3e-6, (("lam_raw", 30.0),)
            else:
                s, lr, final, scale = steps, 3e-3, 3e-5, ()
            return TrainConfig(steps=s, batch=B, lr=lr, warmup_steps=max(1, s // 10), decay_steps=s,
                               final_lr=final, weight_decay=0.0 if mesa else 0.05, lr_scale=scale,
                               eval_every=max(1, s // 3), test_batches=1 if smoke else 2,
                               checkpoint_every=10 ** 6, seed=seed)
        mk = dict(heads=1, key_size=n, init_std=0.02, mesa_lam_init=1e-3, clip=None)
        init_mesa = 2e-4
        depths = {"T1": (1, 2), "T3": (1,), "T4": (1,)}
        seeds, Be, Bt = (EVAL_SEEDS[:2], 16, 32) if smoke else (EVAL_SEEDS[:3], 128, 256)
        dev = ["smoke test sizes"] if smoke else [
            "n = 6, T = 30 (paper 10, 50)", "1 head, key size 6 (paper 4, 20)",
            "init std 0.02 for attention models (paper 0.0002; mesa models keep 0.0002)",
            "[T3]/[T4]: one-layer models only (paper 1 and 2 layers)",
            "batch 64 (paper 256); attention models 300 steps at lr 3e-3, warm-up 30, cosine to 3e-5 "
            "(paper 20000 steps at 3e-4, warm-up 1000, cosine to 1e-5)",
            "mesa models: lr 3e-3, warm-up 10%, cosine to 3e-6; 20000 steps for the [T1] one-layer model "
            "(the paper's count), 3000 for the others (paper 20000 at 4e-4)",
            "mesa models: lam's parameter steps with 30x the learning rate (paper: one rate), lam initialised to "
            "1e-3 (paper 1), no weight decay (paper 0.05)",
            "3 evaluation seeds x 128 sequences (paper 5 x 256); tuning batch 256 (paper 512)"] + [CLIP_NOTE]
    else:
        n, T, m, k = 10, 50, 5, 4

        def tc(mesa, long=False):
            return TrainConfig(steps=20000, lr=4e-4 if mesa else 3e-4, seed=seed)
        mk = dict(heads=4, key_size=20, clip=None)
        init_mesa = ModelConfig.init_std
        depths = {"T1": (1, 2), "T3": (1, 2), "T4": (1, 2)}
        seeds, Be, Bt, dev = EVAL_SEEDS, 256, 512, [CLIP_NOTE]
    con = dict(input="constructed", width=4 * n, input_dim=n, output_dim=n)
    tasks = [("T1", LinearTask(n=n, T=T), ModelConfig(**con, **mk)),
             ("T3", PartialTask(n=n, m=m, k=k, T=T),
              ModelConfig(input="embed", width=4 * n, input_dim=k * m, output_dim=m, **mk)),
             ("T4", NonlinearTask(n=n, T=T), ModelConfig(**con, **mk))]
    specs = []
    for tname, task, base in tasks:
        models = []
        for L in depths[tname]:
            for kind in KINDS:
                cfg = base.replace(layers=(kind,) * L, pos_enc=(kind == "softmax" and base.input == "embed"),
                                   init_std=init_mesa if kind == "mesa" else base.init_std)
                models.append((f"{kind}_L{L}", cfg, tc(kind == "mesa", long=(tname == "T1" and L == 1))))
        specs.append((tname, task, base, models))
    return specs, seeds, Be, Bt, dev


def compute(ctx) -> dict:
    specs, seeds, B, Btune, dev = setup(ctx)
    tasks, config = {}, {"eval_seeds": list(seeds), "eval_batch": B, "tune_batch": Btune, "deviations": dev,
                         "tasks": {}}
    for tname, task, base, models in specs:
        trained, metrics, lams = {}, {}, {}
        for name, cfg, tcfg in models:
            model, params, mt = train_cached(ctx, cfg, task, tcfg, f"{tname}_{name}")
            trained[name] = (model, params)
            metrics[name] = mt
            if name.startswith("mesa"):
                lams[name] = [np.asarray(model.mesa_lam(params, i)).tolist() for i in range(len(cfg.layers))]
        tune = task.batch(ctx.rng(7, int(tname[1:])), Btune, np.float64)
        tuned = tune_baselines(task, tune)
        baselines = ["gd", "lsq"] + (["lsq_linear"] if "lam_linear" in tuned else [])
        batches = eval_batches(ctx, task, seeds, B)
        out = evaluate_models(ctx, task, trained, batches, tuned, baselines)
        out["ratio_to_lsq_t10"] = {name: ratio_after(out["per_step_loss"], name, "lsq") for name, _, _ in models}
        tasks[tname] = {**out, "tuned": tuned, "train_metrics": metrics, "mesa_lam": lams}
        config["tasks"][tname] = {"task": task.to_dict(), "models": {name: {"model": cfg.to_dict(), "train": {
            f: getattr(tc, f) for f in tc.__dataclass_fields__}} for name, cfg, tc in models}}
    t1 = tasks["T1"]
    return {"config": config, "per_step_loss": t1["per_step_loss"], "per_step_spread": t1["per_step_spread"],
            "final_loss": t1["final_loss"], "tasks": tasks,
            "mesa_vs_lsq_ratio_t10": ratio_after(t1["per_step_loss"], "mesa_L1", "lsq"),
            "mesa_vs_linear_ratio_t10": ratio_after(t1["per_step_loss"], "mesa_L1", "linear_L1"),
            "notes": "top-level per_step_loss/final_loss are task [T1]'s; tasks[<T>] holds every task. "
                     "per_step_loss[m][t-1]: loss at time t (sum over sequences and dims / (2B)), mean over the "
                     "evaluation seeds; per_step_spread: std over seeds; final_loss: mean over t. "
                     "mesa_vs_lsq_ratio_t10 = mean_{t>=10} mesa_L1 / mean_{t>=10} lsq on [T1]."}


def _styles(names):
    col = {"mesa": "C3", "linear": "C0", "softmax": "C2"}
    st = {}
    for k in names:
        if "_L" in k and k.split("_L")[0] in col:
            kind, L = k.split("_L")
            st[k] = dict(color=col[kind], lw=2.2 if L == "1" else 1.4, ls="-" if L == "1" else "--",
                         label=f"{kind}, {L} layer{'s' if L != '1' else ''}")
    st["lsq"] = dict(color="k", lw=1.4, label="[A3] least squares (tuned lam)")
    st["lsq_linear"] = dict(color="0.5", lw=1.2, ls="-.", label="[A3] least squares on the current state / observation only")
    st["gd"] = dict(color="C1", ls=":", lw=1.4, label="[A1] one GD step")
    return st


TITLES = {"T1": "[T1] linear dynamics", "T3": "[T3] partially observed", "T4": "[T4] nonlinear dynamics"}


def plot(data):
    import matplotlib.pyplot as plt
    names = list(data["tasks"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.6), squeeze=False)
    for ax, tname in zip(axes[0], names):
        t = data["tasks"][tname]
        plot_per_step(ax, t["per_step_loss"], t.get("per_step_spread"), styles=_styles(t["per_step_loss"]))
        ax.set_title(TITLES.get(tname, tname), fontsize=10)
    r = data.get("mesa_vs_lsq_ratio_t10")
    fig.suptitle("Fig. 7 - mesa-layer vs linear and softmax attention, against least squares"
                 + (f"\n[T1]: mesa (1 layer) / least squares averaged over t >= 10 = {r:.3f}" if r else "")
                 + "  (bands: +-1 std over evaluation seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    desc = "Fig. 7: mesa-layer vs linear and softmax attention on [T1], [T3], [T4] against least squares"
    return run_figure(NAME, compute, plot, desc, argv=argv)
