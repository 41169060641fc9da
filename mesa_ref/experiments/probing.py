"""Figure 4: linear probes [P1] across the layers of a deep linear and a deep softmax Transformer on [T1].

Two models are trained and probed:

* ``linear``: a deep linear-attention model [L2] on constructed tokens [T2] (the official architecture: no MLP,
  no LayerNorm, activations clipped to +-1.5, weights N(0, init_std^2)).
* ``softmax``: the full Transformer (softmax attention [L3], GELU MLP [L5], pre-LayerNorm [L4], a linear
  embedding of the raw states and sinusoidal positional encoding [L7], no clipping) on raw tokens [T1], so an
  early layer must build the pair (s_t, s_{t-1}) itself (figure 5 looks at it in a two-layer model).

For every residual stream (layer 0 = input, layer l = after block l) and position t, least-squares probes
(mesa_ref.probing) are fitted on ``probe_train`` fresh sequences and scored on ``probe_test`` others; the error is
the normalised MSE (MSE / variance of the target over the test sequences, per t) averaged over t = 1..T (t = 2..T
for "previous": s_0 = 0 has no variance).  Targets: s_t ("current"),
s_{t-1} ("previous"), s_{t+1} ("next"), (X_t X_t^T + lam I)^{-1} s_t ("inverse_curvature", lam = 1e-3, the
official probe lam).  ``control`` is the inverse-curvature target probed from the input tokens alone (the token
at position t), repeated at every layer so that it plots as a reference line; ``control_by_target`` gives the
input-token control for every target.  Every layer of the softmax model is also linearised [P4] in turn:
replaced by a linear attention fitted to its outputs, with the test-loss change reported (``linearisation``, with
the loss when the layer's attention output is removed for scale).

Full mode (no --quick, for the fast backend): the official data (n = 10, T = 50, sigma = 0.01, batch 256) and
optimiser (AdamW, lr 3e-4, 1000 warm-up steps, cosine decay to 1e-5 at step 20000, weight decay 0.05, clipping
at 1), 20000 steps; linear model 6 layers x 4 heads, width 40, key size 20, init N(0, 0.0002^2); softmax model
6 layers x 4 heads, width 64, key size 16, MLP factor 4, init N(0, 0.02^2) (our choice: the paper does not
state the softmax model's sizes); probes on 2048 training and 1024 test sequences.

Quick mode (CPU, a few minutes) deviates from that, and the JSON's config records every value: n = 4, T = 12,
batch 32, peak lr 3e-3 with 100 warm-up steps and cosine decay to lr/10 at the last step, init N(0, 0.02^2),
linear model 4 layers x 2 heads of key size 8 (width 4n = 16) trained 1500 steps, softmax model 3 layers x 1
head, width 32, key size 32, MLP factor 2, trained 2000 steps; probes on 2048 / 512 sequences; linearisation fit
with 200 Adam steps on 192 sequences (full: 500 steps on 512).  Measured: about 1.5-2 minutes on the 2-core CPU
under heavy load from other processes (35-48 s of CPU time).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..config import ModelConfig
from ..data import linear_dynamics
from ..probing import PROBE_LAM, linearise_layer, probe_model
from ..train import DynamicsTask, TrainConfig, train

NAME = "fig4_probing"
DESCRIPTION = ("Figure 4: least-squares probes [P1] across the layers of a deep linear model (constructed tokens) and a "
               "deep softmax Transformer (raw tokens) on linear dynamics [T1]; linearisation [P4] of the softmax layers.")

# sizes: "smoke" is for tests only (seconds); "quick" runs on a CPU in minutes; "full" is the paper's scale
SIZES = {
    "full": dict(n=10, T=50, sigma=0.01, batch=256, lr=3e-4, warmup=1000, decay=20000, final_lr=1e-5,
                 linear=dict(layers=6, heads=4, key_size=20, init_std=0.0002, steps=20000),
                 softmax=dict(layers=6, heads=4, width=64, key_size=16, mlp_factor=4, init_std=0.02, steps=20000),
                 probe_train=2048, probe_test=1024, lin_fit=512, lin_eval=512, lin_steps=500, lin_lr=1e-2,
                 eval_every=500, test_batches=10),
    "quick": dict(n=4, T=12, sigma=0.01, batch=32, lr=3e-3, warmup=100, decay=None, final_lr=None,
                  linear=dict(layers=4, heads=2, key_size=8, init_std=0.02, steps=1500),
                  softmax=dict(layers=3, heads=1, width=32, key_size=32, mlp_factor=2, init_std=0.02, steps=2000),
                  probe_train=2048, probe_test=512, lin_fit=192, lin_eval=256, lin_steps=200, lin_lr=2e-2,
                  eval_every=250, test_batches=10),
    "smoke": dict(n=3, T=6, sigma=0.01, batch=8, lr=3e-3, warmup=2, decay=None, final_lr=None,
                  linear=dict(layers=2, heads=1, key_size=4, init_std=0.02, steps=4),
                  softmax=dict(layers=2, heads=1, width=8, key_size=8, mlp_factor=1, init_std=0.02, steps=4),
                  probe_train=40, probe_test=20, lin_fit=8, lin_eval=8, lin_steps=3, lin_lr=2e-2, eval_every=2,
                  test_batches=2),
}


def sizes_for(ctx) -> tuple[str, dict]:
    mode = "smoke" if getattr(ctx.args, "smoke", False) else ("quick" if ctx.quick else "full")
    return mode, SIZES[mode]


def linear_config(S: dict) -> ModelConfig:
    """The deep linear model on constructed tokens [T2] (official architecture)."""
    m = S["linear"]
    return ModelConfig(layers=("linear",) * m["layers"], heads=m["heads"], width=4 * S["n"], key_size=m["key_size"],
                       input="constructed", input_dim=S["n"], output_dim=S["n"], init_std=m["init_std"])


def softmax_config(S: dict) -> ModelConfig:
    """The full softmax Transformer on raw tokens: softmax attention, MLP, LayerNorm, embedding, positional encoding."""
    m = S["softmax"]
    return ModelConfig(layers=("softmax",) * m["layers"], heads=m["heads"], width=m["width"], key_size=m["key_size"],
                       mlp=True, mlp_factor=m["mlp_factor"], layernorm=True, clip=None, input="embed",
                       input_dim=S["n"], output_dim=S["n"], pos_enc=True, init_std=m["init_std"])


def train_config(S: dict, steps: int, seed: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch=S["batch"], lr=S["lr"], warmup_steps=min(S["warmup"], steps),
                       decay_steps=S["decay"] or steps, final_lr=S["final_lr"] if S["final_lr"] is not None else S["lr"] / 10,
                       eval_every=min(S["eval_every"], steps), test_batches=S["test_batches"],
                       checkpoint_every=10 ** 9, seed=seed)


def train_model(ctx, S: dict, kind: str, seed_stream: int, run_name: str | None = None):
    """Train the ``kind`` ("linear" | "softmax") model of sizes S; returns (model, params (host), metrics, record).
    With ``run_name`` and outside quick/smoke mode the run directory OUT/runs/<run_name> gets config.json,
    metrics.json and checkpoint.npz (mesa_ref.train)."""
    cfg = linear_config(S) if kind == "linear" else softmax_config(S)
    task = DynamicsTask(n=S["n"], T=S["T"], sigma=S["sigma"], tokens="constructed" if kind == "linear" else "raw")
    seed = int(ctx.rng(seed_stream).integers(2 ** 31))
    tcfg = train_config(S, S[kind]["steps"], seed)
    model = ctx.model(cfg)
    run_dir = None
    if run_name is not None and not ctx.quick and not getattr(ctx.args, "smoke", False):
        run_dir = ctx.out / "runs" / run_name
        tcfg = dataclasses.replace(tcfg, checkpoint_every=2000)
    res = train(model, task, tcfg, run_dir, progress=ctx.progress, dtype=np.float32, xp=ctx.xp)
    params = {k: (v.get() if hasattr(v, "get") else v) for k, v in res.params.items()}
    host_model = _host_model(ctx, cfg)
    record = {"model": cfg.to_dict(), "train": dataclasses.asdict(tcfg), "task": task.to_dict()}
    return host_model, params, res.metrics, record


def _host_model(ctx, cfg):
    """Analyses run on host arrays: the reference ops when the run's arrays live on a GPU."""
    if ctx.xp is np:
        return ctx.model(cfg)
    from ..model import Transformer
    from .. import ops
    return Transformer(cfg, ops=ops)


