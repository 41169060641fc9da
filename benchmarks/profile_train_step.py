"""Where a training step's time goes: wall time per op of one backend, for one model family (benchmarks/families.py).

Every public op of the chosen namespace is wrapped with a wall-clock and CPU timer (the wrapper costs ~1 us per call, a few
dozen calls per step) and the model runs ``loss_and_grads`` + gradient clipping + AdamW, as in
``bench_train_step.py``. Printed: median step time over the timed steps, then the summed wall time of each op
per step (ops called by other ops are not double counted: the model calls every op itself). What the table does
not list is Python between the ops (parameter concatenation, residual additions, the loss's NumPy code).
Timings are never asserted anywhere.

Threads. mesa_fast's ``batch_map`` runs one shard of the batch per thread, every op of a shard on that thread:
the op columns are then thread time, summed over the threads (wall time per call, and the calling thread's CPU
time), and the rows add up to the step's wall time x the number of shards. ``--no-shards`` puts the reference's
``batch_map`` (the whole batch on the calling thread) in its place, so that every op splits its own rows over
the threads as before; the CPU column is then the process's CPU time during the op.

    python benchmarks/profile_train_step.py --backend fast            # mesa_fast, default model
    python benchmarks/profile_train_step.py --backend ref --steps 20
    MESA_FAST_KEEP_HEAP=0 python benchmarks/profile_train_step.py     # glibc's default heap policy

As in ``bench_train_step.py``, ``mesa_fast.keep_freed_memory()`` is called for both backends, so both run with
the heap setting of ``mesa_fast/runtime/heap.py`` unless MESA_FAST_KEEP_HEAP=0. OPENBLAS_NUM_THREADS=1 is set
here before NumPy loads unless the environment sets it.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
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
    p.add_argument("--no-shards", action="store_true",
                   help="the whole batch on the calling thread, each op splitting its rows over the threads")
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
    lock = threading.Lock()
    shards = []                             # shards per batch_map call
    clock = time.process_time if args.no_shards else time.thread_time

    def timed(name, fn):
        def call(*a, **kw):
            t0, c0 = time.perf_counter(), clock()
            try:
                return fn(*a, **kw)
            finally:
                dt, dc = time.perf_counter() - t0, clock() - c0
                with lock:
                    spent[name] += dt
                    cpu[name] += dc
        return call

    def batch_map(fn, x):
        parts = (ref_ops.batch_map if args.no_shards else base.batch_map)(fn, x)
        shards.append(len(parts))
        return parts

    def wrap(n):
        f = getattr(base, n)
        if n == "batch_map":
            return batch_map
        return timed(n, f) if callable(f) and not isinstance(f, type) else f

    ns = types.SimpleNamespace(**{n: wrap(n) for n in base.__all__})
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
    shards.clear()
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
    k = max(shards) if shards else 1       # threads the step's ops ran on
    avail = total * k
    if k > 1:
        print(f"{k} shards of the batch, one per thread: the op columns are thread time summed over the threads, "
              f"{1e3 * avail:.1f} ms of thread time per step in all (wall x {k})")
    print(f"{'op':44s} {'wall ms/step':>12s} {'share':>6s} {'CPU ms/step':>12s}")
    listed = listed_cpu = 0.0
    for name, sec in sorted(spent.items(), key=lambda kv: -kv[1]):
        per, per_cpu = sec / args.steps, cpu[name] / args.steps
        listed += per
        listed_cpu += per_cpu
        print(f"{name:44s} {1e3 * per:12.2f} {100 * per / avail:5.1f}% {1e3 * per_cpu:12.2f}")
    rest = "(not in an op: Python, NumPy glue" + (", waiting)" if k > 1 else ")")
    print(f"{rest:44s} {1e3 * (avail - listed):12.2f} "
          f"{100 * (avail - listed) / avail:5.1f}% {1e3 * (total_cpu - listed_cpu):12.2f}")


if __name__ == "__main__":
    from timing import training_paused
    with training_paused():
        main()
