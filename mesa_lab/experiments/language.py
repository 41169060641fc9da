"""Figure 8: language modelling [T6] with softmax, linear, mesa and hybrid Transformers.

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858.

Four models of one size (same width, heads, key size, layers, MLP; a mesa head adds only its lam [M1], so
the counts differ by H per mesa layer; the JSON reports them):

    softmax  (softmax [L3], ..., softmax)     linear  (linear [L2], ..., linear)
    mesa     (mesa [M1], ..., mesa)           hybrid  (softmax, mesa, ..., mesa): the first layer softmax

all with token embeddings, sinusoidal positional encoding [L7], pre-LayerNorm [L4] and no clipping.  Each
is one training job (``mesa_lab.jobs``) on a ``mesa_ref.tasks.LanguageTask``: random windows of T tokens
of a character- or byte-level corpus (default: the text of ``pydoc_data.topics``, which ships with
Python; ``--text FILE`` for any UTF-8 file), split contiguously into a training part and the held-out
last 10%.  The jobs share the seed, so they see the same batches; the trainer's test set (its learning
curve) is drawn from the held-out part through the task's ``test_batch``.  The model's loss on token ids
is the mean cross-entropy in nats per token ([T6]), the quantity every number here is in.

Reported: held-out cross-entropy per kind (on ``eval_windows`` fixed held-out windows), the same loss per
position in the context window, the held-out learning curves of the jobs, the parameter counts, and the
corpus's unigram entropy and the held-out cross-entropy of an add-one unigram model for reference.

Configurations.  The paper's language models are far larger than one CPU can train, so ``FULL`` is our
own size: character level, width 64, 4 heads of key size 16, 4 layers with MLPs, context T = 256, batch
16, 8,000 steps (33M tokens, about 78 passes over the default corpus's training part), AdamW at peak lr
1e-3 for every kind (warm-up 400 steps, cosine to 1e-5), weights N(0, 0.02^2), mesa lam initialised to 1.
Why this size: each job has to train on a 2-core CPU in two hours or less with the fast backend and one
thread per job.  benchmarks/bench_lm_cost.py measures the single-threaded training step of each kind at
exactly this size (benchmarks/results/bench_lm_cost_cpu.json, ``train_step`` rows of the fast backend,
and ``full_job_hours``: steps x measured step time + the evaluations).  The slowest kind, softmax, fits
even at the wall-clock step time of that measurement, which was made while two other training processes
shared the two cores (its CPU time was about half its wall time); the held-out evaluations add about 1%.
``QUICK`` (a few CPU minutes per job) shrinks everything further; the JSON lists every field where it
differs from ``FULL`` (worded "full size:", since this figure's ``FULL`` is ours, not the paper's).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mesa_ref.config import ModelConfig
from mesa_ref.flops import model_flops
from ..jobs import Job
from mesa_ref.ops._common import to_host
from mesa_ref.tasks import LanguageTask
from mesa_ref.text import DEFAULT_SOURCE, unigram_cross_entropy, unigram_entropy
from mesa_ref.train import TrainConfig
from .common import Experiment, label_axes, mode_line, seed_band, seed_text

NAME = "fig8_language"
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
    text: str | None = None      # a UTF-8 file (absolute path) instead of the default corpus (--text)
    level: str = "char"
    T: int = 256                 # context length
    batch: int = 16
    steps: int = 8000
    width: int = 64
    heads: int = 4
    key_size: int = 16
    layers: int = 4
    mlp: bool = True
    lr: float = 1e-3             # peak lr, every kind
    warmup_steps: int = 400
    final_lr: float = 1e-5
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    init_std: float = 0.02
    mesa_lam_init: float = 1.0
    heldout_frac: float = 0.1
    eval_every: int = 250        # the jobs' held-out learning curve: every this many steps ...
    test_batches: int = 4        # ... on this many fixed held-out batches of ``batch`` windows
    checkpoint_every: int = 500
    eval_windows: int = 256      # analysis: fixed held-out windows for the final loss and the loss per position


FULL = LMConfig()
QUICK = dataclasses.replace(FULL, T=32, batch=16, steps=800, width=32, heads=4, key_size=8, layers=2, mlp=False,
                            lr=3e-3, warmup_steps=80, final_lr=3e-4, eval_every=80, checkpoint_every=200)
SMOKE = dataclasses.replace(FULL, T=8, batch=4, steps=4, width=8, heads=2, key_size=4, layers=2, mlp=False, lr=3e-3,
                            warmup_steps=1, final_lr=3e-4, eval_every=2, test_batches=2, checkpoint_every=2,
                            eval_windows=8)
MODES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


def lm_task(cfg: LMConfig) -> LanguageTask:
    """The training task of ``cfg`` (reads the corpus: a missing, binary or too short file is a CLIError)."""
    return LanguageTask(source=cfg.text or DEFAULT_SOURCE, level=cfg.level, T=cfg.T, heldout_frac=cfg.heldout_frac)


def model_config(kind: str, cfg: LMConfig, V: int) -> ModelConfig:
    return ModelConfig(layers=kind_layers(kind, cfg.layers), heads=cfg.heads, width=cfg.width, key_size=cfg.key_size,
                       mlp=cfg.mlp, layernorm=True, clip=None, input="tokens", input_dim=V, output_dim=V,
                       pos_enc=True, init_std=cfg.init_std, mesa_lam_init=cfg.mesa_lam_init)


def train_config(cfg: LMConfig, seed: int) -> TrainConfig:
    return TrainConfig(steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                       decay_steps=cfg.steps, final_lr=cfg.final_lr, weight_decay=cfg.weight_decay,
                       grad_clip=cfg.grad_clip, eval_every=cfg.eval_every, test_batches=cfg.test_batches,
                       checkpoint_every=cfg.checkpoint_every, seed=seed)


def jobs(cfg: LMConfig, seed: int, backend: str) -> dict:
    """One job per model kind, all on the same task and seed (the same batches)."""
    task = lm_task(cfg)
    V = task.vocab_size
    tcfg = train_config(cfg, seed)
    return {kind: Job(model_config(kind, cfg, V), task, tcfg, backend) for kind in KINDS}


def add_arguments(parser) -> None:
    parser.add_argument("--text", metavar="FILE", default=None,
                        help="UTF-8 text file to model (default: the text of pydoc_data.topics)")


def configure(cfg: LMConfig, args) -> LMConfig:
    import os
    text = getattr(args, "text", None)
    return dataclasses.replace(cfg, text=os.path.abspath(text)) if text else cfg


# ---------------------------------------------------------------------------------------------- analysis
def token_losses(model, params, x, y, xp=np, chunk: int = 32) -> np.ndarray:
    """[T6] per-token cross-entropy (nats), (B, T) float64 on the host: -log softmax(logits)[y], computed
    from the model's logits in float64, ``chunk`` windows at a time."""
    p = {k: xp.asarray(v) for k, v in params.items()}
    out = []
    for s in range(0, len(x), chunk):
        logits, _ = model.forward(p, xp.asarray(x[s:s + chunk]))                    # (b, T, V)
        z = np.asarray(to_host(logits), np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        out.append(-np.take_along_axis(logp, np.asarray(y[s:s + chunk])[..., None], axis=-1)[..., 0])   # (b, T)
    return np.concatenate(out, axis=0)


def _model_of(ctx, result):
    cfg = ModelConfig.from_dict({**result.record["model"], "layers": tuple(result.record["model"]["layers"])})
    return ctx.model(cfg), result.params


def loss_at(xs, losses, budget):
    """The learning curve's loss at ``budget`` (of the same quantity as xs: steps, FLOPs or seconds), linearly
    interpolated between the evaluations around it (``np.interp``); None beyond the curve's last point."""
    pts = [(float(x), float(v)) for x, v in zip(xs, losses) if v is not None]
    if not pts or budget > pts[-1][0] * (1 + 1e-9):
        return None
    x, v = zip(*pts)
    return float(np.interp(budget, x, v))


def equal_compute(cfg: LMConfig, records: dict, curves: dict, V: int) -> dict:
    """The kinds at equal compute: FLOPs per token (``mesa_ref.flops``) and what each run used, and the matrix
    loss_at_budget[a][b] = kind a's held-out loss (its learning curve) when a has spent what b spent in all, in
    training FLOPs and in training seconds (None where b spent more than a did)."""
    tokens = cfg.batch * cfg.T
    flops, spent = {}, {}
    for kind, model in records.items():
        f = model_flops(model["layers"], width=model["width"], heads=model["heads"], key_size=model["key_size"],
                        T=cfg.T, mlp=model["mlp"], vocab=V)
        flops[kind] = {"forward_per_token": f["forward"], "train_per_token": f["train"],
                       "attention_share_forward": f["attention_share"]}
        spent[kind] = [float(s) * tokens * f["train"] for s in curves[kind]["step"]]    # FLOPs at each evaluation
    used_flops = {k: spent[k][-1] for k in records}
    used_seconds = {k: float(curves[k]["seconds"][-1]) for k in records}
    at_flops = {a: {b: loss_at(spent[a], curves[a]["loss"], used_flops[b]) for b in records} for a in records}
    at_seconds = {a: {b: loss_at(curves[a]["seconds"], curves[a]["loss"], used_seconds[b]) for b in records}
                  for a in records}
    return {"flops": flops, "train_flops": used_flops, "train_seconds": used_seconds,
            "loss_at_flop_budget": at_flops, "loss_at_time_budget": at_seconds,
            "notes": "loss_at_*_budget[a][b]: kind a's held-out learning-curve loss (the job's test set) once a "
                     "has spent kind b's whole training budget, interpolated between evaluations; a run cut "
                     "short this way has not finished its learning-rate schedule (cosine over all steps), so "
                     "the value is an upper bound on what a run planned for that budget would reach. Seconds: "
                     "the jobs' own training wall time (one thread each, two jobs sharing the 2-core machine); "
                     "FLOPs: mesa_ref.flops (linear layers in their T x T form, mesa layers sequential)"}


def analyse(ctx, cfg: LMConfig, results) -> dict:
    task = lm_task(cfg)
    corpus = task.corpus()
    train_ids, held_ids = task.split_ids()
    ex, ey = task.test_batch(ctx.rng(8), cfg.eval_windows)            # fixed held-out windows (W, T)
    heldout, per_pos, curves, counts, seconds = {}, {}, {}, {}, {}
    for kind in KINDS:
        r = results[kind]
        model, params = _model_of(ctx, r)
        losses = token_losses(model, params, ex, ey, ctx.xp)          # (W, T)
        heldout[kind] = float(losses.mean())
        per_pos[kind] = [float(v) for v in losses.mean(axis=0)]
        m = r.metrics
        curves[kind] = {"step": m["step"], "loss": m["test_loss"], "train_loss": m["train_loss"],
                        "seconds": m["seconds"]}
        counts[kind] = model.num_params(params)
        seconds[kind] = round(float(r.cost.get("wall_seconds", float("nan"))), 1)
    V = corpus.V
    records = {kind: results[kind].record["model"] for kind in KINDS}
    return {
        "heldout_loss": heldout,
        "unigram_entropy": unigram_entropy(corpus.ids, V),
        "unigram_heldout_cross_entropy": unigram_cross_entropy(train_ids, held_ids, V),
        "loss_per_position": per_pos,
        "learning_curves": curves,
        "param_count": counts,
        "train_seconds": seconds,
        "corpus": {"source": corpus.source, "sha256": corpus.sha256, "level": corpus.level, "vocab_size": V,
                   "tokens": int(len(corpus.ids)), "train_tokens": int(len(train_ids)),
                   "heldout_tokens": int(len(held_ids))},
        "token_budget": cfg.steps * cfg.batch * cfg.T,
        "equal_compute": equal_compute(cfg, records, curves, V),
        "choices": ["model sizes, context length and token budget are our choices (the paper's language models "
                    "are far larger); the full size is chosen so that each job trains on a 2-core CPU in two hours "
                    "or less (benchmarks/results/bench_lm_cost_cpu.json)",
                    "hybrid: the first layer softmax, the others mesa",
                    f"held-out: the last {cfg.heldout_frac:.0%} of the corpus; heldout_loss and loss_per_position on "
                    f"{cfg.eval_windows} fixed held-out windows, learning curves on the jobs' test sets "
                    f"({cfg.test_batches} x {cfg.batch} held-out windows)"],
        "notes": "losses are cross-entropies in nats per token; loss_per_position[kind][t-1] is the mean loss of "
                 "the prediction of token t+1 from the first t tokens of a window",
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
    vals = data.get("config", {}).get("values", {})
    label_axes(ax, "training step", "held-out cross-entropy (nats / token)",
               f"learning curves: each job's own test set ({vals.get('test_batches', '?')} x {vals.get('batch', '?')} "
               f"windows)", title_size=9)
    ax = axes[1]
    T = len(data["loss_per_position"][KINDS[0]])
    width = max(1, T // 32)                         # about 32 points: one position alone is too noisy to read
    for k in KINDS:
        ys = np.asarray(data["loss_per_position"][k], dtype=float)
        n = len(ys) // width * width
        centres = np.arange(n).reshape(-1, width).mean(axis=1) + 1
        seed_band(ax, data, f"loss_per_position.{k}", centres, color=STYLES[k].get("color"), bin_width=width)
        ax.plot(centres, ys[:n].reshape(-1, width).mean(axis=1), marker=".", label=f"{k}: {data['heldout_loss'][k]:.3f}{seed_text(data, f'heldout_loss.{k}')}",
                **STYLES[k])
    ax.axhline(H, color="gray", linestyle=":", label="unigram entropy")
    label_axes(ax, "position in the context window", "held-out cross-entropy (nats / token)",
               f"loss per position on {vals.get('eval_windows', '?')} fixed held-out windows (legend: their mean)\n"
               f"each point the mean over {width} consecutive position(s); another sample than the left panel's, "
               "hence other levels", title_size=9)
    corpus = data.get("corpus", {})
    source = corpus.get("source", "?")
    if source != DEFAULT_SOURCE:
        source = source.replace("\\", "/").rsplit("/", 1)[-1]
    fig.suptitle(f"Fig. 8: {corpus.get('level', 'char')}-level language modelling on {source}\n{mode_line(data)}")
    fig.tight_layout()
    return fig


EXPERIMENT = Experiment(NAME, "Fig. 8: language modelling with softmax, linear, mesa and hybrid Transformers of "
                        "one size", MODES, jobs, analyse, plot, add_arguments=add_arguments, configure=configure,
                        full_is_paper=False)
