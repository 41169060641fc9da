"""Median time of one training step per model family: mesa_ref, mesa_fast and the authors' JAX step, on the CPU.

A step is what ``mesa_ref.train.train`` does per batch: ``loss_and_grads`` + gradient clipping
+ the AdamW update (the batch is drawn beforehand and not timed). The model families are those of
``benchmarks/families.py`` (the authors' default 2-layer linear model, 6 linear layers, one mesa layer,
the 6-layer softmax Transformer with MLP, LayerNorm, embedding and positional encoding, fig5's 2-layer
softmax Transformer and fig8's language model), float32, each at its own batch and T.

The backends are timed in alternating blocks of steps, each block in a fresh process (after
warm-up), so that a change in the machine's load hits all alike and OpenBLAS threads left
spinning by one backend are not billed to the other. Wall-clock and process-CPU medians are both reported: on a machine shared with
other processes the CPU time is the steadier number. Timing is never asserted anywhere.

The authors' jitted JAX/Flax step (``jax_peer_step.py``: their ``Training.fast_train_step`` through their
``FullTransformerModel`` built at each family's sizes) is one more backend of the alternation when
``--jax-python`` (or MESA_JAX_PYTHON) names a Python that has jax, flax, optax and ml_collections (a virtual
environment of its own: none of them is a dependency of this toolkit) and their repository is checked out at
``--authors`` (default ``.peers/authors``, ignored by git); otherwise the table says "not installed". Its
compiled steps are kept in ``--jax-cache`` (JAX's persistent compilation cache), so a block after the first does
not compile again. Setting the peer up:

    git clone https://github.com/mtavit/transformers_mesa_optimization_paper .peers/authors
    python3 -m venv JAXENV && JAXENV/bin/pip install jax jaxlib flax optax ml_collections

    python benchmarks/bench_train_step.py                              # every family, writes benchmarks/results/
    python benchmarks/bench_train_step.py --quick --models softmax6    # a few steps, nothing written
    python benchmarks/bench_train_step.py --models softmax6 --backends mesa_fast,jax --jax-python JAXENV/bin/python
    python benchmarks/bench_train_step.py --blas-threads 1 --numba-threads 1
    python benchmarks/bench_train_step.py --backends mesa_fast,baseline --baseline /tmp/old   # a code change

``--baseline PATH`` names another checkout of this project (say, the commit before a change): its mesa_fast is
one more backend of the alternation, "baseline", timed in the same blocks, so a change's effect on the step is
measured side by side rather than against a number from another day.
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
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from families import FAMILIES  # noqa: E402
from timing import python_call, run_worker, timed_calls, write_result  # noqa: E402

BACKENDS = ("mesa_ref", "mesa_fast", "jax", "baseline")
DEFAULT_MODELS = "linear2,linear6,mesa1,softmax6,softmax2_fig5,lm_fig8"


NOTES = [
    "Notes:", "",
    "- mesa_ref runs NumPy as it comes: OpenBLAS with one thread per core. When other processes load the "
    "cores, OpenBLAS's threads busy-wait at every internal synchronisation and a dense backward "
    "(x.T @ dy, 12800 x 40 x 80) takes ~0.3-1 s instead of ~2 ms; that is most of mesa_ref's step time in a "
    "run with default threads on a busy machine. mesa_fast's dense op runs the same BLAS products split by "
    "rows over its own threads, with OpenBLAS set to one thread while the op runs (mesa_fast/runtime/blas.py). "
    "Compare the run with "
    "`--blas-threads 1 --numba-threads 1` (file suffix _1thread) for both backends on one thread each.",
    "- Both backends run with mesa_fast's heap setting (every worker calls mesa_fast.keep_freed_memory(); "
    "mesa_fast/runtime/heap.py): freed memory stays in the process heap, so the step's large temporaries "
    "do not page-fault every step; run with MESA_FAST_KEEP_HEAP=0 for glibc's defaults.",
    "- mesa_fast's loss_and_grads runs one shard of the batch per Numba thread, each shard's whole forward and "
    "backward on its thread (batch_map, mesa_fast/ops/batching.py); mesa_ref runs the whole batch at once.",
    "- loss_and_grads skips the gradient w.r.t. the model input (Model.backward(input_grad=False)): one product "
    "fewer in block 0's QKV backward for constructed tokens, for both backends.",
    "- jax: the authors' own jitted training step (benchmarks/jax_peer_step.py has what is built and how it "
    "differs: no biases and no final LayerNorm in their model, element-wise gradient clipping, and for the "
    "language model a one-hot dense embedding and a cross-entropy loss in place of their MSE). XLA runs with its "
    "default threads on all cores.",
    "",
]


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per backend and model (default 30)")
    p.add_argument("--ref-steps", type=int, default=None, help="timed steps of mesa_ref (default: --steps)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (after compilation)")
    p.add_argument("--block", type=int, default=10, help="steps per alternating block (one process each)")
    p.add_argument("--batch", type=int, default=None, help="default: each family's own batch")
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma list of {', '.join(FAMILIES)}")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma list of mesa_ref, mesa_fast, jax")
    p.add_argument("--jax-python", default=os.environ.get("MESA_JAX_PYTHON"), metavar="PATH",
                   help="a Python with jax, flax, optax, ml_collections: times the authors' step (jax_peer_step.py); "
                        "default: $MESA_JAX_PYTHON")
    p.add_argument("--authors", default=str(ROOT / ".peers" / "authors"),
                   help="checkout of the authors' repository (mtavit/transformers_mesa_optimization_paper)")
    p.add_argument("--jax-cache", default=str(ROOT / ".peers" / "jax-cache"),
                   help="JAX's persistent compilation cache directory")
    p.add_argument("--baseline", default=None, metavar="PATH",
                   help="another checkout of this project: its mesa_fast runs as the backend 'baseline'")
    p.add_argument("--numba-threads", type=int, default=None, help="numba.set_num_threads (default: all cores)")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="set OPENBLAS/OMP/MKL_NUM_THREADS before NumPy is imported (default: untouched)")
    p.add_argument("--quick", action="store_true", help="4 steps, nothing written")
    p.add_argument("--out", default=str(RESULTS), help="directory for bench_train_step_cpu.{json,md}")
    p.add_argument("--tag", default="", help="suffix for the output file names")
    p.add_argument("--ops", action="store_true", help="also time each op at the default model's shapes")
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


def thp_mode():
    """The kernel's transparent-huge-page mode (the bracketed word of /sys/.../enabled), or None where unreadable.
    Recorded because the authors' JAX step is sensitive to huge pages (with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
    under "madvise" it got faster here and mesa_fast did not: ``bench_huge_pages.py``, docs/performance.md)."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.find("[") + 1:text.find("]")] if "[" in text else text.strip()


def git_commit():
    """The checkout's commit ("+dirty" with local changes; "unknown" outside git), recorded with the results."""
    from mesa_lab.provenance import code_version
    return code_version()


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
    """Run in a subprocess: time ``steps`` training steps of one backend on one family; print JSON.

    One process per backend and round: OpenBLAS's threads keep busy-waiting for a while after a
    multi-threaded product, and in a shared process that CPU time would be billed to whichever
    backend runs next."""
    import numpy as np
    import numba

    import mesa_fast
    import mesa_fast.ops as fast_ops
    import mesa_ref.ops as ref_ops
    from families import build
    from mesa_ref.model import Transformer
    from mesa_ref.train import AdamW, TrainConfig, clip_gradients

    mesa_fast.keep_freed_memory()            # both backends, as the training entry point does for fast (NOTES)
    if numba_threads:
        numba.set_num_threads(numba_threads)
    cfg, task, fam_batch = build(model_name)
    batch = batch or fam_batch
    tcfg = TrainConfig(batch=batch)
    x, y = task.batch(np.random.default_rng(0), batch, np.float32)
    model = Transformer(cfg, ops=ref_ops if backend == "mesa_ref" else fast_ops)   # baseline: its own fast_ops
    params = model.init(0, dtype=np.float32)
    opt = AdamW(params, tcfg)

    def step():
        loss, grads = model.loss_and_grads(params, x, y)
        grads, _ = clip_gradients(grads, tcfg)
        opt.update(params, grads, 1e-4)

    t0 = time.perf_counter()
    step()                                   # compiles the Numba kernels (or loads them from the cache)
    first = time.perf_counter() - t0
    wall, cpu = timed_calls(step, steps, warmup)
    print(json.dumps({"wall": wall, "cpu": cpu, "first": first, "numba_threads": numba.get_num_threads(),
                      "package": str(Path(mesa_fast.__file__).resolve().parents[1])}))


def family_shape(name, batch):
    """(ModelConfig dict, batch, T) of a family, for the JAX peer."""
    import numpy as np

    from families import build
    cfg, task, fam_batch = build(name)
    batch = batch or fam_batch
    x, _ = task.batch(np.random.default_rng(0), 1, np.float32)
    return cfg.to_dict(), batch, int(x.shape[1])


def run_block(name, backend, args, n):
    """One block of n timed steps of one backend in a fresh process: the worker's JSON dict."""
    if backend == "jax":
        cfg, batch, T = family_shape(name, args.batch)
        env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=args.jax_cache)
        cmd = [args.jax_python, str(ROOT / "benchmarks" / "jax_peer_step.py"), "--authors", args.authors,
               "--config", json.dumps(cfg), "--batch", str(batch), "--T", str(T), "--steps", str(n),
               "--warmup", str(args.warmup), "--cache", args.jax_cache]
        return run_worker(cmd, f"{name}/{backend}", env)
    root = Path(args.baseline if backend == "baseline" else ROOT).resolve()
    cmd = python_call("bench_train_step", f"worker({name!r}, {backend!r}, {args.batch or 0}, {args.warmup}, {n}, "
                                          f"{args.numba_threads or 0})", root=root)
    out = run_worker(cmd, f"{name}/{backend}")
    if Path(out["package"]).resolve() != root:
        sys.exit(f"error: worker {name}/{backend} imported the packages of {out['package']}, not of {root}")
    return out