def probe_sets(ctx, S: dict, stream: int):
    """Fresh [T1] sequences for the probes: (train states, test states), each (N, T+1, n)."""
    tr = linear_dynamics(ctx.rng(stream, 0), S["probe_train"], S["T"], S["n"], S["sigma"]).states
    te = linear_dynamics(ctx.rng(stream, 1), S["probe_test"], S["T"], S["n"], S["sigma"]).states
    return tr, te


def probe_summary(res) -> dict:
    out = res.mean_over_t()
    L1 = len(next(iter(out.values())))
    ctrl = res.control_mean_over_t()
    out["control"] = [ctrl["inverse_curvature"]] * L1
    return out


def compute(ctx) -> dict:
    mode, S = sizes_for(ctx)
    tr, te = probe_sets(ctx, S, 100)
    probe_error, per_t, control_by_target, training, configs, linearisation = {}, {}, {}, {}, {}, []
    for kind, stream in (("linear", 1), ("softmax", 2)):
        model, params, metrics, record = train_model(ctx, S, kind, stream, run_name=f"{NAME}_{kind}")
        res = probe_model(model, params, tr, te, tokens="constructed" if kind == "linear" else "raw", lam=PROBE_LAM)
        probe_error[kind] = probe_summary(res)
        per_t[kind] = {k: v.tolist() for k, v in res.per_t.items()}
        control_by_target[kind] = res.control_mean_over_t()
        training[kind] = {"initial_test_loss": metrics["initial_test_loss"], "final_test_loss": metrics["final_test_loss"],
                          "step": metrics["step"], "test_loss": metrics["test_loss"]}
        configs[kind] = record
        if kind == "softmax":
            rng = ctx.rng(300)
            fit = linear_dynamics(rng, S["lin_fit"], S["T"], S["n"], S["sigma"], dtype=np.float32)
            ev = linear_dynamics(rng, S["lin_eval"], S["T"], S["n"], S["sigma"], dtype=np.float32)
            x_fit = np.ascontiguousarray(fit.inputs)
            x_ev, y_ev = np.ascontiguousarray(ev.inputs), np.ascontiguousarray(ev.targets)
            for i in range(len(model.config.layers)):
                r = linearise_layer(model, params, i, x_fit, x_ev, y_ev, steps=S["lin_steps"], lr=S["lin_lr"])
                linearisation.append(r.to_dict())
    return {
        "probe_error": probe_error,
        "probe_error_per_t": per_t,
        "control_by_target": control_by_target,
        "error_measure": "normalised MSE (MSE / variance of the target over the held-out sequences), per position t, "
                         "averaged over t = 1..T; layer 0 = input (after embedding / positional encoding)",
        "control_definition": "inverse_curvature target probed from the input token at position t alone, "
                              "repeated per layer; control_by_target has every target",
        "probe_lam": PROBE_LAM,
        "linearisation": {"softmax": linearisation,
                          "method": f"each softmax layer in turn replaced by a linear attention fitted to its block output "
                                    f"on {S['lin_fit']} sequences: W_Q, W_K, W_V start from the layer's, W_O is the "
                                    f"least-squares solution at every step, {S['lin_steps']} Adam steps (relative step "
                                    f"{S['lin_lr']}) on the normalised MSE; losses (official MSE / 2) on "
                                    f"{S['lin_eval']} other sequences; loss_removed: the layer's attention output set to 0"},
        "training": training,
        "config": {"mode": mode, "sizes": S, "models": configs, "probe_train": S["probe_train"],
                   "probe_test": S["probe_test"],
                   "deviations_from_paper": None if mode == "full" else
                   "quick/smoke: smaller n, T, batch, depth and width; lr 3e-3 with short warm-up and cosine to lr/10; "
                   "init N(0, 0.02^2); fewer steps and probe sequences (see sizes)"},
    }


