"""Median time of one training step, mesa_ref vs mesa_fast, on the CPU.

A step is what ``mesa_ref.train.train`` does per batch: ``loss_and_grads`` + gradient clipping
+ the AdamW update (the batch is drawn beforehand and not timed). Models: the authors' default
(``ModelConfig()``: 2 layers of causal linear attention, 4 heads, width 40, key 20, clip 1.5,
constructed tokens) and a one-layer mesa model (``ModelConfig(layers=("mesa",))``); batch 256,
T 50, float32.

The backends are timed in alternating blocks of steps, each block in a fresh process (after
warm-up), so that a change in the machine's load hits both alike and OpenBLAS threads left
spinning by one backend are not billed to the other. Wall-clock and process-CPU medians are both reported: on a machine shared with
other processes the CPU time is the steadier number. Timing is never asserted anywhere.

    python benchmarks/bench_train_step.py                  # full run, writes benchmarks/results/
    python benchmarks/bench_train_step.py --quick          # a few steps, nothing written
    python benchmarks/bench_train_step.py --blas-threads 1 --numba-threads 1

JAX / PyTorch peers are timed only if installed; neither is a dependency (docs/design.md), and without
them the table says "not installed". The authors' jitted JAX step on a 2-core CPU: ~108 ms (docs/design.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
JAX_REFERENCE_MS = 108.0   # authors' jitted JAX training step, default model, 2-core CPU (docs/design.md)


NOTES = [
    "Notes:", "",
    "- mesa_ref runs NumPy as it comes: OpenBLAS with one thread per core. When other processes load the "
    "cores, OpenBLAS's threads busy-wait at every internal synchronisation and a dense backward "
    "(x.T @ dy, 12800 x 40 x 80) takes ~0.3-1 s instead of ~2 ms; that is most of mesa_ref's step time in a "
    "run with default threads on a busy machine. mesa_fast's dense op runs the same BLAS products split by "
    "rows over its own threads, with OpenBLAS set to one thread while the op runs (numba_kernels/dense.py). "
    "Compare the run with "
    "`--blas-threads 1 --numba-threads 1` (file suffix _1thread) for both backends on one thread each.",
    "- Both backends run with mesa_fast's heap setting (every worker calls mesa_fast.keep_freed_memory(); "
    "mesa_fast/numba_kernels/_heap.py): freed memory stays in the process heap, so the step's large temporaries "
    "do not page-fault every step. It speeds up both (measured 2026-11-29: mesa_fast 56-69 -> 41-43 ms, mesa_ref "
    "106-118 -> 93-96 ms); run with MESA_FAST_KEEP_HEAP=0 for glibc's defaults.",
    "- loss_and_grads skips the gradient w.r.t. the model input (Model.backward(input_grad=False)): one product "
    "fewer in block 0's QKV backward, for both backends.",
    "- Where the fast linear2 step's time goes (`python benchmarks/profile_train_step.py --backend fast`, "
    "2026-11-29, two runs, 27.7 and 28.5 ms steps): dense backward 8.5-8.9 ms and forward 6.3-6.4 ms (BLAS, "
    "rows split over both cores), linear-attention backward 7.4-7.6 ms and forward 3.0-3.1 ms (2 layers), clip "
    "1.4, gradient clipping + AdamW 0.5, MSE 0.5, Python between the ops 1.8-1.9 ms. The reference's step (90 ms "
    "in the same session): linear attention 43.6 ms, dense 25.4 ms, head split/merge copies 12.1 ms (QKV "
    "split and merge alone). Earlier in the day, before the 16-lane FMA attention kernels, the guided thread "
    "pool, the one-pass MSE and the threaded clip, the fast step was 40-49 ms.",
    "- No JAX/PyTorch peer is installed here; the 108 ms of the authors' jitted JAX step is the figure "
    "quoted in docs/design.md, not a measurement on this machine under the same load.",
    "",
]


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per backend and model (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (after compilation)")
    p.add_argument("--block", type=int, default=10, help="steps per alternating block (one process each)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--models", default="linear2,mesa1", help="comma list of linear2, mesa1")
    p.add_argument("--numba-threads", type=int, default=None, help="numba.set_num_threads (default: all cores)")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="set OPENBLAS/OMP/MKL_NUM_THREADS before NumPy is imported (default: untouched)")
    p.add_argument("--quick", action="store_true", help="4 steps, nothing written")
    p.add_argument("--out", default=str(RESULTS), help="directory for bench_train_step_cpu.{json,md}")
    p.add_argument("--tag", default="", help="suffix for the output file names")
    p.add_argument("--no-ops", action="store_true", help="skip the per-op table (each op at the default model's shapes)")
    return p.parse_args(argv)


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:  # pragma: no cover
        return None


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or "unknown"


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
    except Exception:  # pragma: no cover
        return ""


def time_ops(np, ref_ops, fast_ops, reps):
    """Median process-CPU ms of each op, forward and backward, at the default model's shapes
    (B 256, T 50, D 40, H 4, d 20; MLP width 160), float32, for both namespaces."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    B, T, D, H, d = 256, 50, 40, 4, 20
    x = rng.standard_normal((B, T, D)).astype(f32)
    W = (0.1 * rng.standard_normal((D, H * d))).astype(f32)
    qkv = [rng.standard_normal((B, H, T, d)).astype(f32) for _ in range(4)]
    z = rng.standard_normal((B, T, 4 * D)).astype(f32)
    w1, b1 = np.ones(D, f32), np.zeros(D, f32)
    cases = {
        "dense 40->80": (lambda o: o.dense_forward(x, W), lambda o, c: o.dense_backward(np.ones((B, T, H * d), f32), c)),
        "linear attention": (lambda o: o.linear_attention_forward(*qkv[:3]), lambda o, c: o.linear_attention_backward(qkv[3], c)),
        "softmax attention": (lambda o: o.softmax_attention_forward(*qkv[:3]),
                              lambda o, c: o.softmax_attention_backward(qkv[3], c)),
        "layernorm D=40": (lambda o: o.layernorm_forward(x, w1, b1), lambda o, c: o.layernorm_backward(x, c)),
        "gelu 160": (lambda o: o.gelu_forward(z), lambda o, c: o.gelu_backward(z, c)),
        "clip D=40": (lambda o: o.clip_forward(x, c=1.5), lambda o, c: o.clip_backward(x, c)),
    }

    def med(fn):
        fn()
        ts = []
        for _ in range(reps):
            c0 = time.process_time()
            fn()
            ts.append(time.process_time() - c0)
        return 1e3 * float(np.median(ts))

    rows = []
    for name, (fwd, bwd) in cases.items():
        row = {"op": name}
        for label, ops in (("ref", ref_ops), ("fast", fast_ops)):
            cache = fwd(ops)[1]
            row[f"{label}_fwd_cpu_ms"] = med(lambda: fwd(ops))
            row[f"{label}_bwd_cpu_ms"] = med(lambda: bwd(ops, cache))
        rows.append(row)
    return rows


