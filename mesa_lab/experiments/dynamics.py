"""Shared pieces of the dynamics figures (fig1, fig2, fig3, fig7): the config fields they share (with the
paper's values as defaults) and the [P3] per-time-step evaluation against the [A1]-[A5] baselines.

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858.

Evaluation ([P3], docs/experiments.md): per-time-step loss = sum over batch and dimensions / (2B)
(``solvers.per_step_loss``) on one batch per evaluation seed; the figure JSON holds the mean over
seeds (= the mean over all evaluation sequences) and the standard deviation over seeds.  The
official evaluation seeds are 1, 11, 111, 1111, 11111 with one batch of 256 each; baselines' eta and
lam are tuned by line search on a separate batch (official: one batch of 512).

Shapes: B batch, T time, n state size, m observation size, k history length ([T3]).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mesa_ref import solvers
from mesa_ref.analysis import per_step_summary
from mesa_ref.config import ModelConfig
from mesa_ref.ops._common import to_host
from mesa_ref.tasks import LinearTask, NonlinearTask, PartialTask  # noqa: F401  (re-exported)
from mesa_ref.train import TrainConfig

#: the official evaluation seeds (their notebook)
EVAL_SEEDS = (1, 11, 111, 1111, 11111)


# ---------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class DynamicsConfig:
    """The fields every dynamics figure's config shares; the defaults are the paper's (docs/experiments.md)."""
    n: int = 10                    # state size
    T: int = 50                    # sequence length
    sigma: float = 0.01            # transition noise
    heads: int = 4
    key_size: int = 20
    init_std: float = 0.0002       # N(0, init_std^2) weights
    clip: float | None = 1.5       # activation clipping after every block
    batch: int = 256
    steps: int = 20000
    lr: float = 3e-4               # peak learning rate (AdamW)
    warmup_steps: int = 1000
    decay_steps: int = 20000       # cosine decay reaches final_lr here
    final_lr: float = 1e-5
    weight_decay: float = 0.05
    eval_every: int = 100          # test loss every this many steps
    test_batches: int = 10
    checkpoint_every: int = 500
    eval_seeds: tuple = EVAL_SEEDS  # one evaluation batch per seed
    eval_batch: int = 256
    tune_batch: int = 512          # the batch the baselines' eta and lam are tuned on

    def train_config(self, seed: int, **changes) -> TrainConfig:
        f = dict(steps=self.steps, batch=self.batch, lr=self.lr, warmup_steps=self.warmup_steps,
                 decay_steps=self.decay_steps, final_lr=self.final_lr, weight_decay=self.weight_decay,
                 eval_every=self.eval_every, test_batches=self.test_batches, checkpoint_every=self.checkpoint_every,
                 seed=seed)
        f.update(changes)
        return TrainConfig(**f)

    def model_config(self, layers, **changes) -> ModelConfig:
        """A model on [T2] constructed tokens of this config's state size."""
        f = dict(layers=tuple(layers), heads=self.heads, width=4 * self.n, key_size=self.key_size,
                 input="constructed", input_dim=self.n, output_dim=self.n, init_std=self.init_std, clip=self.clip)
        f.update(changes)
        return ModelConfig(**f)

    def linear_task(self) -> LinearTask:
        return LinearTask(n=self.n, T=self.T, sigma=self.sigma)


def trained_model(ctx, result):
    """(model bound to the run's ops, params) of a finished job's result."""
    from mesa_ref.config import ModelConfig as _MC
    cfg = _MC.from_dict({**result.record["model"], "layers": tuple(result.record["model"]["layers"])})
    return ctx.model(cfg), result.params


def train_summary(result) -> dict:
    """The learning curve and final loss of a job's result, for the figure JSON."""
    m = result.metrics
    return {k: m[k] for k in ("step", "test_loss", "final_test_loss", "initial_test_loss", "seconds") if k in m}


# ---------------------------------------------------------------------------------------------- evaluation
def eval_batches(ctx, task, seeds, batch: int, dtype=np.float64):
    """One batch per evaluation seed: rng = default_rng(seed) (the official seeds when --seed 0),
    default_rng([seed, --seed]) otherwise."""
    out = []
    for s in seeds:
        rng = np.random.default_rng(s if ctx.seed == 0 else [s, ctx.seed])
        out.append(task.batch(rng, batch, dtype))
    return out


def model_predictions(ctx, model, params, batches):
    """Model predictions (B, T, out) as float64 NumPy arrays, one per batch (float32 forward)."""
    xp = ctx.xp
    p = {k: xp.asarray(v) for k, v in params.items()}
    preds = []
    for x, _ in batches:
        y, _ = model.forward(p, xp.asarray(np.asarray(x, np.float32)))
        preds.append(np.asarray(to_host(y), np.float64))
    return preds


def tune_baselines(task, tune_batch, *, features: bool = True) -> dict:
    """[A1] eta and [A3] lam tuned by line search on one batch (x, y): {"eta": .., "lam": ..}
    (with feats for tasks that have them, and "lam_linear" for ridge on the raw states)."""
    x, y = tune_batch
    s, feats = task.baseline_inputs(x)
    y = np.asarray(y, np.float64)
    s = np.asarray(s, np.float64)
    feats = None if feats is None else np.asarray(feats, np.float64)
    out = {"eta": solvers.tune_eta(s, y, feats=feats).value, "lam": solvers.tune_lam(s, y, feats=feats).value}
    if feats is not None and features:
        out["lam_linear"] = solvers.tune_lam(s, y).value
    return out


