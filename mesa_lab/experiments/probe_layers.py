"""Figure 4: linear probes [P1] across the layers of a deep linear and a deep softmax Transformer on [T1].

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858.

Two trained models (two jobs) are probed:

* ``linear``: a deep linear-attention model [L2] on constructed tokens [T2] (the official architecture: no MLP,
  no LayerNorm, activations clipped to +-1.5, weights N(0, init_std^2)).  At full size it is figure 3's
  six-layer model: the job is built by ``depth.jobs`` from figure 3's own configuration, so the two figures
  share one training run.
* ``softmax``: the full Transformer (softmax attention [L3], GELU MLP [L5], pre-LayerNorm [L4], a linear
  embedding of the raw states and sinusoidal positional encoding [L7], no activation clipping) on raw tokens
  [T1], so an early layer must build the pair (s_t, s_{t-1}) itself (figure 5 looks at it in a two-layer model).

Analysis (``analyse``, no training): for every residual stream (layer 0 = input, layer l = after block l) and
position t, least-squares probes (mesa_ref.probing) are fitted on ``probe_train`` fresh sequences and scored
on ``probe_test`` others; the error is the normalised MSE (MSE / variance of the target over the test
sequences, per t) averaged over t = 1..T (t = 2..T for "previous": s_0 = 0 has no variance).  Targets: s_t
("current"), s_{t-1} ("previous"), s_{t+1} ("next"), (X_t X_t^T + lam I)^{-1} s_t ("inverse_curvature",
lam = 1e-3, the official probe lam).  ``control`` is the inverse-curvature target probed from the input
tokens alone (the token at position t), repeated at every layer so that it plots as a reference line;
``control_by_target`` gives the input-token control for every target.  Every layer of the softmax model is
also linearised [P4] in turn: replaced by a linear attention fitted to its outputs, with the test-loss change
reported (``linearisation``, with the loss when the layer's attention output is removed for scale).

Configurations: ``FULL`` uses the paper's data (n = 10, T = 50, sigma = 0.01, batch 256) and optimiser (AdamW,
lr 3e-4, 1000 warm-up steps, cosine decay to 1e-5 at step 20000, weight decay 0.05, gradient clipping at 1),
20000 steps for both models; the linear model is figure 3's (6 layers x 4 heads, width 40, key size 20, init
N(0, 0.0002^2), clip 1.5).  Our choices, since the paper does not state them: the softmax model's sizes (6
layers x 4 heads, width 64, key size 16, MLP factor 4, init N(0, 0.02^2)), the number of probe sequences
(2048 training, 1024 test) and the linearisation fit (``LIN_NOTE``: 200 Adam steps at relative step 2e-2 on
128 sequences, losses on 512 others).  The fit is part of the analysis, which reruns whenever the figure is
redrawn from stored results; the earlier setting, 500 steps on 512 sequences, costs about six times as much
at the full width and alone would take longer than a redraw of every figure may.  ``QUICK`` (CPU, minutes)
and ``SMOKE`` (tests) shrink the sizes, raise the learning rate and the initialisation scale; the JSON's
``config.deviations`` lists every field where they differ from ``FULL`` ("full size", since ``FULL`` holds
our choices beside the paper's settings).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mesa_ref.config import ModelConfig
from mesa_ref.data import linear_dynamics
from mesa_ref.probing import PROBE_LAM, authors_probe, linearise_layer, probe_model
from mesa_ref.tasks import LinearTask
from mesa_ref.train import TrainConfig

from ..jobs import Job
from . import depth
from .common import Experiment, label_axes, mode_line, second_configuration, seed_band
from .dynamics import train_summary

NAME = "fig4_probing"
DESCRIPTION = ("Fig. 4: least-squares probes [P1] across the layers of a deep linear model (constructed tokens) and a "
               "deep softmax Transformer (raw tokens) on linear dynamics [T1]; linearisation [P4] of the softmax "
               "layers")
LIN_NOTE = ("[P4] linearisation fit: 200 Adam steps on 128 sequences per layer (our choice, kept small because it "
            "runs on every redraw from stored results)")
SOFTMAX_CHOICE = ("softmax model sizes (width 64, key size 16, 4 heads, MLP factor 4, pre-LayerNorm, embedding + "
                  "positional encoding, init N(0, 0.02^2)) are our choice: the paper does not state them")


# ---------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class SoftmaxRunConfig:
    """What figures 4 and 5 share: [T1] data, the optimiser, the softmax model on raw tokens and the probe sets.
    The defaults are the full sizes (the paper's data and optimiser; softmax sizes of our choosing)."""
    n: int = 10                    # state size
    T: int = 50                    # sequence length
    sigma: float = 0.01            # transition noise
    batch: int = 256
    lr: float = 3e-4               # peak learning rate (AdamW)
    warmup_steps: int = 1000
    final_lr: float = 1e-5
    weight_decay: float = 0.05
    eval_every: int = 100          # test loss every this many steps
    test_batches: int = 10
    checkpoint_every: int = 500    # long runs resume from here
    softmax_layers: int = 6
    softmax_heads: int = 4
    softmax_width: int = 64
    softmax_key_size: int = 16
    softmax_mlp_factor: int = 4
    softmax_init_std: float = 0.02
    softmax_steps: int = 20000
    softmax_decay_steps: int = 20000   # cosine decay reaches final_lr here
    probe_train: int = 2048        # sequences the probes are fitted on
    probe_test: int = 1024         # other sequences they are scored on
    softmax_kind: str = "ours"     # "ours" (softmax_model) | "authors" (a model built like theirs: AUTHORS_SOFTMAX)
    softmax_lr: float | None = None        # the softmax model's peak lr (None: lr)
    softmax_clip_mode: str = "global_norm"  # its gradient clipping ("elementwise": the authors' optax.clip)

    def train_config(self, seed: int, steps: int, decay_steps: int, **changes) -> TrainConfig:
        f = dict(steps=steps, batch=self.batch, lr=self.lr, warmup_steps=min(self.warmup_steps, steps),
                 decay_steps=decay_steps, final_lr=self.final_lr, weight_decay=self.weight_decay,
                 eval_every=min(self.eval_every, steps), test_batches=self.test_batches,
                 checkpoint_every=self.checkpoint_every, seed=seed)
        return TrainConfig(**{**f, **changes})

    def softmax_model(self) -> ModelConfig:
        """The full softmax Transformer on raw tokens: softmax attention, MLP, LayerNorm, embedding, positional
        encoding, no activation clipping.  ``softmax_kind="authors"``: the authors' probing model instead, a hybrid
        first layer (position in its queries and keys only) and softmax layers without MLP, LayerNorm, biases or
        clipping."""
        if self.softmax_kind == "authors":
            return ModelConfig(layers=("softmax",) * self.softmax_layers, heads=self.softmax_heads,
                               width=self.softmax_width, key_size=self.softmax_key_size, mlp=False, layernorm=False,
                               clip=None, input="embed", input_dim=self.n, output_dim=self.n, pos_enc_kq=True,
                               io_bias=False, init_std=self.softmax_init_std)
        return ModelConfig(layers=("softmax",) * self.softmax_layers, heads=self.softmax_heads,
                           width=self.softmax_width, key_size=self.softmax_key_size, mlp=True,
                           mlp_factor=self.softmax_mlp_factor, layernorm=True, clip=None, input="embed",
                           input_dim=self.n, output_dim=self.n, pos_enc=True, init_std=self.softmax_init_std)

    def softmax_job(self, seed: int, backend: str) -> Job:
        changes = {"clip_mode": self.softmax_clip_mode} | ({} if self.softmax_lr is None else {"lr": self.softmax_lr})
        return Job(self.softmax_model(), LinearTask(n=self.n, T=self.T, sigma=self.sigma, tokens="raw"),
                   self.train_config(seed, self.softmax_steps, self.softmax_decay_steps, **changes), backend)


@dataclass(frozen=True)
class ProbingConfig(SoftmaxRunConfig):
    linear_layers: int = 6
    linear_heads: int = 4
    linear_key_size: int = 20
    linear_init_std: float = 0.0002
    linear_clip: float | None = 1.5
    linear_steps: int = 20000
    linear_decay_steps: int = 20000
    lin_fit: int = 128             # [P4] sequences the linear attention is fitted on (LIN_NOTE)
    lin_eval: int = 512            # [P4] sequences the losses are measured on
    lin_steps: int = 200           # [P4] Adam steps of the fit (LIN_NOTE)
    lin_lr: float = 2e-2           # [P4] relative Adam step

    def depth_config(self) -> depth.DepthConfig:
        """The deep linear model as figure 3 configures it; at full size every field equals figure 3's FULL."""
        return dataclasses.replace(
            depth.FULL, n=self.n, T=self.T, sigma=self.sigma, heads=self.linear_heads, key_size=self.linear_key_size,
            init_std=self.linear_init_std, clip=self.linear_clip, batch=self.batch, steps=self.linear_steps,
            lr=self.lr, warmup_steps=min(self.warmup_steps, self.linear_steps), decay_steps=self.linear_decay_steps,
            final_lr=self.final_lr, weight_decay=self.weight_decay, eval_every=min(self.eval_every, self.linear_steps),
            test_batches=self.test_batches, checkpoint_every=self.checkpoint_every, depths=(self.linear_layers,))


FULL = ProbingConfig()
QUICK = dataclasses.replace(
    FULL, n=4, T=12, batch=32, lr=3e-3, warmup_steps=100, final_lr=3e-4, eval_every=250,
    linear_layers=4, linear_heads=2, linear_key_size=8, linear_init_std=0.02, linear_steps=1500,
    linear_decay_steps=1500, softmax_layers=3, softmax_heads=1, softmax_width=32, softmax_key_size=32,
    softmax_mlp_factor=2, softmax_steps=2000, softmax_decay_steps=2000, probe_test=512, lin_eval=256)
SMOKE = dataclasses.replace(
    FULL, n=3, T=6, batch=8, lr=3e-3, warmup_steps=2, final_lr=3e-4, eval_every=2, test_batches=2,
    linear_layers=2, linear_heads=1, linear_key_size=4, linear_init_std=0.02, linear_steps=4, linear_decay_steps=4,
    softmax_layers=2, softmax_heads=1, softmax_width=8, softmax_key_size=8, softmax_mlp_factor=1, softmax_steps=4,
    softmax_decay_steps=4, probe_train=40, probe_test=20, lin_fit=8, lin_eval=8, lin_steps=3, lin_lr=2e-2)
MODES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}
#: A softmax model built like the authors' probing model (run_probing_experiments_full_fledged.ipynb, their
#: configs/config.py "probing_full"): a hybrid first layer and 6 more softmax layers, 4 heads of key size 20,
#: width 40, no MLP, LayerNorm, biases or clipping, init N(0, 0.05^2); trained 10,000 steps at peak lr 8e-4 with
#: 1,000 warm-up steps and a cosine planned for 30,000, weight decay 0.05, element-wise gradient clipping at 1.
#: ``--softmax-model authors`` probes it beside the linear model (FULL's, unchanged).
AUTHORS_SOFTMAX = dataclasses.replace(FULL, softmax_kind="authors", softmax_layers=7, softmax_heads=4,
                                      softmax_width=40, softmax_key_size=20, softmax_init_std=0.05,
                                      softmax_steps=10000, softmax_decay_steps=30000, softmax_lr=8e-4,
                                      softmax_clip_mode="elementwise")