def worker(model_name, backend, batch, warmup, steps, numba_threads):
    """Run in a subprocess: time ``steps`` training steps of one backend; print JSON.

    One process per backend and round: OpenBLAS's threads keep busy-waiting for a while after a
    multi-threaded product, and in a shared process that CPU time would be billed to whichever
    backend runs next."""
    import numpy as np
    import numba

    import mesa_fast
    import mesa_fast.ops as fast_ops
    import mesa_ref.ops as ref_ops
    from mesa_ref.config import ModelConfig
    from mesa_ref.model import Transformer
    from mesa_ref.train import AdamW, DynamicsTask, TrainConfig, clip_gradients

    mesa_fast.keep_freed_memory()            # both backends, as the training entry point does for fast (NOTES)
    if numba_threads:
        numba.set_num_threads(numba_threads)
    cfg = {"linear2": ModelConfig(), "mesa1": ModelConfig(layers=("mesa",))}[model_name]
    tcfg = TrainConfig(batch=batch)
    x, y = DynamicsTask().batch(np.random.default_rng(0), batch, np.float32)
    model = Transformer(cfg, ops=fast_ops if backend == "mesa_fast" else ref_ops)
    params = model.init(0, dtype=np.float32)
    opt = AdamW(params, tcfg)

    def step():
        loss, grads = model.loss_and_grads(params, x, y)
        grads, _ = clip_gradients(grads, tcfg)
        opt.update(params, grads, 1e-4)

    t0 = time.perf_counter()
    step()                                   # compiles the Numba kernels (or loads them from the cache)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(steps):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    print(json.dumps({"wall": wall, "cpu": cpu, "first": first, "numba_threads": numba.get_num_threads()}))


