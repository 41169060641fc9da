"""Figure 8: language modelling [T6] with softmax, linear, mesa and hybrid Transformers.

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858.

Four models of equal size (same width, heads, key size, layers, MLP; the mesa heads add only their lam
per head [M1], so the parameter counts differ by H per mesa layer; the JSON reports them):

    softmax  (softmax [L3], softmax)      linear  (linear [L2], linear)
    mesa     (mesa [M1], mesa)            hybrid  (softmax, mesa): the mesa model with one softmax layer

all with token embeddings, sinusoidal positional encoding [L7], pre-LayerNorm [L4], no clipping, and
trained on the same batches (same seed, same token budget) of a character- or byte-level corpus
(``mesa_ref.text``; default: the text of ``pydoc_data.topics``) split contiguously into training and
held-out parts.  Reported: held-out cross-entropy (nats per token), held-out loss per position within
the context window, held-out learning curves, and the unigram entropy of the corpus for reference.

The trainer is a small loop over ``train.AdamW`` / ``learning_rate`` / ``clip_gradients`` (``train.train``
draws its test batches from the training task; here the curves are on the held-out split).

Quick-mode choices (CPU, a few minutes; the paper trains far larger models on far more text): character
level, width 32, 4 heads of key size 8, 2 layers, no MLP, context T = 32, batch 16, 800 steps, peak lr
3e-3 for every kind (warm-up 80 steps, cosine to 3e-4), weights initialised N(0, 0.02^2) instead of the
[T1] models' N(0, 0.0002^2), mesa lam initialised to 1; held-out loss on 256 fixed windows of the last 10%.
The full mode (meant for the fast backend on a GPU) uses width 128, 8 heads, 4 layers with MLPs,
T = 256, batch 32, 10,000 steps at lr 1e-3.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np

from ..config import ModelConfig
from ..runio import CLIError
from ..text import Corpus, LMTask, unigram_cross_entropy, unigram_entropy
from ..train import AdamW, TrainConfig, clip_gradients, learning_rate

KINDS = ("softmax", "linear", "mesa", "hybrid")


def kind_layers(kind: str, n_layers: int) -> tuple:
    """Attention kinds per layer for a model kind; the hybrid's first layer is softmax, the rest mesa."""
    if kind == "hybrid":
        return ("softmax",) + ("mesa",) * (n_layers - 1)
    if kind in ("softmax", "linear", "mesa"):
        return (kind,) * n_layers
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


@dataclass(frozen=True)
class LMConfig:
    level: str = "char"
    T: int = 256                 # context length
    batch: int = 32
    steps: int = 10000
    width: int = 128
    heads: int = 8
    key_size: int = 16
    layers: int = 4
    mlp: bool = True
    lr: float = 1e-3             # peak lr, every kind
    warmup_steps: int = 500
    final_lr: float = 1e-5
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    init_std: float = 0.02
    mesa_lam_init: float = 1.0
    heldout_frac: float = 0.1
    eval_every: int = 250
    eval_windows: int = 256      # fixed held-out windows for the final loss and loss per position
    curve_windows: int = 64      # fixed held-out windows for the learning curves (a subset of the above)


FULL = LMConfig()
QUICK = LMConfig(T=32, batch=16, steps=800, width=32, heads=4, key_size=8, layers=2, mlp=False, lr=3e-3,
                 warmup_steps=80, final_lr=3e-4, eval_every=80)
QUICK_DEVIATIONS = ("character level on pydoc_data.topics; width 32, 4 heads x key size 8, 2 layers, no MLP; "
                    "context T = 32, batch 16, 800 steps, peak lr 3e-3 for every kind (warm-up 80, cosine to 3e-4); "
                    "init N(0, 0.02^2); far smaller models, contexts and token budgets than the paper's")
