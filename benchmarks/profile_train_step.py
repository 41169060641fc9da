"""Where a training step's time goes: wall time per op of one backend, for one model family (benchmarks/families.py).

Every public op of the chosen namespace is wrapped with a wall-clock and process-CPU timer (the wrapper costs ~1 us per call, a few
dozen calls per step) and the model runs ``loss_and_grads`` + gradient clipping + AdamW, as in
``bench_train_step.py``. Printed: median step time over the timed steps, then the summed wall time of each op
per step (ops called by other ops are not double counted: the model calls every op itself). What the table does
not list is Python between the ops (parameter concatenation, residual additions, the loss's NumPy code).
Timings are never asserted anywhere.

    python benchmarks/profile_train_step.py --backend fast            # mesa_fast, default model
    python benchmarks/profile_train_step.py --backend ref --steps 20
    MESA_FAST_KEEP_HEAP=0 python benchmarks/profile_train_step.py     # glibc's default heap policy

As in ``bench_train_step.py``, ``mesa_fast.keep_freed_memory()`` is called for both backends, so both run with
the heap setting of ``mesa_fast/numba_kernels/_heap.py`` unless MESA_FAST_KEEP_HEAP=0. OPENBLAS_NUM_THREADS=1 is set
here before NumPy loads unless the environment sets it.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from families import FAMILIES, build  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("fast", "ref"), default="fast")
    p.add_argument("--model", choices=tuple(FAMILIES), default="linear2", help="a family of benchmarks/families.py")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=None, help="default: the family's batch")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1):
        p.error("--steps and --batch must be >= 1, --warmup >= 0")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy as np

    import mesa_fast
    import mesa_fast.ops as fast_ops
    import mesa_ref.ops as ref_ops
    from mesa_ref.model import Transformer
    from mesa_ref.train import AdamW, TrainConfig, clip_gradients

    mesa_fast.keep_freed_memory()
    base = fast_ops if args.backend == "fast" else ref_ops
    spent = collections.defaultdict(float)
    cpu = collections.defaultdict(float)

    def timed(name, fn):
        def call(*a, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - t0
                cpu[name] += time.process_time() - c0
        return call

    ns = types.SimpleNamespace(**{n: (timed(n, getattr(base, n)) if callable(getattr(base, n))
                                      and not isinstance(getattr(base, n), type) else getattr(base, n))
                                  for n in base.__all__})
    cfg, task, batch = build(args.model)
    args.batch = args.batch or batch
    model = Transformer(cfg, ops=ns)
    params = model.init(0, dtype=np.float32)
    x, y = task.batch(np.random.default_rng(0), args.batch, np.float32)
    tcfg = TrainConfig(batch=args.batch)
    opt = AdamW(params, tcfg)

    def step():
        _, grads = model.loss_and_grads(params, x, y)
        t0, c0 = time.perf_counter(), time.process_time()
        grads, _ = clip_gradients(grads, tcfg)
        opt.update(params, grads, 1e-4)
        spent["(gradient clipping + AdamW)"] += time.perf_counter() - t0
        cpu["(gradient clipping + AdamW)"] += time.process_time() - c0

    for _ in range(args.warmup):
        step()
    spent.clear()
    cpu.clear()
    walls, cpus = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    total = sum(walls) / args.steps
    total_cpu = sum(cpus) / args.steps
    try:
        import resource
        peak = f", peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    except ImportError:  # pragma: no cover - not POSIX
        peak = ""
    print(f"{args.model} on mesa_{args.backend}, batch {args.batch}, {args.steps} steps: median step "
          f"{1e3 * float(np.median(walls)):.1f} ms, mean {1e3 * total:.1f} ms; process CPU per step: median "
          f"{1e3 * float(np.median(cpus)):.1f} ms{peak}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'op':34s} {'wall ms/step':>12s} {'share':>6s} {'CPU ms/step':>12s}")
    listed = listed_cpu = 0.0
    for name, sec in sorted(spent.items(), key=lambda kv: -kv[1]):
        per, per_cpu = sec / args.steps, cpu[name] / args.steps
        listed += per
        listed_cpu += per_cpu
        print(f"{name:34s} {1e3 * per:12.2f} {100 * per / total:5.1f}% {1e3 * per_cpu:12.2f}")
    print(f"{'(not in an op: Python, NumPy glue)':34s} {1e3 * (total - listed):12.2f} "
          f"{100 * (total - listed) / total:5.1f}% {1e3 * (total_cpu - listed_cpu):12.2f}")


if __name__ == "__main__":
    main()