AUTHORS_CHOICE = ("softmax model built like the authors' probing model (probe_layers.AUTHORS_SOFTMAX): hybrid first "
                  "layer with position in queries and keys only, 7 softmax layers, width 40, 4 heads of 20, no MLP, "
                  "LayerNorm, biases or clipping; 10,000 steps at lr 8e-4, cosine planned for 30,000")


def add_arguments(p):
    p.add_argument("--softmax-model", choices=("ours", "authors"), default="ours",
                   help="ours: our softmax Transformer (FULL); authors: one built like the authors' probing model "
                        "(AUTHORS_SOFTMAX); full size only")


def configure(cfg, args):
    kind = getattr(args, "softmax_model", "ours")
    if kind == "ours":
        return cfg
    return second_configuration("softmax-model", kind, cfg, FULL, AUTHORS_SOFTMAX, args)


def jobs(cfg: ProbingConfig, seed: int, backend: str) -> dict:
    """``linear``: figure 3's job of that depth (the same job at full size); ``softmax``: the raw-token model."""
    L = cfg.linear_layers
    return {"linear": depth.jobs(cfg.depth_config(), seed, backend)[f"linear_L{L}"],
            "softmax": cfg.softmax_job(seed, backend)}


# ---------------------------------------------------------------------------------------------- analysis
def host_model(ctx, result):
    """(model, params) of a finished job for analyses on host arrays: the run's ops on the CPU, the reference ops
    when the run's arrays live on a GPU (the stored parameters are NumPy arrays)."""
    from mesa_ref.model import Transformer
    cfg = ModelConfig.from_dict({**result.record["model"], "layers": tuple(result.record["model"]["layers"])})
    if ctx.xp is np:
        return ctx.model(cfg), result.params
    from mesa_ref import ops
    return Transformer(cfg, ops=ops), result.params