TARGET_STYLE = {"current": dict(color="C0", marker="o"), "previous": dict(color="C1", marker="s"),
                "next": dict(color="C2", marker="^"), "inverse_curvature": dict(color="C3", marker="D", lw=2.5),
                "control": dict(color="0.4", ls="--")}


def plot(data):
    import matplotlib.pyplot as plt
    pe = data["probe_error"]
    models = [m for m in ("linear", "softmax") if m in pe]
    lin = (data.get("linearisation") or {}).get("softmax") or []
    ncol = len(models) + 1 + (1 if lin else 0)
    fig, axes = plt.subplots(1, ncol, figsize=(5 * ncol, 4))
    titles = {"linear": "deep linear model, constructed tokens", "softmax": "softmax Transformer, raw tokens"}
    for ax, m in zip(axes, models):
        for tname, ys in pe[m].items():
            ax.plot(range(len(ys)), ys, label=tname, **TARGET_STYLE.get(tname, {}))
        ax.set_xlabel("layer (0 = input)")
        ax.set_ylabel("held-out probe error (normalised MSE)")
        ax.set_title(titles.get(m, m), fontsize=10)
        ax.set_xticks(range(len(next(iter(pe[m].values())))))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[len(models)]
    curves = data["probe_error_per_t"]["linear"]["inverse_curvature"]
    cmap = plt.get_cmap("viridis")
    for l, ys in enumerate(curves):
        ax.plot(range(1, len(ys) + 1), ys, color=cmap(l / max(1, len(curves) - 1)), label=f"layer {l}")
    ax.set_xlabel("time step t")
    ax.set_ylabel("inverse-curvature probe error")
    ax.set_title("linear model: (X_t X_t^T + lam I)^-1 s_t per t", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if lin:
        ax = axes[-1]
        idx = np.arange(len(lin))
        for j, (key, label) in enumerate((("loss_original", "as trained"), ("loss_linearised", "layer linearised"),
                                          ("loss_removed", "layer removed"))):
            ax.bar(idx + (j - 1) * 0.27, [r[key] for r in lin], width=0.27, label=label)
        ax.set_xticks(idx, [f"layer {r['layer'] + 1}" for r in lin])
        ax.set_ylabel("test loss (MSE / 2)")
        ax.set_title("softmax model: linearising one layer [P4]", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Probing across layers [P1]" + (" (quick run)" if data.get("quick") else ""))
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    from .common import run_figure
    return run_figure(NAME, compute, plot, DESCRIPTION, argv=argv)