SMOKE = LMConfig(T=8, batch=4, steps=4, width=8, heads=2, key_size=4, layers=2, mlp=False, lr=3e-3,
                 warmup_steps=1, final_lr=3e-4, eval_every=2, eval_windows=8, curve_windows=4)


def model_config(kind: str, cfg: LMConfig, V: int) -> ModelConfig:
    return ModelConfig(layers=kind_layers(kind, cfg.layers), heads=cfg.heads, width=cfg.width, key_size=cfg.key_size,
                       mlp=cfg.mlp, layernorm=True, clip=None, input="tokens", input_dim=V, output_dim=V,
                       pos_enc=True, init_std=cfg.init_std, mesa_lam_init=cfg.mesa_lam_init)


def token_losses(model, params, x, y, xp=np) -> np.ndarray:
    """[T6] per-token cross-entropy (nats), (B, T) on the host: -log softmax(logits)[y]."""
    logits, _ = model.forward(params, x)                                   # (B, T, V)
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))
    out = -xp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]          # (B, T)
    return out.get() if hasattr(out, "get") and not isinstance(out, np.ndarray) else np.asarray(out)


def _eval_windows(ids, T, count, seed):
    """Fixed held-out windows (count, T) and their targets."""
    task = LMTask(ids, T, name="held-out")
    return task.batch(np.random.default_rng(seed), count)


def train_lm(model, train_task, eval_x, eval_y, cfg: LMConfig, *, seed: int, xp=np, progress=False):
    """AdamW on random training windows; held-out loss on (eval_x, eval_y) every ``eval_every`` steps.
    Returns (params, curve {step, loss, train_loss, seconds})."""
    tcfg = TrainConfig(steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                       decay_steps=cfg.steps, final_lr=cfg.final_lr, weight_decay=cfg.weight_decay,
                       grad_clip=cfg.grad_clip, seed=seed)
    params = {k: xp.asarray(v) for k, v in model.init(seed, dtype=np.float32).items()}
    opt = AdamW(params, tcfg)
    data_rng = np.random.default_rng([seed, 1])       # same batches for every kind
    ex, ey = xp.asarray(eval_x), xp.asarray(eval_y)

    def heldout():
        return float(token_losses(model, params, ex, ey, xp).mean())

    curve = {"step": [0], "loss": [heldout()], "train_loss": [None], "seconds": [0.0]}
    t0 = time.perf_counter()
    it = range(cfg.steps)
    if progress:
        try:
            from tqdm import tqdm
            it = tqdm(it, leave=False, dynamic_ncols=True)
        except ImportError:  # pragma: no cover
            pass
    for step in it:
        x, y = train_task.batch(data_rng, cfg.batch)
        loss, grads = model.loss_and_grads(params, xp.asarray(x), xp.asarray(y))
        if not math.isfinite(loss):
            raise FloatingPointError(f"{model.config.layers} diverged at step {step}: loss {loss}")
        grads, _ = clip_gradients(grads, tcfg)
        opt.update(params, grads, learning_rate(step, tcfg))
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            curve["step"].append(done)
            curve["loss"].append(heldout())
            curve["train_loss"].append(float(loss))
            curve["seconds"].append(round(time.perf_counter() - t0, 2))
    return params, curve


def load_corpus(text_path, level: str) -> Corpus:
    return Corpus.from_file(text_path, level) if text_path else Corpus.default(level)


