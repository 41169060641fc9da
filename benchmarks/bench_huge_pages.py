"""Transparent huge pages and the training step: each backend with and without glibc's huge-page tunable.

``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` makes malloc ask the kernel for 2 MB pages for the heap (where the kernel's
transparent huge pages are in "madvise" mode; glibc >= 2.35). glibc reads it when a process starts, so each
block of steps runs in a fresh process (``bench_train_step.run_block``) started with or without it, the two
settings alternating block by block, so that the machine's drift hits both alike. With ``--backends
mesa_fast,jax`` the authors' JAX step is timed the same way: the setting changes both, and the ratio between them
is what ``bench_train_step.py`` reports.

Why it exists: two training-step runs made one after the other, with and without the tunable, suggested a 10-20%
gain for mesa_fast, and the embedded Dask cluster briefly started its workers with it. Measured here, alternating,
mesa_fast gained nothing and the authors' JAX step gained 1.2-1.4x (benchmarks/results/bench_huge_pages_cpu*), so
the setting was dropped and the comparison with JAX keeps the machine's defaults for both (``bench_train_step.py``
records the tunable and the kernel's huge-page mode with every run). Timing is never asserted anywhere.

    python benchmarks/bench_huge_pages.py                                   # softmax6, linear6, linear2; mesa_fast
    python benchmarks/bench_huge_pages.py --models softmax6 --backends mesa_fast,jax --jax-python JAXENV/bin/python
    python benchmarks/bench_huge_pages.py --quick --models linear2          # a few steps, nothing written
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import bench_train_step as bts  # noqa: E402
from families import FAMILIES  # noqa: E402
from timing import write_result  # noqa: E402

TUNABLE = "glibc.malloc.hugetlb=1"
SETTINGS = (("4 KB", None), ("huge", TUNABLE))


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="softmax6,linear6,linear2", help=f"comma list of {', '.join(FAMILIES)}")
    p.add_argument("--backends", default="mesa_fast", help="comma list of mesa_ref, mesa_fast, jax")
    p.add_argument("--steps", type=int, default=20, help="timed steps per backend, model and setting")
    p.add_argument("--block", type=int, default=10, help="steps per block (one fresh process each)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per block")
    p.add_argument("--jax-python", default=os.environ.get("MESA_JAX_PYTHON"), metavar="PATH")
    p.add_argument("--quick", action="store_true", help="4 steps per setting, nothing written")
    p.add_argument("--out", default=str(bts.RESULTS))
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    if args.steps < 1 or args.block < 1 or args.warmup < 0:
        p.error("--steps and --block must be >= 1, --warmup >= 0")
    return args


def main(argv=None):
    args = parse(argv)
    import numpy as np

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for m in models:
        if m not in FAMILIES:
            sys.exit(f"error: --models: unknown model {m!r}; expected a comma list of {list(FAMILIES)}")
    for b in backends:
        if b not in bts.BACKENDS:
            sys.exit(f"error: --backends: unknown backend {b!r}; expected a comma list of {list(bts.BACKENDS)}")
    steps = 4 if args.quick else args.steps
    inner = ["--warmup", str(args.warmup)] + (["--jax-python", args.jax_python] if args.jax_python else [])
    targs = bts.parse(inner)
    jax_why = bts.jax_status(targs) if "jax" in backends else "not requested"
    if jax_why and "jax" in backends:
        backends.remove("jax")
    saved = os.environ.get("GLIBC_TUNABLES")
    load_before, t0 = bts.loadavg(), time.time()
    rows = []
    try:
        for name in models:
            wall = {(b, s): [] for b in backends for s, _ in SETTINGS}
            cpu = {k: [] for k in wall}
            while any(len(v) < steps for v in wall.values()):
                for b in backends:
                    for s, tun in SETTINGS:
                        n = min(args.block, steps - len(wall[b, s]))
                        if n <= 0:
                            continue
                        os.environ.pop("GLIBC_TUNABLES", None)
                        if tun:
                            os.environ["GLIBC_TUNABLES"] = tun
                        res = bts.run_block(name, b, targs, n)
                        wall[b, s] += res["wall"]
                        cpu[b, s] += res["cpu"]
            for b in backends:
                med = {s: (1e3 * float(np.median(wall[b, s])), 1e3 * float(np.median(cpu[b, s]))) for s, _ in SETTINGS}
                rows.append({"model": name, "backend": b, "steps": steps,
                             "wall_ms_4k": med["4 KB"][0], "wall_ms_huge": med["huge"][0],
                             "cpu_ms_4k": med["4 KB"][1], "cpu_ms_huge": med["huge"][1],
                             "speedup_wall": med["4 KB"][0] / med["huge"][0],
                             "speedup_cpu": med["4 KB"][1] / med["huge"][1]})
    finally:
        os.environ.pop("GLIBC_TUNABLES", None)
        if saved is not None:
            os.environ["GLIBC_TUNABLES"] = saved
    load_after, elapsed = bts.loadavg(), time.time() - t0
    lines = [f"{'model':14s} {'backend':10s} {'steps':>5s} {'wall 4KB':>9s} {'wall huge':>10s} {'speedup':>8s} "
             f"{'CPU 4KB':>8s} {'CPU huge':>9s} {'speedup':>8s}"]
    for r in rows:
        lines.append(f"{r['model']:14s} {r['backend']:10s} {r['steps']:5d} {r['wall_ms_4k']:9.1f} {r['wall_ms_huge']:10.1f} "
                     f"{r['speedup_wall']:7.2f}x {r['cpu_ms_4k']:8.1f} {r['cpu_ms_huge']:9.1f} {r['speedup_cpu']:7.2f}x")
    table = "\n".join(lines)
    print(table)
    print(f"load average before {load_before}, after {load_after}; {elapsed:.0f} s; transparent huge pages: "
          f"{bts.thp_mode()}; the authors' JAX step: {jax_why or 'timed'}")
    if args.quick:
        return 0
    cmd = "python benchmarks/bench_huge_pages.py " + " ".join(argv if argv is not None else sys.argv[1:])
    data = {"benchmark": "huge_pages", "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": cmd.strip(),
            "git_commit": bts.git_commit(), "machine": {"cpu": bts.cpu_name(), "cores": os.cpu_count(),
                                                        "transparent_hugepage": bts.thp_mode()},
            "tunable": TUNABLE, "load_average_before": load_before, "load_average_after": load_after,
            "elapsed_s": elapsed, "jax": jax_why or "timed", "results": rows}
    md = ["# Training step with and without huge pages (CPU)", "",
          f"- date: {data['date']}; commit {data['git_commit']}",
          f"- machine: {data['machine']['cpu']}, {data['machine']['cores']} cores; transparent huge pages: "
          f"{data['machine']['transparent_hugepage']}",
          f"- command: `{data['command']}`",
          f"- settings: `GLIBC_TUNABLES={TUNABLE}` (huge) against unset (4 KB), alternating in blocks of {args.block} "
          f"steps, each block a fresh process ({args.warmup} untimed steps first); medians of the timed steps",
          f"- load average (1, 5, 15 min) before: {load_before}, after: {load_after}",
          f"- the authors' JAX step: {jax_why or 'timed, same settings'}", "", "```", table, "```", ""]
    write_result(Path(args.out), "bench_huge_pages_cpu" + (f"_{args.tag}" if args.tag else ""), data, "\n".join(md))
    print(f"wrote {Path(args.out) / ('bench_huge_pages_cpu' + (f'_{args.tag}' if args.tag else ''))}.json and .md")
    return 0


if __name__ == "__main__":
    from timing import training_paused
    with training_paused():
        sys.exit(main())