def probe_sets(ctx, cfg: SoftmaxRunConfig, stream: int):
    """Fresh [T1] sequences for the probes: (train states, test states), each (N, T+1, n)."""
    tr = linear_dynamics(ctx.rng(stream, 0), cfg.probe_train, cfg.T, cfg.n, cfg.sigma).states
    te = linear_dynamics(ctx.rng(stream, 1), cfg.probe_test, cfg.T, cfg.n, cfg.sigma).states
    return tr, te


def probe_summary(res) -> dict:
    out = res.mean_over_t()
    L1 = len(next(iter(out.values())))
    ctrl = res.control_mean_over_t()
    out["control"] = [ctrl["inverse_curvature"]] * L1
    return out


#: The authors' fitted coefficients of the 6-step polynomial inverse in their inverse-curvature probe target
#: (mesa_ref.probing.polynomial_inverse): for constructed tokens as printed in run_construction_experiments.ipynb
#: (the probing cell, 13), for raw tokens the first entry of their experiment_results/linear_seq_fully/
#: cheb_params.pkl (run_probing_experiments_full_fledged.ipynb, cell 20: alphas7_f, betas7_f).  Numbers only:
#: their files are not part of this repository (docs/reproduction.md, "The authors' own results").
AUTHORS_POLY = {
    "constructed": ((1.0257748, 3.2508426, 3.2583678, 3.2122886, 2.694414, 1.2727231),
                    (0.0, 0.6787798, 0.30748147, 0.74470717, 1.8360422, 2.3438027)),
    "raw": ((1.0292039, 3.8550997, 3.7469113, 3.3827868, 2.9881542, 2.0934358),
            (0.0, 0.6402129, 0.4798134, 0.8143542, 1.6680348, 2.4196014)),
}
AUTHORS_BATCH = 256          # sequences per in-sample fit, as their probe's test batch