def compute(ctx, cfg: LMConfig | None = None, text_path=None) -> dict:
    """Train the four kinds; returns the JSON payload of fig8_language."""
    if cfg is None:
        cfg = QUICK if ctx.quick else FULL
    corpus = load_corpus(text_path, cfg.level)
    train_ids, held_ids = corpus.split(cfg.heldout_frac)
    if len(held_ids) < cfg.T + 1 or len(train_ids) < cfg.T + 1:
        raise CLIError(f"--text {corpus.source!r}: {len(corpus.ids)} tokens is too short for context T = {cfg.T} "
                       f"with a {cfg.heldout_frac:.0%} held-out split (need at least {int((cfg.T + 1) / cfg.heldout_frac) + 1})")
    train_task = LMTask(train_ids, cfg.T)
    ex, ey = _eval_windows(held_ids, cfg.T, cfg.eval_windows, seed=ctx.seed * 7919 + 3)
    cx, cy = ex[:cfg.curve_windows], ey[:cfg.curve_windows]
    V = corpus.V
    heldout, per_pos, curves, counts, timing, mcfgs = {}, {}, {}, {}, {}, {}
    for kind in KINDS:
        mcfg = model_config(kind, cfg, V)
        model = ctx.model(mcfg)
        t0 = time.perf_counter()
        params, curve = train_lm(model, train_task, cx, cy, cfg, seed=ctx.seed, xp=ctx.xp, progress=ctx.progress)
        timing[kind] = round(time.perf_counter() - t0, 1)
        losses = token_losses(model, params, ctx.xp.asarray(ex), ctx.xp.asarray(ey), ctx.xp)      # (W, T)
        heldout[kind] = float(losses.mean())
        per_pos[kind] = [float(v) for v in losses.mean(axis=0)]
        curves[kind] = curve
        counts[kind] = model.num_params(params)
        mcfgs[kind] = mcfg.to_dict()
    return {
        "heldout_loss": heldout,
        "unigram_entropy": unigram_entropy(corpus.ids, V),
        "unigram_heldout_cross_entropy": unigram_cross_entropy(train_ids, held_ids, V),
        "loss_per_position": per_pos,
        "learning_curves": curves,
        "param_count": counts,
        "train_seconds": timing,
        "corpus": {"source": corpus.source, "level": corpus.level, "vocab_size": V, "tokens": int(len(corpus.ids)),
                   "train_tokens": int(len(train_ids)), "heldout_tokens": int(len(held_ids))},
        "token_budget": cfg.steps * cfg.batch * cfg.T,
        "config": {"lm": dataclasses.asdict(cfg), "models": mcfgs, "mode": "quick" if ctx.quick else "full",
                   "deviations_from_paper": QUICK_DEVIATIONS if ctx.quick else
                   "model sizes, context and steps are our choices (the paper's LM setup is far larger)",
                   "heldout": f"last {cfg.heldout_frac:.0%} of the corpus; final loss on {cfg.eval_windows} fixed "
                              f"windows, learning curves on the first {cfg.curve_windows} of them",
                   "hybrid": "first layer softmax, the others mesa"},
    }


STYLES = {"softmax": dict(color="tab:red"), "linear": dict(color="tab:blue"), "mesa": dict(color="tab:green"),
          "hybrid": dict(color="tab:purple")}


def plot(data: dict):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    H = data["unigram_entropy"]
    ax = axes[0]
    for k in KINDS:
        c = data["learning_curves"][k]
        ax.plot(c["step"], c["loss"], label=f"{k} ({data['param_count'][k]} params)", **STYLES[k])
    ax.axhline(H, color="gray", linestyle=":", label=f"unigram entropy {H:.2f}")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out cross-entropy (nats / token)")
    ax.set_title("learning curves")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    for k in KINDS:
        ys = np.asarray(data["loss_per_position"][k], dtype=float)
        ax.plot(np.arange(1, len(ys) + 1), ys, label=f"{k}: {data['heldout_loss'][k]:.3f}", **STYLES[k])
    ax.axhline(H, color="gray", linestyle=":", label="unigram entropy")
    ax.set_xlabel("position in the context window")
    ax.set_ylabel("held-out cross-entropy (nats / token)")
    ax.set_title("loss per position (held-out)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    corpus = data.get("corpus", {})
    fig.suptitle(f"Fig. 8: {corpus.get('level', 'char')}-level language modelling on {corpus.get('source', '?')} "
                 f"({'quick' if data.get('quick') else 'full'} mode)")
    fig.tight_layout()
    return fig
