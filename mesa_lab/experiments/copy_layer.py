"""Figure 5: token construction by the first softmax layer on raw tokens [T1] (the "copy layer").

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858.

The full softmax Transformer of figure 4 (softmax attention [L3], GELU MLP [L5], pre-LayerNorm [L4], linear
embedding of the raw state s_t plus sinusoidal positional encoding [L7]) but with two layers sees only s_t at
position t.  To run a mesa-optimiser on the pairs (s_{t-1}, s_t) in its second layer, its first layer must
fetch s_{t-1}.  (Our choice of depth: in a deeper model the copy can happen in any early layer; in quick runs
of figure 4's 3-layer model the previous-token layer was layer 1 for one seed and layer 2 for another.)
Evidence, from one trained job (``model``):

* ``prev_token_attention``: the first layer's attention weight on position t-1, averaged over held-out
  sequences, heads and positions t >= 2 (``prev_token_attention_per_head`` and ``..._per_t`` break it down);
  ``attention_map`` is the first layer's (T, T) attention averaged over sequences and heads.
* ``probe_previous_error``: the held-out error (normalised MSE, averaged over t = 2..T) of a least-squares
  probe [P1] for s_{t-1} from the residual stream before the first block (layer 0) and after every block.
  It drops after layer 1 when the first layer has copied s_{t-1} into position t.

Configurations: every mode uses figure 4's configuration of that mode (``probe_layers.FULL``, ``QUICK``, ``SMOKE``:
the paper's data and optimiser, 20000 steps, and the softmax sizes of our choosing at full size) with two
layers instead of figure 4's depth; the JSON's ``config.deviations`` lists every field where a quick or smoke
run differs from ``FULL``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mesa_ref.data import linear_dynamics
from mesa_ref.probing import PROBE_LAM, probe_model
from . import probe_layers
from .common import Experiment, label_axes, mode_line, seed_band, seed_text
from .dynamics import train_summary
from .probe_layers import SoftmaxRunConfig, host_model, probe_sets

NAME = "fig5_copy_layer"
DESCRIPTION = ("Fig. 5: the first softmax layer attends to the previous token and so builds (s_t, s_{t-1}) from raw "
               "tokens [T1]; attention map and probes [P1] for s_{t-1} across layers")
COPY_MODEL_LAYERS = 2
DEPTH_CHOICE = (f"{COPY_MODEL_LAYERS} softmax layers (our choice: the second layer can regress only once the first has "
                "built the pairs)")


@dataclass(frozen=True)
class CopyLayerConfig(SoftmaxRunConfig):
    softmax_layers: int = COPY_MODEL_LAYERS


def _from_probing(cfg: probe_layers.ProbingConfig) -> CopyLayerConfig:
    """Figure 4's shared fields of one mode, at two layers."""
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SoftmaxRunConfig)}
    return CopyLayerConfig(**{**shared, "softmax_layers": COPY_MODEL_LAYERS})


FULL = _from_probing(probe_layers.FULL)
QUICK = _from_probing(probe_layers.QUICK)
SMOKE = _from_probing(probe_layers.SMOKE)
MODES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


def jobs(cfg: CopyLayerConfig, seed: int, backend: str) -> dict:
    """One job: the two-layer softmax model on raw tokens."""
    return {"model": cfg.softmax_job(seed, backend)}


def first_layer_attention(model, params, x) -> np.ndarray:
    """The first layer's attention weights P (N, H, T, T) on inputs x (softmax layer 0)."""
    if model.config.layers[0] != "softmax":
        raise ValueError(f"model: the first layer must be softmax attention, got {model.config.layers[0]!r}")
    _, cache = model.forward(params, x)
    P = cache.layers[0]["attn"].P
    return np.asarray(P.get() if hasattr(P, "get") else P, dtype=np.float64)


def prev_token_weights(P) -> np.ndarray:
    """P (N, H, T, T) -> the weight on position t-1 at every t >= 2, averaged over sequences: (H, T-1)."""
    T = P.shape[-1]
    t = np.arange(1, T)
    return P[:, :, t, t - 1].mean(axis=0)


