"""Plain against SIMD Numba kernels: linear attention [L2], softmax attention [L3], the mesa layer [M2]-[M4].

The plain kernels (``mesa_fast/kernels/plain/``: a ``prange`` over the sequences, scalar loops) against
the SIMD ones (``mesa_fast/kernels/simd/``: sequences in the lanes of vector registers), timed two ways:

* op:    each kernel's op alone (forward, then backward on its cache) at the paper's shapes: batch 256, T 50,
         4 heads of key size 20 (width 40), float32, q, k, v read as the model reads them (views of one fused
         QKV buffer); the mesa layer without gamma, backward "store" (the model's default).
* step:  one training step (``bench_train_step.worker``: loss_and_grads + clipping + AdamW) of the model
         families that use the kernels: linear2, linear6 (linear attention), softmax6 (softmax attention),
         mesa1 (the mesa layer).

The variant is chosen by MESA_FAST_KERNELS=plain|simd in the environment of each worker process. Method as in
``bench_train_step.py``: the two variants alternate in blocks, each block in a fresh process (after warm-up), and
the tables give the medians over all blocks, wall-clock and process CPU time. Timing is never asserted anywhere.

Decision rule (issue 12): a SIMD kernel stays only where it is at least 1.3x faster than the plain one on the
training step or on the op at the paper's shape; the table's "plain / simd" column is that ratio.

Run it in short quiet windows (the results merge into one file): one part per invocation, e.g.

    python benchmarks/bench_plain_vs_simd.py --parts ops
    python benchmarks/bench_plain_vs_simd.py --parts linear2,linear6
    python benchmarks/bench_plain_vs_simd.py --parts softmax6
    python benchmarks/bench_plain_vs_simd.py --parts mesa1
    python benchmarks/bench_plain_vs_simd.py --parts ops --quick      # a few repetitions, nothing written

Each invocation replaces the rows of the parts it measured in benchmarks/results/bench_plain_vs_simd_cpu.json
(``--fresh`` starts the file anew) and records its own date, commit, command and load averages there; the .md is
rewritten from the merged JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import bench_train_step as bts  # noqa: E402
from families import FAMILIES  # noqa: E402
from timing import python_call, run_worker, timed_calls, write_result  # noqa: E402

VARIANTS = ("plain", "simd")
STEP_FAMILIES = ("linear2", "linear6", "softmax6", "mesa1")
KERNEL_OF = {"linear2": "linear", "linear6": "linear", "softmax6": "softmax", "mesa1": "mesa"}
OPS = ("linear forward", "linear backward", "softmax forward", "softmax backward", "mesa forward",
       "mesa backward")
PAPER = dict(B=256, T=50, H=4, d=20)
DECISION = 1.3
STEM = "bench_plain_vs_simd_cpu"


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="ops," + ",".join(STEP_FAMILIES),
                   help=f"comma list of ops and model families ({', '.join(STEP_FAMILIES)})")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per variant and family")
    p.add_argument("--reps", type=int, default=40, help="timed calls per variant and op")
    p.add_argument("--block", type=int, default=10, help="steps (or calls) per block, one fresh process each")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (calls) first in every block")
    p.add_argument("--numba-threads", type=int, default=None, help="numba.set_num_threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="4 steps / 6 calls per variant, nothing written")
    p.add_argument("--fresh", action="store_true", help="start the result file anew instead of merging")
    p.add_argument("--out", default=str(RESULTS), help=f"directory for {STEM}.{{json,md}}")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- workers
def op_worker(n, warmup, numba_threads):
    """Run in a subprocess: time n calls of every op (forward, and backward on one forward's cache) with the
    kernels MESA_FAST_KERNELS selects; print {op: {"wall": [...], "cpu": [...]}} as JSON."""
    import numba
    import numpy as np

    import mesa_fast
    import mesa_fast.ops as F

    mesa_fast.keep_freed_memory()
    if numba_threads:
        numba.set_num_threads(numba_threads)
    B, T, H, d = PAPER["B"], PAPER["T"], PAPER["H"], PAPER["d"]
    rng = np.random.default_rng(0)
    f32 = np.float32
    qkv = rng.standard_normal((B, T, 3 * H * d)).astype(f32)
    q, k, v = F.split_qkv(qkv, H)                        # views of one fused buffer, as in the model
    km = k / np.sqrt(d, dtype=f32)                       # mesa: k.k ~ 1, a well-conditioned ridge problem
    dout = F.split_heads(rng.standard_normal((B, T, H * d)).astype(f32), H)
    lam = np.ones(H, f32)
    forward = {
        "linear": lambda: F.linear_attention_forward(q, k, v),
        "softmax": lambda: F.softmax_attention_forward(q, k, v),
        "mesa": lambda: F.mesa_forward(q, km, v, lam),
    }
    backward = {
        "linear": F.linear_attention_backward,
        "softmax": F.softmax_attention_backward,
        "mesa": F.mesa_backward,
    }
    res = {}
    for kind in ("linear", "softmax", "mesa"):
        cache = forward[kind]()[1]
        for name, fn in ((f"{kind} forward", forward[kind]), (f"{kind} backward", lambda: backward[kind](dout, cache))):
            wall, cpu = timed_calls(fn, n, warmup)
            res[name] = {"wall": wall, "cpu": cpu}
    res["numba_threads"] = numba.get_num_threads()
    print(json.dumps(res))


def run_block(part, variant, n, args):
    """One block in a fresh process with MESA_FAST_KERNELS=variant: the worker's JSON dict."""
    if part == "ops":
        cmd = python_call("bench_plain_vs_simd", f"op_worker({n}, {args.warmup}, {args.numba_threads or 0})")
    else:
        cmd = python_call("bench_train_step", f"worker({part!r}, 'mesa_fast', 0, {args.warmup}, {n}, "
                                              f"{args.numba_threads or 0})")
    return run_worker(cmd, f"{part}/{variant}", dict(os.environ, MESA_FAST_KERNELS=variant))


def alternate(part, total, args):
    """{variant: {series: {"wall": [...], "cpu": [...]}}}: blocks of the two variants in turn until each has
    ``total`` timings, each block a fresh process. A step part has one series (the step), ops one per op."""
    got = {v: {} for v in VARIANTS}
    done = {v: 0 for v in VARIANTS}
    while any(done[v] < total for v in VARIANTS):
        for v in VARIANTS:
            n = min(args.block, total - done[v])
            if n <= 0:
                continue
            res = run_block(part, v, n, args)
            series = {name: res[name] for name in OPS} if part == "ops" else {"step": res}
            for name, s in series.items():
                acc = got[v].setdefault(name, {"wall": [], "cpu": []})
                acc["wall"] += s["wall"]
                acc["cpu"] += s["cpu"]
            done[v] += n
    return got


def summarise(part, got):
    """Rows: one per series, medians in ms of both variants and the plain / simd ratios."""
    import numpy as np

    rows = []
    for name in got["plain"]:
        row = {"part": part, "what": name if part == "ops" else f"{part} training step",
               "kernel": name.split()[0] if part == "ops" else KERNEL_OF[part]}
        for v in VARIANTS:
            s = got[v][name]
            row[f"{v}_n"] = len(s["wall"])
            row[f"{v}_wall_ms"] = 1e3 * float(np.median(s["wall"]))
            row[f"{v}_cpu_ms"] = 1e3 * float(np.median(s["cpu"]))
        row["plain_over_simd_wall"] = row["plain_wall_ms"] / row["simd_wall_ms"]
        row["plain_over_simd_cpu"] = row["plain_cpu_ms"] / row["simd_cpu_ms"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- output
def decisions(rows):
    """{kernel: {"keep_simd", "ratio", "where"}}: the issue's rule on the merged rows (the largest plain / simd
    wall-clock ratio of the kernel's op and training-step rows against DECISION)."""
    best = {}
    for r in rows:
        k = r["kernel"]
        if k not in best or r["plain_over_simd_wall"] > best[k]["ratio"]:
            best[k] = {"ratio": r["plain_over_simd_wall"], "where": r["what"]}
    for dec in best.values():
        dec["keep_simd"] = dec["ratio"] >= DECISION
    return best


def table(rows):
    lines = [f"{'what':32s} {'plain ms':>9s} {'simd ms':>9s} {'plain CPU':>10s} {'simd CPU':>9s} "
             f"{'plain/simd':>10s} {'CPU ratio':>9s}"]
    for r in rows:
        lines.append(f"{r['what']:32s} {r['plain_wall_ms']:9.2f} {r['simd_wall_ms']:9.2f} {r['plain_cpu_ms']:10.2f} "
                     f"{r['simd_cpu_ms']:9.2f} {r['plain_over_simd_wall']:9.2f}x {r['plain_over_simd_cpu']:8.2f}x")
    return "\n".join(lines)


def write(out, data):
    md = ["# Plain against SIMD Numba kernels (CPU)", "",
          f"- machine: {data['machine']['cpu']}, {data['machine']['cores']} cores; numpy {data['machine']['numpy']}, "
          f"numba {data['machine']['numba']}",
          "- method: the two variants (MESA_FAST_KERNELS=plain / simd) alternate in blocks, each block in a fresh "
          "process after warm-up; medians over all blocks; plain / simd > 1 means the SIMD kernel is faster",
          f"- op: {data['op_setup']}", f"- step: {data['step_setup']}", "", "Invocations merged here:", ""]
    def load(x):
        return ", ".join(f"{v:.2f}" for v in x) if x else "not recorded"

    for run in data["runs"]:
        md.append(f"- {run['date']}, commit {run['git_commit']}: `{run['command']}` ({', '.join(run['parts'])}); "
                  f"load average (1, 5, 15 min) before {load(run['load_average_before'])}, after "
                  f"{load(run['load_average_after'])}")
    md += ["", "```", table(data["results"]), "```", "", f"Decision (SIMD kept where plain / simd >= {DECISION} on the "
           "op or the training step, wall-clock):", ""]
    for k, dec in sorted(data["decisions"].items()):
        md.append(f"- {k}: {'SIMD kept' if dec['keep_simd'] else 'plain replaces SIMD'} (largest plain / simd "
                  f"{dec['ratio']:.2f}x, {dec['where']})")
    write_result(out, STEM, data, "\n".join(md) + "\n")


def main(argv=None):
    args = parse(argv)
    if args.numba_threads is not None:
        os.environ["NUMBA_NUM_THREADS"] = str(args.numba_threads)
    import numba
    import numpy as np

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for p in parts:
        if p != "ops" and p not in STEP_FAMILIES:
            sys.exit(f"error: --parts: unknown part {p!r}; expected ops or one of {STEP_FAMILIES}")
    load_before = bts.loadavg()
    t0 = time.time()
    rows = []
    for p in parts:
        total = (6 if args.quick else args.reps) if p == "ops" else (4 if args.quick else args.steps)
        part_rows = summarise(p, alternate(p, total, args))
        print(table(part_rows), flush=True)
        rows += part_rows
    load_after = bts.loadavg()
    print(f"load average before {load_before}, after {load_after}; {time.time() - t0:.0f} s")
    if args.quick:
        return 0

    out = Path(args.out)
    path = out / f"{STEM}.json"
    data = None if args.fresh or not path.exists() else json.loads(path.read_text())
    cmd = ("python benchmarks/bench_plain_vs_simd.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    run = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": cmd,
           "git_commit": bts.git_commit(), "parts": parts, "load_average_before": load_before,
           "load_average_after": load_after, "elapsed_s": time.time() - t0}
    if data is None:
        data = {"benchmark": "plain_vs_simd", "runs": [], "results": []}
    data["runs"] = [r for r in data["runs"] if set(r["parts"]) - set(parts)] + [run]
    data["results"] = [r for r in data["results"] if r["part"] not in parts] + rows
    order = {p: i for i, p in enumerate(("ops",) + STEP_FAMILIES)}
    data["results"].sort(key=lambda r: (order[r["part"]], OPS.index(r["what"]) if r["part"] == "ops" else 0))
    data["date"] = max(r["date"] for r in data["runs"])
    data["command"] = " ; ".join(r["command"] for r in data["runs"])
    data["machine"] = {"cpu": bts.cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
                       "numba_threads": args.numba_threads or numba.get_num_threads()}
    data["op_setup"] = (f"batch {PAPER['B']}, T {PAPER['T']}, {PAPER['H']} heads of key size {PAPER['d']}, float32; "
                        "q, k, v views of one fused QKV buffer; mesa without gamma, backward 'store'")
    data["step_setup"] = "bench_train_step.worker: loss_and_grads + gradient clipping + AdamW, float32, each " \
                         "family's own batch: " + "; ".join(f"{f}: {FAMILIES[f].describe}" for f in STEP_FAMILIES)
    data["decision_ratio"] = DECISION
    data["decisions"] = decisions(data["results"])
    write(out, data)
    print(f"wrote {path} and .md")
    return 0


if __name__ == "__main__":
    from timing import training_paused
    with training_paused():
        sys.exit(main())