def main(argv=None):
    args = parse(argv)
    if args.blas_threads is not None:          # must happen before NumPy loads its BLAS (here and in workers)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.blas_threads)
    if args.numba_threads is not None:
        os.environ["NUMBA_NUM_THREADS"] = str(args.numba_threads)
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import numba

    import mesa_fast.ops as fast_ops
    import mesa_ref.ops as ref_ops
    from mesa_ref.train import DynamicsTask

    steps = 4 if args.quick else args.steps
    models = ("linear2", "mesa1")
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in wanted:
        if m not in models:
            sys.exit(f"error: --models: unknown model {m!r}; expected a comma list of {list(models)}")
    task = DynamicsTask()

    load_before = loadavg()
    rows = []
    for name in wanted:
        wall = {"mesa_ref": [], "mesa_fast": []}
        cpu = {"mesa_ref": [], "mesa_fast": []}
        first = {}
        done = 0
        while done < steps:                  # alternate the backends, a fresh process per block
            n = min(args.block, steps - done)
            for b in wall:
                code = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}]; "
                        f"import bench_train_step as m; "
                        f"m.worker({name!r}, {b!r}, {args.batch}, {args.warmup}, {n}, {args.numba_threads or 0})")
                r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
                if r.returncode != 0:
                    sys.exit(f"error: worker {name}/{b} failed:\n{r.stderr[-2000:]}")
                res = json.loads(r.stdout.strip().splitlines()[-1])
                wall[b] += res["wall"]
                cpu[b] += res["cpu"]
                first.setdefault(b, res["first"])
            done += n
        for b in wall:
            rows.append({"model": name, "backend": b, "steps": steps,
                         "wall_ms_median": 1e3 * float(np.median(wall[b])), "wall_ms_min": 1e3 * float(np.min(wall[b])),
                         "cpu_ms_median": 1e3 * float(np.median(cpu[b])), "cpu_ms_min": 1e3 * float(np.min(cpu[b])),
                         "first_step_s": first[b]})
    op_rows = [] if args.no_ops else time_ops(np, ref_ops, fast_ops, 5 if args.quick else 15)
    load_after = loadavg()

    peers = {}
    for mod in ("jax", "torch"):
        try:
            __import__(mod)
            peers[mod] = "installed, but no peer implementation of the model is timed here"
        except ImportError:
            peers[mod] = "not installed"

    by = {(r["model"], r["backend"]): r for r in rows}
    lines = [f"{'model':8s} {'backend':10s} {'wall ms (median)':>17s} {'cpu ms (median)':>16s} "
             f"{'wall ref/fast':>14s} {'cpu ref/fast':>13s} {'vs JAX 108 ms':>14s}"]
    for r in rows:
        ref = by[(r["model"], "mesa_ref")]
        wr = ref["wall_ms_median"] / r["wall_ms_median"]
        cr = ref["cpu_ms_median"] / r["cpu_ms_median"]
        vj = f"{JAX_REFERENCE_MS / r['wall_ms_median']:.2f}x" if r["model"] == "linear2" else "-"
        r["ratio_ref_over_this_wall"], r["ratio_ref_over_this_cpu"] = wr, cr
        lines.append(f"{r['model']:8s} {r['backend']:10s} {r['wall_ms_median']:17.1f} {r['cpu_ms_median']:16.1f} "
                     f"{wr:13.2f}x {cr:12.2f}x {vj:>14s}")
    table = "\n".join(lines)
    print(table)
    op_table = ""
    if op_rows:
        ol = [f"{'op (B256 T50 f32)':20s} {'ref fwd':>8s} {'fast fwd':>9s} {'ref bwd':>8s} {'fast bwd':>9s}   (process-CPU ms, medians)"]
        for r in op_rows:
            ol.append(f"{r['op']:20s} {r['ref_fwd_cpu_ms']:8.2f} {r['fast_fwd_cpu_ms']:9.2f} "
                      f"{r['ref_bwd_cpu_ms']:8.2f} {r['fast_bwd_cpu_ms']:9.2f}")
        op_table = "\n".join(ol)
        print(op_table)
    print(f"load average before {load_before}, after {load_after}; peers: {peers}")

    if args.quick:
        return 0
    cmd = "python benchmarks/bench_train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": cmd.strip(),
        "git_commit": git_commit(),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
                    "numba_threads": numba.get_num_threads(),
                    "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS")},
        "load_average_before": load_before, "load_average_after": load_after,
        "shape": {"batch": args.batch, "T": task.T, "dtype": "float32"},
        "step": "loss_and_grads + global-norm gradient clipping + AdamW update (batch drawn beforehand)",
        "jax_reference_ms": JAX_REFERENCE_MS,
        "peers": peers,
        "results": rows,
        "ops": op_rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_train_step_cpu" + (f"_{args.tag}" if args.tag else "")
    (out / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
    busy = load_before and max(load_before[0], (load_after or [0])[0]) > 0.5 * (os.cpu_count() or 1)
    md = ["# Training step, mesa_ref vs mesa_fast (CPU)", "",
          f"- date: {meta['date']}; commit {meta['git_commit']}",
          f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores; numpy {np.__version__}, "
          f"numba {numba.__version__} ({numba.get_num_threads()} threads), OPENBLAS_NUM_THREADS="
          f"{meta['machine']['blas_threads_env']}",
          f"- command: `{meta['command']}`",
          f"- step: {meta['step']}; batch {args.batch}, T {task.T}, float32; {steps} timed steps per row, "
          f"medians, backends alternating in blocks of {args.block} steps, each block in a fresh process",
          f"- load average (1, 5, 15 min) before: {load_before}, after: {load_after}"
          + (" -- **other processes shared the CPU while this ran**; wall-clock numbers are inflated and "
             "noisy, the CPU-time column is the steadier comparison" if busy else ""),
          f"- peers: JAX {peers['jax']}, PyTorch {peers['torch']}; the authors' jitted JAX step is "
          f"~{JAX_REFERENCE_MS:.0f} ms on a 2-core CPU (docs/design.md)", "",
          "```", table, "```", ""]
    if op_table:
        md += ["Per op at the default model's shapes (numba threads as above; the fast dense op sets OpenBLAS to "
               "one thread while it runs and splits its products over its own threads):", "", "```", op_table,
               "```", ""]
    md += NOTES
    (out / f"{stem}.md").write_text("\n".join(md))
    print(f"wrote {out / (stem + '.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