def jax_status(args):
    """'' when the JAX peer can run, else why not (printed in the table)."""
    if not args.jax_python:
        return "not installed (no --jax-python given and MESA_JAX_PYTHON unset)"
    if not Path(args.jax_python).exists():
        return f"not installed ({args.jax_python} does not exist)"
    if not (Path(args.authors) / "src" / "models" / "full_fledged_transformer.py").exists():
        return f"not installed (no checkout of the authors' repository at {args.authors})"
    r = subprocess.run([args.jax_python, "-c", "import jax, flax, optax, ml_collections; print(jax.__version__)"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"not installed ({args.jax_python} lacks jax, flax, optax or ml_collections)"
    return ""


def main(argv=None):
    args = parse(argv)
    if args.blas_threads is not None:          # must happen before NumPy loads its BLAS (here and in workers)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.blas_threads)
    if args.numba_threads is not None:
        os.environ["NUMBA_NUM_THREADS"] = str(args.numba_threads)
    import numpy as np
    import numba

    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in wanted:
        if m not in FAMILIES:
            sys.exit(f"error: --models: unknown model {m!r}; expected a comma list of {list(FAMILIES)}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in BACKENDS:
            sys.exit(f"error: --backends: unknown backend {b!r}; expected a comma list of {list(BACKENDS)}")
    if "baseline" in backends and not (args.baseline and (Path(args.baseline) / "mesa_fast").is_dir()):
        sys.exit("error: --backends baseline needs --baseline PATH, a checkout of this project")
    jax_why = jax_status(args) if "jax" in backends else "not requested"
    if jax_why and "jax" in backends:
        backends.remove("jax")
    steps = 4 if args.quick else args.steps
    want_steps = {b: (args.ref_steps if (b == "mesa_ref" and args.ref_steps and not args.quick) else steps)
                  for b in backends}

    load_before = loadavg()
    t_start = time.time()
    rows = []
    for name in wanted:
        wall = {b: [] for b in backends}
        cpu = {b: [] for b in backends}
        first = {}
        while any(len(wall[b]) < want_steps[b] for b in backends):   # alternate, a fresh process per block
            for b in backends:
                n = min(args.block, want_steps[b] - len(wall[b]))
                if n <= 0:
                    continue
                res = run_block(name, b, args, n)
                wall[b] += res["wall"]
                cpu[b] += res["cpu"]
                first.setdefault(b, res["first"])
                first.setdefault(f"{b}_package", res.get("package"))
                if b == "jax":
                    first["jax_version"] = res.get("jax")
        for b in backends:
            rows.append({"model": name, "backend": b, "steps": len(wall[b]),
                         "wall_ms_median": 1e3 * float(np.median(wall[b])), "wall_ms_min": 1e3 * float(np.min(wall[b])),
                         "cpu_ms_median": 1e3 * float(np.median(cpu[b])), "cpu_ms_min": 1e3 * float(np.min(cpu[b])),
                         "first_step_s": first[b], "package": first.get(f"{b}_package")})
        print(f"{name}: " + ", ".join(f"{b} {1e3 * float(np.median(wall[b])):.1f} ms" for b in backends), flush=True)
    op_rows = time_ops(np, *_namespaces(), 5 if args.quick else 15) if args.ops else []
    load_after = loadavg()
    elapsed = time.time() - t_start

    by = {(r["model"], r["backend"]): r for r in rows}
    for r in rows:
        for other, key in (("mesa_ref", "ref"), ("jax", "jax"), ("baseline", "baseline")):
            o = by.get((r["model"], other))
            if o is not None:
                r[f"ratio_{key}_over_this_wall"] = o["wall_ms_median"] / r["wall_ms_median"]
                r[f"ratio_{key}_over_this_cpu"] = o["cpu_ms_median"] / r["cpu_ms_median"]
    base = "baseline" in backends
    lines = [f"{'model':14s} {'backend':10s} {'steps':>5s} {'wall ms':>9s} {'CPU ms':>9s} {'ref/this':>9s} "
             f"{'JAX/this':>9s} {'JAX/this CPU':>12s}" + (f" {'base/this':>9s} {'base/this CPU':>13s}" if base else "")]
    for r in rows:
        def ratio(k):
            v = r.get(k)
            return f"{v:.2f}x" if v is not None else "-"
        lines.append(f"{r['model']:14s} {r['backend']:10s} {r['steps']:5d} {r['wall_ms_median']:9.1f} "
                     f"{r['cpu_ms_median']:9.1f} {ratio('ratio_ref_over_this_wall'):>9s} "
                     f"{ratio('ratio_jax_over_this_wall'):>9s} {ratio('ratio_jax_over_this_cpu'):>12s}"
                     + (f" {ratio('ratio_baseline_over_this_wall'):>9s} {ratio('ratio_baseline_over_this_cpu'):>13s}"
                        if base else ""))
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
    jax_line = (f"the authors' JAX step: {jax_why}" if jax_why else
                f"the authors' JAX step: jax {first.get('jax_version')} via {args.jax_python}, their code at "
                f"{_authors_commit(args.authors)}")
    print(f"load average before {load_before}, after {load_after}; {elapsed:.0f} s; {jax_line}")

    if args.quick:
        return 0
    cmd = "python benchmarks/bench_train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": cmd.strip(),
        "git_commit": git_commit(),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
                    "numba_threads": args.numba_threads or numba.get_num_threads(),
                    "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"),
                    "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "transparent_hugepage": thp_mode()},
        "load_average_before": load_before, "load_average_after": load_after, "elapsed_s": elapsed,
        "families": {m: FAMILIES[m].describe for m in wanted},
        "shape": {"batch": args.batch or "each family's own", "dtype": "float32"},
        "step": "loss_and_grads + gradient clipping + AdamW update (batch drawn beforehand)",
        "jax": jax_line,
        "baseline": ({"path": args.baseline, "commit": _checkout_commit(args.baseline)} if base else None),
        "results": rows,
        "ops": op_rows,
    }
    out = Path(args.out)
    stem = "bench_train_step_cpu" + (f"_{args.tag}" if args.tag else "")
    busy = load_before and max(load_before[0], (load_after or [0])[0]) > 0.5 * (os.cpu_count() or 1)
    md = ["# Training step per model family: mesa_ref, mesa_fast and the authors' JAX step (CPU)", "",
          f"- date: {meta['date']}; commit {meta['git_commit']}",
          f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores; numpy {np.__version__}, "
          f"numba {numba.__version__} ({meta['machine']['numba_threads']} threads), OPENBLAS_NUM_THREADS="
          f"{meta['machine']['blas_threads_env']}, GLIBC_TUNABLES={meta['machine']['glibc_tunables']} (inherited by "
          f"every worker), transparent huge pages: {meta['machine']['transparent_hugepage']}",
          f"- command: `{meta['command']}`",
          f"- step: {meta['step']}; float32; medians of the timed steps, backends alternating in blocks of "
          f"{args.block} steps, each block in a fresh process",
          f"- load average (1, 5, 15 min) before: {load_before}, after: {load_after}"
          + (" -- **other processes shared the CPU while this ran**; wall-clock numbers are inflated and "
             "noisy, the CPU-time column is the steadier comparison" if busy else ""),
          f"- {jax_line}"] + ([f"- baseline: mesa_fast of the checkout at commit "
                               f"{meta['baseline']['commit']} ({args.baseline})"] if base else []) + ["", "Families:", ""]
    md += [f"- {m}: {FAMILIES[m].describe}" for m in wanted]
    md += ["", "```", table, "```", ""]
    if op_table:
        md += ["Per op at the default model's shapes (numba threads as above; the fast dense op sets OpenBLAS to "
               "one thread while it runs and splits its products over its own threads):", "", "```", op_table,
               "```", ""]
    md += NOTES
    write_result(out, stem, meta, "\n".join(md))
    print(f"wrote {out / (stem + '.json')} and .md")
    return 0


def _namespaces():
    import mesa_fast.ops as fast_ops
    import mesa_ref.ops as ref_ops
    return ref_ops, fast_ops


def _checkout_commit(path):
    r = subprocess.run(["git", "-C", str(path), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                       timeout=10)
    return r.stdout.strip() or "unknown"


def _authors_commit(path):
    try:
        return "commit " + subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True,
                                          text=True, timeout=5).stdout.strip()
    except Exception:  # pragma: no cover
        return "an unknown commit"


if __name__ == "__main__":
    from timing import training_paused
    with training_paused():
        sys.exit(main())