def baseline_predictions(task, batches, tuned: dict, methods) -> dict:
    """method -> list of (B, T, n) predictions (float64), for method in
    "gd" [A1], "lsq" [A3], "lsq_linear" (ridge on raw states, [T4]), "gd_K<k>" [A2] (k GD steps, eta
    tuned), "neumann_K<k>" [A4] (preconditioned GD with a Neumann series of k terms beyond the identity,
    scalar 70, eta tuned); the tuned etas are ``tuned[method]`` (``tune_k_step``)."""
    out = {m: [] for m in methods}
    for x, _ in batches:
        s, feats = task.baseline_inputs(x)
        s = np.asarray(s, np.float64)
        feats = None if feats is None else np.asarray(feats, np.float64)
        for m in methods:
            if m == "gd":
                p = solvers.gd_one_step(s, tuned["eta"], feats)
            elif m == "lsq":
                p = solvers.ridge(s, tuned["lam"], feats)
            elif m == "lsq_linear":
                p = solvers.ridge(s, tuned["lam_linear"])
            elif m.startswith("gd_K"):
                p = solvers.gd_k_steps(s, tuned[m], int(m[4:]), feats=feats)
            elif m.startswith("neumann_K"):
                A = solvers.curvature(s, tuned["lam"], feats)
                p = solvers.preconditioned_gd(s, solvers.neumann_inverse(A, int(m[9:])), tuned[m], feats)
            else:
                raise ValueError(f"methods: unknown baseline {m!r}")
            out[m].append(p)
    return out


def summarise(preds: dict, batches) -> dict:
    """[P3] {"per_step_loss": method -> (T,) mean, "per_step_spread": method -> (T,) std over seeds,
    "final_loss": method -> mean over t of the mean curve (the official test loss)}."""
    tg = [np.asarray(y, np.float64) for _, y in batches]
    ps, sp, fl = {}, {}, {}
    for name, pl in preds.items():
        r = per_step_summary(np.stack([solvers.per_step_loss(p, y) for p, y in zip(pl, tg)]))
        ps[name], sp[name], fl[name] = r.mean.tolist(), r.spread.tolist(), float(r.mean.mean())
    return {"per_step_loss": ps, "per_step_spread": sp, "final_loss": fl}


def ratio_after(per_step: dict, a: str, b: str, t_min: int = 10) -> float:
    """mean_{t >= t_min} loss_a(t) / mean_{t >= t_min} loss_b(t) (t counts from 1)."""
    la, lb = np.asarray(per_step[a]), np.asarray(per_step[b])
    return float(la[t_min - 1:].mean() / lb[t_min - 1:].mean())


def tune_k_step(task, tune_batch, method: str, lam: float | None = None) -> float:
    """eta for "gd_K<k>" [A2] (k GD steps) or "neumann_K<k>" [A4] (preconditioned GD, Neumann series with
    k terms beyond the identity, scalar 70, ridge lam ``lam``), by line search over ``solvers.ETA_GRID``
    (times 1..100 for the Neumann form, whose H already divides by 70) on one batch."""
    x, y = tune_batch
    s, feats = task.baseline_inputs(x)
    s, y = np.asarray(s, np.float64), np.asarray(y, np.float64)
    feats = None if feats is None else np.asarray(feats, np.float64)
    if method.startswith("gd_K"):
        K = int(method[4:])
        return solvers.line_search(lambda eta: solvers.gd_k_steps(s, eta, K, feats=feats), y, solvers.ETA_GRID).value
    if method.startswith("neumann_K"):
        K = int(method[9:])
        H = solvers.neumann_inverse(solvers.curvature(s, lam, feats), K)
        return solvers.line_search(lambda eta: solvers.preconditioned_gd(s, H, eta, feats), y,
                                   np.logspace(-2, 2, 41)).value
    raise ValueError(f"method: expected gd_K<k> or neumann_K<k>, got {method!r}")


def final_spread(per_step_by_seed) -> float:
    """Std over seeds (ddof 1; 0 for one seed) of each seed's mean-over-t loss."""
    a = np.asarray(per_step_by_seed, np.float64).mean(axis=1)
    return float(a.std(ddof=1)) if a.size > 1 else 0.0


def evaluate_models(ctx, task, trained: dict, batches, tuned: dict, baselines) -> dict:
    """[P3] summary (``summarise``) of trained models {name: (model, params)} and the named baselines,
    plus "final_spread": method -> std over seeds of the per-seed mean loss."""
    preds = {name: model_predictions(ctx, m, p, batches) for name, (m, p) in trained.items()}
    preds.update(baseline_predictions(task, batches, tuned, baselines))
    out = summarise(preds, batches)
    tg = [np.asarray(y, np.float64) for _, y in batches]
    out["final_spread"] = {k: final_spread([solvers.per_step_loss(p, y) for p, y in zip(v, tg)])
                           for k, v in preds.items()}
    return out
