"""Shared pieces of the dynamics figures (fig1, fig2, fig3, fig7): tasks with their baseline inputs,
training with a parameter cache, and the [P3] per-time-step evaluation against the [A1]-[A5] baselines.

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858.

Evaluation ([P3], EXPERIMENTS.md): per-time-step loss = sum over batch and dimensions / (2B)
(``solvers.per_step_loss``) on one batch per evaluation seed; the figure JSON holds the mean over
seeds (= the mean over all evaluation sequences) and the standard deviation over seeds.  The
official evaluation seeds are 1, 11, 111, 1111, 11111 with one batch of 256 each; baselines' eta and
lam are tuned by line search on a separate batch (official: one batch of 512).

Shapes: B batch, T time, n state size, m observation size, k history length ([T3]).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import solvers
from ..analysis import per_step_summary
from ..config import ModelConfig
from ..runio import load_checkpoint, save_checkpoint, atomic_write_bytes, _to_jsonable
from ..train import DynamicsTask, TrainConfig, train

#: the official evaluation seeds (their notebook)
EVAL_SEEDS = (1, 11, 111, 1111, 11111)


# ---------------------------------------------------------------------------------------------- tasks
class LinearTask(DynamicsTask):
    """[T1] with [T2] constructed tokens (or raw states); baselines regress s_{t'} on s_{t'-1}."""

    name = "T1"

    def baseline_inputs(self, x):
        """(s (B, T, n), feats or None) for ``mesa_ref.solvers``."""
        x = np.asarray(x)
        s = x[..., self.n:2 * self.n] if self.tokens == "constructed" else x
        return np.ascontiguousarray(s), None


@dataclass(frozen=True)
class PartialTask:
    """[T3] partially observed linear dynamics: tokens = last k observations (B, T, k*m), target o_{t+1}.
    Baselines: ridge regression of o_{t'} on the history token of t'-1 (``feats`` = the tokens)."""
    n: int = 10
    m: int = 10
    k: int = 4
    T: int = 50
    sigma: float = 0.01
    obs_sigma: float = 0.0
    name = "T3"

    def batch(self, rng, batch: int, dtype=np.float32):
        from ..data import partially_observed_batch
        return partially_observed_batch(rng, batch, T=self.T, n=self.n, m=self.m, k=self.k, sigma=self.sigma,
                                        obs_sigma=self.obs_sigma, dtype=dtype)

    def baseline_inputs(self, x):
        x = np.asarray(x)
        return np.ascontiguousarray(x[..., :self.m]), np.ascontiguousarray(x)

    def to_dict(self):
        return {"name": "partially_observed", **dataclasses.asdict(self)}


@dataclass(frozen=True)
class NonlinearTask:
    """[T4] nonlinear dynamics s_{t+1} = W* phi(s_t) + eps with [T2] constructed tokens.  Baselines:
    ridge on the true features phi(s) (``feats``, an oracle the model does not have) and, under the
    name ``lsq_linear``, ridge on the raw states."""
    n: int = 10
    T: int = 50
    sigma: float = 0.01
    mlp_seed: int = 0
    name = "T4"

    def batch(self, rng, batch: int, dtype=np.float32):
        from ..data import mlp_params, nonlinear_batch
        A, Bm = mlp_params(self.mlp_seed, self.n)
        return nonlinear_batch(rng, batch, T=self.T, n=self.n, sigma=self.sigma, A=A, Bm=Bm, dtype=dtype)

    def baseline_inputs(self, x):
        from ..data import mlp_features, mlp_params
        x = np.asarray(x)
        s = np.ascontiguousarray(x[..., self.n:2 * self.n])
        A, Bm = mlp_params(self.mlp_seed, self.n)
        return s, mlp_features(s, A, Bm)

    def to_dict(self):
        return {"name": "nonlinear_dynamics", **dataclasses.asdict(self)}


# ---------------------------------------------------------------------------------------------- training
def _key(record: dict) -> str:
    blob = json.dumps(_to_jsonable(record), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def train_cached(ctx, cfg: ModelConfig, task, tcfg: TrainConfig, tag: str, *, cache: bool = True):
    """Train ``ctx.model(cfg)`` on ``task`` (mesa_ref.train.train, float32), or load the parameters a
    previous run with the same full configuration (model, training, task, backend) left in
    ``ctx.out/.cache/<tag>-<hash>.npz`` (written atomically; the record is compared on load, so a
    hash collision cannot return the wrong model).  Returns (model, params (NumPy), metrics)."""
    model = ctx.model(cfg)
    record = {"model": cfg.to_dict(), "train": dataclasses.asdict(tcfg), "task": task.to_dict(),
              "backend": ctx.backend, "dtype": "float32"}
    record = json.loads(json.dumps(_to_jsonable(record)))
    path = Path(ctx.out) / ".cache" / f"{tag}-{_key(record)}.npz"
    if cache and path.exists():
        try:
            arrays, meta = load_checkpoint(path)
            if meta.get("record") == record:
                return model, arrays, meta["metrics"]
        except Exception:  # an unreadable cache entry is simply recomputed
            pass
    res = train(model, task, tcfg, None, progress=ctx.progress, dtype=np.float32, xp=ctx.xp)
    params = {k: _host(v) for k, v in res.params.items()}
    metrics = {k: v for k, v in res.metrics.items() if k in ("step", "test_loss", "final_test_loss",
                                                                 "initial_test_loss", "seconds")}
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        ign = path.parent / ".gitignore"
        if not ign.exists():
            atomic_write_bytes(ign, b"# trained-parameter cache of the figure scripts\n*\n")
        save_checkpoint(path, params, {"record": record, "metrics": metrics})
    return model, params, metrics


def _host(a):
    return a.get() if type(a).__module__.startswith("cupy") else np.asarray(a)


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
        preds.append(np.asarray(_host(y), np.float64))
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
