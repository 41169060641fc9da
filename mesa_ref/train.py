"""Training: AdamW, gradient clipping, warm-up + cosine schedule, held-out test loss, atomic checkpoints.

Defaults are the authors' (docs/experiments.md): AdamW (b1 0.9, b2 0.999, eps 1e-8, weight decay 0.05),
peak lr 3e-4 (4e-4 for mesa models, as their config comments say), linear warm-up from 0 over 1000
steps, cosine decay to 1e-5 at step 20000, gradient clipping at 1, batch 256, test loss = mean over
10 fixed held-out batches.  Their clipping is element-wise (optax.clip); ours defaults to clipping by
global norm (``clip_mode="elementwise"`` gives theirs).  The default run length is 2,500 steps, the
length of the authors' notebook run (seed 42, test loss 1.67 -> about 0.43).

Command line (with no flags it trains the authors' default model on [T1]/[T2]):

    python -m mesa_ref.train [--steps N] [--seed S] [--layers L] [--attention linear|softmax|mesa]
                             [--out DIR] [--resume | --overwrite] ...
    python -m mesa_fast.train ...     the same command on the fast backend (``--backend ref|fast``)

This module imports nothing above the reference: its command line runs ``mesa_ref.ops``, and
``mesa_fast.train`` hands ``main`` the fast ops through its ``backends`` argument.

A run directory holds config.json, metrics.json (test-loss curve, final_test_loss), metrics.csv and
checkpoint.npz (written atomically; ``--resume`` continues bit-for-bit on the CPU).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .model import Transformer
from .ops._common import array_module
from .optim import AdamW, check_lr_scale  # noqa: F401  (AdamW(params, tcfg): the one optimiser, mesa_ref/optim.py)
from .runio import CLIError, as_json, ensure_writable_dir, load_checkpoint, run_cli, save_checkpoint, write_json
from .tasks import LinearTask


# ---------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2500             # optimisation steps (authors' notebook run)
    batch: int = 256              # sequences per step
    lr: float = 3e-4              # peak learning rate
    warmup_steps: int = 1000      # linear warm-up from 0
    decay_steps: int = 20000      # cosine decay reaches final_lr here
    final_lr: float = 1e-5
    weight_decay: float = 0.05    # decoupled (AdamW)
    lr_scale: tuple = ()          # ((suffix, factor), ...): those parameters step with lr * factor; () = none
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    clip_mode: str = "global_norm"   # "global_norm" | "elementwise" (the authors' optax.clip)
    eval_every: int = 100         # test loss every this many steps (and at the end)
    test_batches: int = 10        # fixed held-out batches for the test loss
    checkpoint_every: int = 500   # checkpoint every this many steps (and at the end)
    seed: int = 42

    def __post_init__(self):
        for name in ("steps", "batch", "eval_every", "test_batches", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        for name in ("lr", "final_lr"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)!r}")
        if self.warmup_steps < 0 or self.decay_steps < 1:
            raise ValueError("warmup_steps/decay_steps: expected warmup_steps >= 0 and decay_steps >= 1")
        if self.clip_mode not in ("global_norm", "elementwise"):
            raise ValueError(f"clip_mode: expected 'global_norm' or 'elementwise', got {self.clip_mode!r}")
        object.__setattr__(self, "lr_scale", check_lr_scale(self.lr_scale))
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip: expected None or > 0, got {self.grad_clip!r}")


def learning_rate(step: int, c: TrainConfig) -> float:
    """Warm-up + cosine schedule (optax.warmup_cosine_decay_schedule with init value 0); ``step`` counts from 0."""
    if step < c.warmup_steps:
        return c.lr * step / c.warmup_steps
    frac = min(1.0, (step - c.warmup_steps) / max(1, c.decay_steps - c.warmup_steps))
    return c.final_lr + 0.5 * (c.lr - c.final_lr) * (1 + math.cos(math.pi * frac))


# ---------------------------------------------------------------------------- optimiser
def clip_gradients(grads: dict, c: TrainConfig) -> tuple[dict, float]:
    """Clip by global norm (g * clip / max(norm, clip)) or element-wise to [-clip, clip]. Returns (grads, norm)."""
    xp = array_module(*grads.values())
    norm = float(xp.sqrt(sum(float((g * g).sum()) for g in grads.values())))
    if c.grad_clip is None:
        return grads, norm
    if c.clip_mode == "elementwise":
        return {k: xp.clip(g, -c.grad_clip, c.grad_clip) for k, g in grads.items()}, norm
    scale = c.grad_clip / max(norm, c.grad_clip)
    return {k: g * g.dtype.type(scale) for k, g in grads.items()}, norm


# ---------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    params: dict
    metrics: dict


def train(model: Transformer, task, tcfg: TrainConfig, out_dir=None, *, resume: bool = False,
          progress: bool = True, dtype=np.float32, xp=np, params: dict | None = None,
          on_checkpoint=None) -> TrainResult:
    """Train ``model`` on batches from ``task`` (anything with ``batch(rng, B, dtype) -> (x, y)`` and
    ``to_dict()``; the fixed test batches come from ``task.test_batch`` where the task has one).  With
    ``out_dir``, writes config.json, metrics.json/.csv and checkpoint.npz there, and calls
    ``on_checkpoint(step, metrics)`` after each checkpoint is on disk.
    ``xp`` = cupy keeps parameters and batches on the GPU.  Same seed, same numbers."""
    out = Path(out_dir) if out_dir is not None else None
    config_record = {"model": model.config.to_dict(), "train": dataclasses.asdict(tcfg), "task": task.to_dict(),
                     "dtype": np.dtype(dtype).name}
    data_rng = np.random.default_rng([tcfg.seed, 1])
    test_rng = np.random.default_rng([tcfg.seed, 2])
    draw_test = getattr(task, "test_batch", task.batch)      # a task with held-out data says so (mesa_ref.tasks)
    test_set = [tuple(xp.asarray(a) for a in draw_test(test_rng, tcfg.batch, dtype)) for _ in range(tcfg.test_batches)]
    if params is None:
        params = model.init(tcfg.seed, dtype=dtype)
    params = {k: xp.asarray(v) for k, v in params.items()}
    opt = AdamW(params, tcfg)
    metrics = {"step": [], "test_loss": [], "train_loss": [], "lr": [], "grad_norm": [], "seconds": []}
    start = 0
    ckpt = out / "checkpoint.npz" if out is not None else None
    if out is not None:
        ensure_writable_dir(out)
        if resume and ckpt.exists():
            arrays, meta = load_checkpoint(ckpt)
            if _without_steps(meta.get("config")) != _without_steps(as_json(config_record)):
                raise CLIError(f"{ckpt}: was written with a different configuration; use another --out or drop --resume")
            try:
                params = {k: xp.asarray(arrays["p." + k]) for k in params}
                opt.m = {k: xp.asarray(arrays["m." + k]) for k in params}
                opt.v = {k: xp.asarray(arrays["v." + k]) for k in params}
            except KeyError as e:
                raise CLIError(f"{ckpt}: missing array {e}") from None
            opt.t = start = int(meta["step"])
            data_rng.bit_generator.state = meta["data_rng"]
            metrics = meta["metrics"]
        write_json(out / "config.json", config_record)

    def test_loss():
        return float(np.mean([model.loss(params, x, y) for x, y in test_set]))

    def checkpoint(step):
        if out is None:
            return
        arrays = {**{"p." + k: v for k, v in params.items()}, **{"m." + k: v for k, v in opt.m.items()},
                  **{"v." + k: v for k, v in opt.v.items()}}
        meta = {"step": step, "data_rng": data_rng.bit_generator.state, "metrics": metrics, "config": config_record}
        save_checkpoint(ckpt, arrays, meta)
        _write_metrics(out, metrics)
        if on_checkpoint is not None:
            on_checkpoint(step, metrics)

    if start == 0 and not metrics["step"]:
        metrics["step"].append(0); metrics["test_loss"].append(test_loss()); metrics["train_loss"].append(None)
        metrics["lr"].append(0.0); metrics["grad_norm"].append(None); metrics["seconds"].append(0.0)
    t0 = time.perf_counter() - (metrics["seconds"][-1] if metrics["seconds"] else 0.0)
    bar = _progress(range(start, tcfg.steps), progress, initial=start, total=tcfg.steps)
    train_loss = float("nan")
    for step in bar:
        x, y = (xp.asarray(a) for a in task.batch(data_rng, tcfg.batch, dtype))
        train_loss, grads = model.loss_and_grads(params, x, y)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training diverged at step {step}: loss {train_loss}")
        grads, gnorm = clip_gradients(grads, tcfg)
        lr = learning_rate(step, tcfg)
        opt.update(params, grads, lr)
        done = step + 1
        if done % tcfg.eval_every == 0 or done == tcfg.steps:
            tl = test_loss()
            for k, v in (("step", done), ("test_loss", tl), ("train_loss", train_loss), ("lr", lr),
                         ("grad_norm", gnorm), ("seconds", time.perf_counter() - t0)):
                metrics[k].append(v)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(test_loss=f"{tl:.4f}", train=f"{train_loss:.4f}")
        if done % tcfg.checkpoint_every == 0 or done == tcfg.steps:
            checkpoint(done)
    metrics["final_test_loss"] = metrics["test_loss"][-1]
    metrics["initial_test_loss"] = metrics["test_loss"][0]
    if out is not None:
        _write_metrics(out, metrics)
    return TrainResult(params=params, metrics=metrics)


def _without_steps(record):
    """The config record minus the run length: a resumed run may extend --steps."""
    if not isinstance(record, dict) or "train" not in record:
        return record
    return {**record, "train": {k: v for k, v in record["train"].items() if k != "steps"}}


def _write_metrics(out: Path, metrics: dict) -> None:
    write_json(out / "metrics.json", metrics)
    rows = ["step,test_loss,train_loss,lr,grad_norm,seconds"]
    for i in range(len(metrics["step"])):
        rows.append(",".join("" if metrics[k][i] is None else repr(metrics[k][i])
                             for k in ("step", "test_loss", "train_loss", "lr", "grad_norm", "seconds")))
    from .runio import atomic_write_bytes
    atomic_write_bytes(out / "metrics.csv", ("\n".join(rows) + "\n").encode())


def _progress(it, enabled, **kw):
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, dynamic_ncols=True, leave=True, **kw)


# ---------------------------------------------------------------------------- command line
RUN_FILES = ("config.json", "metrics.json", "metrics.csv", "checkpoint.npz")   # what a run directory holds


def schedule_for(steps: int, warmup_steps: int | None = None, decay_steps: int | None = None) -> tuple[int, int]:
    """(warm-up, cosine horizon) for a command-line run of ``steps`` steps: unless given, the paper's proportions
    at 20,000 steps (1,000 warm-up steps, the cosine reaching its floor at the last step), scaled to ``steps``.
    ``TrainConfig``'s own defaults (1,000 and 20,000, the authors' fixed schedule) are left alone: the figures'
    jobs use them and their keys depend on them."""
    ref = TrainConfig()
    warm = round(steps * ref.warmup_steps / ref.decay_steps) if warmup_steps is None else warmup_steps
    decay = steps if decay_steps is None else decay_steps
    return warm, decay


def build_parser(prog="python -m mesa_ref.train"):
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Train a Transformer on fully observed linear dynamics ([T1], "
                                "constructed tokens [T2]); defaults are the authors' default model.")
    p.add_argument("--steps", type=int, default=TrainConfig.steps, help="optimisation steps")
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="initialisation and data seed")
    p.add_argument("--layers", type=int, default=2, help="number of attention layers")
    p.add_argument("--attention", choices=("linear", "softmax", "mesa"), default="linear", help="attention kind")
    p.add_argument("--heads", type=int, default=ModelConfig.heads, help="attention heads per layer")
    p.add_argument("--batch", type=int, default=TrainConfig.batch, help="sequences per step")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (None: 3e-4; 4e-4 for mesa)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warm-up steps (None: steps/20, the paper's 1,000 of 20,000)")
    p.add_argument("--decay-steps", type=int, default=None,
                   help="step at which the cosine decay reaches its floor (None: --steps)")
    p.add_argument("--clip-mode", choices=("global_norm", "elementwise"), default=TrainConfig.clip_mode,
                   help="gradient clipping at 1: by global norm, or element-wise as the authors' optax.clip")
    p.add_argument("--eval-every", type=int, default=TrainConfig.eval_every, help="test loss every N steps")
    p.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every,
                   help="checkpoint every N steps")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="parameter and data dtype")
    p.add_argument("--backend", choices=("ref", "fast"), default="ref",
                   help="ref: mesa_ref.ops (NumPy); fast: mesa_fast.ops (Numba on the CPU, CuPy on a GPU), "
                        "from python -m mesa_fast.train")
    p.add_argument("--out", default="runs/train", help="run directory; one that already holds a run is refused "
                                                       "unless --resume or --overwrite is given")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    what.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def prepare_run_dir(path, *, resume: bool, overwrite: bool) -> Path:
    """The run directory ``path``, checked: a directory that already holds a run (any of ``RUN_FILES``) is refused
    unless ``resume`` (continue it) or ``overwrite`` (its run files are deleted first) is given."""
    out = ensure_writable_dir(path)
    present = [n for n in RUN_FILES if (out / n).exists()]
    if present and not (resume or overwrite):
        raise CLIError(f"{out} already holds a run ({', '.join(present)}): pass --resume to continue it, "
                       f"--overwrite to replace it, or choose another --out")
    if present and overwrite:
        for n in present:
            (out / n).unlink()
    return out


def _recorded_schedule(out: Path):
    """(warmup_steps, decay_steps) recorded in ``out``'s config.json, or (None, None)."""
    try:
        rec = json.loads((out / "config.json").read_text())["train"]
        return int(rec["warmup_steps"]), int(rec["decay_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def reference_backend(name: str):
    """(ops namespace, array module) of the reference, the only backend this package's command line runs."""
    if name != "ref":
        raise CLIError(f"--backend {name}: python -m mesa_ref.train runs the reference only; "
                       f"use python -m mesa_fast.train for the fast backend")
    from . import ops
    return ops, np


def main(argv=None, *, prog="python -m mesa_ref.train", default_backend="ref", backends=reference_backend) -> int:
    """The trainer's command line.  ``backends(name) -> (ops, xp)`` resolves ``--backend`` (the fast package
    passes its own, which also makes the process-wide settings its kernels want)."""
    parser = build_parser(prog)
    parser.set_defaults(backend=default_backend)
    args = parser.parse_args(argv)

    def body() -> int:
        if args.layers < 1:
            raise CLIError(f"--layers: expected a positive integer, got {args.layers}")
        for flag in ("warmup_steps", "decay_steps"):
            v = getattr(args, flag)
            if v is not None and v < (0 if flag == "warmup_steps" else 1):
                raise CLIError(f"--{flag.replace('_', '-')}: expected a {'non-negative' if v < 0 else 'positive'} "
                               f"integer, got {v}")
        ops, xp = backends(args.backend)      # before the run directory: a refused backend writes nothing
        out = prepare_run_dir(args.out, resume=args.resume, overwrite=args.overwrite)
        warm, decay = args.warmup_steps, args.decay_steps
        if args.resume and (out / "checkpoint.npz").exists():
            # a resumed run keeps the schedule it started with, even when --steps now extends it
            rw, rd = _recorded_schedule(out)
            warm, decay = (rw if warm is None else warm), (rd if decay is None else decay)
        warm, decay = schedule_for(args.steps, warm, decay)
        lr = args.lr if args.lr is not None else (4e-4 if args.attention == "mesa" else 3e-4)
        tcfg = TrainConfig(steps=args.steps, seed=args.seed, batch=args.batch, lr=lr, clip_mode=args.clip_mode,
                           eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                           warmup_steps=warm, decay_steps=decay)
        mcfg = ModelConfig(layers=(args.attention,) * args.layers, heads=args.heads)
        res = train(Transformer(mcfg, ops=ops), LinearTask(), tcfg, out, resume=args.resume,
                    progress=not args.no_progress, dtype=np.dtype(args.dtype), xp=xp)
        m = res.metrics
        print(f"test loss {m['initial_test_loss']:.4f} -> {m['final_test_loss']:.4f} after {tcfg.steps} steps "
              f"(warm-up {warm}, cosine to step {decay}); run directory {out}")
        return 0

    return run_cli(body, interrupted="interrupted (the last checkpoint is intact; rerun with --resume)")

if __name__ == "__main__":
    sys.exit(main())
