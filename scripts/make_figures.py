#!/usr/bin/env python
"""Run every scripts/fig*.py that exists (in name order), passing --quick, --out, --backend and --seed through.

    python scripts/make_figures.py [--quick] [--out DIR] [--backend ref|fast] [--seed N] [--only fig2,fig7]

Each figure script decides for itself whether it can run (e.g. fig9_speed needs its benchmark JSON and
reports so).  Prints one line per script with its exit status and wall time, then a summary; exits
non-zero when any script failed, naming them.  ``make reproduce`` calls it with --quick --out figures.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def figure_scripts(only=None):
    scripts = sorted((ROOT / "scripts").glob("fig*.py"), key=lambda p: _order(p.stem))
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        scripts = [p for p in scripts if any(p.stem == w or p.stem.startswith(w + "_") for w in wanted)]
    return scripts


def _order(stem):
    digits = "".join(ch for ch in stem[3:] if ch.isdigit())
    return (int(digits) if digits else 10 ** 6, stem)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/make_figures.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized runs (minutes each)")
    p.add_argument("--out", default="figures", help="output directory (default figures/)")
    p.add_argument("--backend", choices=("ref", "fast"), default=None, help="passed to every script")
    p.add_argument("--seed", type=int, default=None, help="passed to every script")
    p.add_argument("--only", default=None, help="comma-separated script names or prefixes (e.g. fig2,fig7)")
    args = p.parse_args(argv)
    scripts = figure_scripts(args.only)
    if not scripts:
        print("error: no figure scripts found" + (f" matching --only {args.only}" if args.only else ""),
              file=sys.stderr)
        return 2
    flags = ["--out", args.out]
    if not sys.stderr.isatty():      # progress bars only clutter a log (every harness script takes --no-progress)
        flags.append("--no-progress")
    if args.quick:
        flags.append("--quick")
    if args.backend:
        flags += ["--backend", args.backend]
    if args.seed is not None:
        flags += ["--seed", str(args.seed)]
    failed, t_all = [], time.perf_counter()
    for script in scripts:
        t0 = time.perf_counter()
        print(f"== {script.stem} {' '.join(flags)}", flush=True)
        rc = subprocess.call([sys.executable, str(script), *flags], cwd=ROOT)
        dt = time.perf_counter() - t0
        print(f"-- {script.stem}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {dt:.0f} s", flush=True)
        if rc != 0:
            failed.append(script.stem)
    total = time.perf_counter() - t_all
    if failed:
        print(f"{len(failed)} of {len(scripts)} figure scripts failed: {', '.join(failed)} ({total:.0f} s)",
              file=sys.stderr)
        return 1
    print(f"all {len(scripts)} figure scripts ran ({total:.0f} s); outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