def authors_definition(model, params, te, tokens: str) -> dict:
    """The inverse-curvature probe as the authors define it (``mesa_ref.probing.authors_probe``) on the test
    sequences, in batches of AUTHORS_BATCH: per layer, the mean over batches and over t = 2..T (their figure drops
    t = 1) and over t >= 10."""
    batch = min(AUTHORS_BATCH, len(te))
    alphas, betas = AUTHORS_POLY[tokens]
    err = authors_probe(model, params, te[:len(te) // batch * batch], alphas, betas, tokens=tokens, batch=batch)
    per_t = err.mean(axis=0)                                           # (L+1, T)
    return {"inverse_curvature": per_t[:, 1:].mean(axis=1).tolist(),
            "inverse_curvature_t10": per_t[:, 9:].mean(axis=1).tolist() if per_t.shape[1] > 9 else None,
            "batches": int(err.shape[0]), "batch": batch}


def linearisation(ctx, cfg: ProbingConfig, model, params) -> list:
    """[P4] every layer of ``model`` replaced in turn by a fitted linear attention (``linearise_layer``)."""
    rng = ctx.rng(300)
    fit = linear_dynamics(rng, cfg.lin_fit, cfg.T, cfg.n, cfg.sigma, dtype=np.float32)
    ev = linear_dynamics(rng, cfg.lin_eval, cfg.T, cfg.n, cfg.sigma, dtype=np.float32)
    x_fit = np.ascontiguousarray(fit.inputs)
    x_ev, y_ev = np.ascontiguousarray(ev.inputs), np.ascontiguousarray(ev.targets)
    first = 1 if model.config.pos_enc_kq else 0      # a hybrid first layer is not linearised (linearise_layer)
    return [linearise_layer(model, params, i, x_fit, x_ev, y_ev, steps=cfg.lin_steps, lr=cfg.lin_lr).to_dict()
            for i in range(first, len(model.config.layers))]


def analyse(ctx, cfg: ProbingConfig, results) -> dict:
    """Probe each model present in ``results`` (both, except under --partial) and linearise the softmax one."""
    tr, te = probe_sets(ctx, cfg, 100)
    probe_error, per_t, control_by_target, training, lin, authors = {}, {}, {}, {}, [], {}
    for kind in (k for k in ("linear", "softmax") if k in results):
        model, params = host_model(ctx, results[kind])
        res = probe_model(model, params, tr, te, tokens="constructed" if kind == "linear" else "raw", lam=PROBE_LAM)
        probe_error[kind] = probe_summary(res)
        per_t[kind] = {k: v.tolist() for k, v in res.per_t.items()}
        control_by_target[kind] = res.control_mean_over_t()
        authors[kind] = authors_definition(model, params, te, "constructed" if kind == "linear" else "raw")
        training[kind] = train_summary(results[kind])
        if kind == "softmax":
            lin = linearisation(ctx, cfg, model, params)
    return {
        "choices": [AUTHORS_CHOICE if cfg.softmax_kind == "authors" else SOFTMAX_CHOICE, LIN_NOTE],
        "probe_error": probe_error,
        "probe_error_per_t": per_t,
        "control_by_target": control_by_target,
        "error_measure": "normalised MSE (MSE / variance of the target over the held-out sequences), per position t, "
                         "averaged over t = 1..T; layer 0 = input (after embedding / positional encoding)",
        "control_definition": "inverse_curvature target probed from the input token at position t alone, "
                              "repeated per layer; control_by_target has every target",
        "probe_lam": PROBE_LAM,
        "probe_error_authors": authors,
        "authors_definition": "the authors' inverse-curvature probe: target p(X_t X_t^T + lam I) s_t with p their "
                              "fitted 6-step polynomial inverse (AUTHORS_POLY), fitted in sample without bias on "
                              "each batch of sequences it scores, sequences whose target norm is 2 std above the "
                              "mean dropped, error = summed squared error / (2 x sequences kept) in raw units; per "
                              "layer the mean over batches and t = 2..T (inverse_curvature) or t >= 10 (_t10)",
        "probe_sequences": {"train": cfg.probe_train, "test": cfg.probe_test},
        "linearisation": {"softmax": lin,
                          "method": f"each softmax layer in turn replaced by a linear attention fitted to its block "
                                    f"output on {cfg.lin_fit} sequences: W_Q, W_K, W_V start from the layer's, W_O is "
                                    f"the least-squares solution at every step, {cfg.lin_steps} Adam steps (relative "
                                    f"step {cfg.lin_lr:g}) on the normalised MSE; losses (official MSE / 2) on "
                                    f"{cfg.lin_eval} other sequences; loss_removed: the layer's attention output set "
                                    f"to 0"},
        "training": training,
    }


# ---------------------------------------------------------------------------------------------- plot
TARGET_STYLE = {"current": dict(color="C0", marker="o"), "previous": dict(color="C1", marker="s"),
                "next": dict(color="C2", marker="^"), "inverse_curvature": dict(color="C3", marker="D", lw=2.5),
                "control": dict(color="0.4", ls="--")}


def plot(data):
    import matplotlib.pyplot as plt
    pe = data["probe_error"]
    models = [m for m in ("linear", "softmax") if m in pe]
    lin = (data.get("linearisation") or {}).get("softmax") or []
    per_t = "linear" in data["probe_error_per_t"]
    auth = {m: a for m, a in (data.get("probe_error_authors") or {}).items() if a.get("inverse_curvature_t10")}
    ncol = len(models) + int(per_t) + int(bool(lin)) + int(bool(auth))
    fig, axes = plt.subplots(1, ncol, figsize=(5 * ncol, 4), squeeze=False)
    axes = axes[0]
    titles = {"linear": "deep linear model, constructed tokens", "softmax": "softmax Transformer, raw tokens"}
    for ax, m in zip(axes, models):
        for tname, ys in pe[m].items():
            line, = ax.plot(range(len(ys)), ys, label=tname, **TARGET_STYLE.get(tname, {}))
            seed_band(ax, data, f"probe_error.{m}.{tname}", range(len(ys)), color=line.get_color())
        ax.set_xticks(range(len(next(iter(pe[m].values())))))
        label_axes(ax, "layer (0 = input)", "held-out probe error (normalised MSE)", titles.get(m, m), title_size=10)
    if per_t:
        ax = axes[len(models)]
        curves = data["probe_error_per_t"]["linear"]["inverse_curvature"]
        cmap = plt.get_cmap("viridis")
        for l, ys in enumerate(curves):
            ax.plot(range(1, len(ys) + 1), ys, color=cmap(l / max(1, len(curves) - 1)), label=f"layer {l}")
        label_axes(ax, "time step t", "inverse-curvature probe error", "linear model: (X_t X_t^T + lam I)^-1 s_t per t",
                   title_size=10)
    if auth:
        ax = axes[len(models) + int(per_t)]
        for m, a in auth.items():
            ys = a["inverse_curvature_t10"]
            ax.plot(range(len(ys)), ys, marker="D", color="C3" if m == "linear" else "C4", label=f"{m} model")
        ax.set_yscale("log")
        ax.set_xticks(range(max(len(a["inverse_curvature_t10"]) for a in auth.values())))
        label_axes(ax, "layer (0 = input)", "in-sample error, raw units (sum sq. / 2N)",
                   "inverse-curvature probe, the authors' definition\n(polynomial inverse, no bias, t >= 10)",
                   title_size=10)
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
    fig.suptitle(f"Fig. 4 - probing across layers [P1]\n{mode_line(data)}")
    fig.tight_layout()
    return fig


# FULL mixes the paper's settings with our choices, so deviations are named against "full size"
EXPERIMENT = Experiment(NAME, DESCRIPTION, MODES, jobs, analyse, plot, add_arguments=add_arguments,
                        configure=configure, full_is_paper=False)