def analyse(ctx, cfg: CopyLayerConfig, results) -> dict:
    model, params = host_model(ctx, results["model"])
    ev = linear_dynamics(ctx.rng(200), cfg.probe_test, cfg.T, cfg.n, cfg.sigma, dtype=np.float32)
    P = first_layer_attention(model, params, np.ascontiguousarray(ev.inputs))
    prev = prev_token_weights(P)                                               # (H, T-1)
    tr, te = probe_sets(ctx, cfg, 100)
    res = probe_model(model, params, tr, te, tokens="raw", lam=PROBE_LAM, targets=("previous", "current"))
    means = res.mean_over_t()
    ctrl = res.control_mean_over_t()
    return {
        "choices": [DEPTH_CHOICE, probe_layers.SOFTMAX_CHOICE],
        "prev_token_attention": float(prev.mean()),
        "prev_token_attention_per_head": prev.mean(axis=1).tolist(),
        "prev_token_attention_per_t": prev.tolist(),
        "self_attention": float(np.mean([P[:, :, t, t].mean() for t in range(1, cfg.T)])),
        "attention_map": P.mean(axis=(0, 1)).tolist(),
        "probe_previous_error": means["previous"],
        "probe_current_error": means["current"],
        "probe_previous_control": ctrl["previous"],
        "error_measure": "normalised MSE (MSE / variance of the target over the held-out sequences) per t, averaged "
                         "over t = 2..T for s_{t-1}; layer 0 = after embedding and positional encoding",
        "attention_definition": "first layer's softmax weight on position t-1, mean over held-out sequences, heads "
                                "and t = 2..T",
        "probe_sequences": {"train": cfg.probe_train, "test": cfg.probe_test, "attention": cfg.probe_test},
        "training": train_summary(results["model"]),
    }


def plot(data):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    A = np.asarray(data["attention_map"])
    T = A.shape[0]
    ax = axes[0]
    im = ax.imshow(A, cmap="viridis", vmin=0, vmax=1, extent=(0.5, T + 0.5, T + 0.5, 0.5))
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xlabel("key position t'")
    ax.set_ylabel("query position t")
    ax.set_title("first-layer attention (mean over sequences, heads)", fontsize=10)
    ax = axes[1]
    for h, ys in enumerate(data["prev_token_attention_per_t"]):
        ax.plot(range(2, len(ys) + 2), ys, marker="o", label=f"head {h}")
    ax.axhline(0.5, color="0.5", ls=":")
    ax.set_ylim(0, 1.02)
    label_axes(ax, "query position t", "attention weight on t-1",
               f"weight on the previous token: mean {data['prev_token_attention']:.2f}"
               + seed_text(data, "prev_token_attention", ".2f"), title_size=10)
    ax = axes[2]
    ys = data["probe_previous_error"]
    ax.plot(range(len(ys)), ys, marker="s", color="C1", label="probe for s_{t-1}")
    ax.plot(range(len(data["probe_current_error"])), data["probe_current_error"], marker="o", color="C0",
            label="probe for s_t")
    seed_band(ax, data, "probe_previous_error", range(len(ys)), color="C1")
    seed_band(ax, data, "probe_current_error", range(len(ys)), color="C0")
    ax.axhline(data["probe_previous_control"], color="0.4", ls="--", label="s_{t-1} from the input token")
    ax.set_xticks(range(len(ys)))
    label_axes(ax, "layer (0 = input)", "held-out probe error (normalised MSE)",
               "token construction: s_{t-1} becomes readable after layer 1", title_size=10)
    fig.suptitle(f"Fig. 5 - the copy layer: softmax Transformer on raw tokens\n{mode_line(data)}")
    fig.tight_layout()
    return fig


# FULL mixes the paper's settings with our choices, so deviations are named against "full size"
EXPERIMENT = Experiment(NAME, DESCRIPTION, MODES, jobs, analyse, plot, full_is_paper=False)
