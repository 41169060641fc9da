"""Regenerate every figure: first all figures' training jobs on one Dask cluster, then each figure script.

    python scripts/make_figures.py --quick              quick versions (CPU, minutes) into figures/
    python scripts/make_figures.py --full               full-size figures redrawn from the shipped results
                                                        in figures/full/jobs (no training)
    python scripts/make_figures.py --full --train       ... training whatever results are missing
    python scripts/make_figures.py --full --retrain     ... training every job again

fig9_speed runs only when --only names it (or with --quick --replot): it is a benchmark of this machine, not a redraw.
Other flags: --out DIR, --store DIR (the job store: default figures/full/jobs, the shipped results, for --full,
whatever --out is; OUT/.cache/jobs otherwise), --replot (redraw every PNG from its JSON, nothing recomputed),
--backend ref|fast, --seed N, --only fig2,fig7, --scheduler ADDRESS (an existing Dask scheduler;
DASK_SCHEDULER_ADDRESS works too), --workers N (local cluster size; 0: no Dask).
A figure's JSON and PNG are rewritten only where their numbers changed (see mesa_lab/experiments/common.py:
write_figure); each script prints what it rewrote and what it kept.
Jobs phase: the jobs of every selected figure are collected, each key once (figures share jobs), and the
missing ones run together, so the cluster stays busy across figures.  Then each figure script runs its analysis
from the stored results (``--no-train``).  Prints one line per script with its exit status and wall time and a
summary; exits non-zero when anything failed, naming it.  ``make reproduce`` calls it with --quick.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]        # the checkout: figures/, docs/, scripts/


def figure_scripts(only=None):
    scripts = sorted((ROOT / "scripts").glob("fig*.py"), key=lambda p: _order(p.stem))
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        scripts = [p for p in scripts if any(p.stem == w or p.stem.startswith(w + "_") for w in wanted)]
    return scripts


def _order(stem):
    digits = "".join(ch for ch in stem[3:] if ch.isdigit())
    return (int(digits) if digits else 10 ** 6, stem)


def gather_jobs(scripts, args, mode: str) -> list:
    """Every selected figure's jobs (labelled "<figure>/<name>"), for the figures defined as Experiments."""
    from mesa_lab.experiments import FIGURES, experiment
    from mesa_lab.experiments.common import experiment_parser, figure_jobs, training_seeds
    from mesa_lab.experiments.seeds import seed_variant
    from mesa_lab.ref_or_fast import fast_available
    backend = args.backend or ("fast" if fast_available() else "ref")
    jobs = []
    for script in scripts:
        if script.stem not in FIGURES:
            continue
        exp = experiment(script.stem)
        if exp is None:
            continue
        fargs = experiment_parser(exp).parse_args(_mode_flags(mode) + ["--seed", str(args.seed or 0)])
        jobs += list(figure_jobs(exp, fargs, backend).values())
        cfg = exp.config(mode, fargs)
        for s in training_seeds(exp, fargs, mode, cfg):      # the seeded figures' other training seeds (full size)
            if s != fargs.seed:
                jobs += list(seed_variant(exp.name, exp.jobs(cfg, s, backend), s).values())
    return jobs


def _mode_flags(mode):
    return {"quick": ["--quick"], "full": [], "smoke": ["--smoke"]}[mode]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/make_figures.py", description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CPU-sized runs (minutes each)")
    size.add_argument("--full", action="store_true", help="the paper's sizes, from the stored results")
    size.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--train", action="store_true", help="with --full: train the jobs whose results are missing")
    p.add_argument("--retrain", action="store_true", help="train every selected figure's jobs again")
    p.add_argument("--out", default=None, help="output directory (default figures/, or figures/full/ with --full)")
    p.add_argument("--store", default=None, help="job store (default figures/full/jobs, the shipped results, with "
                                                 "--full; OUT/.cache/jobs otherwise)")
    p.add_argument("--replot", action="store_true", help="redraw every PNG from its JSON; nothing is recomputed")
    p.add_argument("--backend", choices=("ref", "fast"), default=None, help="passed to every script")
    p.add_argument("--seed", type=int, default=None, help="passed to every script")
    p.add_argument("--only", default=None, help="comma-separated script names or prefixes (e.g. fig2,fig7)")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    p.add_argument("--workers", type=int, default=None, help="local cluster size (default: one per core); 0: no Dask")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    if not (args.quick or args.full or args.smoke):
        print("error: choose --quick (CPU minutes) or --full (the paper's sizes)", file=sys.stderr)
        return 2
    scripts = figure_scripts(args.only)
    if not args.only and (mode == "full" or not args.replot):
        # fig9 measures speed on this machine: a benchmark run, not a reproduction, and its numbers (timings) differ
        # on every run, so a redraw would always rewrite it. It runs when --only names it (or on its own).
        scripts = [s for s in scripts if s.stem != "fig9_speed"]
    if not scripts:
        print("error: no figure scripts found" + (f" matching --only {args.only}" if args.only else ""),
              file=sys.stderr)
        return 2
    if args.replot and (args.train or args.retrain):
        print("error: --replot redraws from the saved JSON: it does not go with --train or --retrain", file=sys.stderr)
        return 2
    from mesa_lab.experiments.common import default_out, default_store
    out = Path(args.out) if args.out else default_out(mode)
    store = Path(args.store) if args.store else (default_store(ROOT / default_out("full"), "full") if mode == "full"
                                                 else default_store(out, mode))
    train = (args.train or args.retrain or mode != "full") and not args.replot
    flags = ["--out", str(out), *_mode_flags(mode)] + (["--replot"] if args.replot else ["--store", str(store)])
    if not sys.stderr.isatty():      # progress bars only clutter a log (every harness script takes --no-progress)
        flags.append("--no-progress")
    if args.backend:
        flags += ["--backend", args.backend]
    if args.seed is not None:
        flags += ["--seed", str(args.seed)]
    if args.scheduler:
        flags += ["--scheduler", args.scheduler]
    t_all = time.perf_counter()
    if train:
        from mesa_lab.jobs import run_jobs
        from mesa_ref.runio import CLIError, ensure_writable_dir
        try:
            ensure_writable_dir(out)
            jobs = gather_jobs(scripts, args, mode)
            if jobs:
                print(f"== jobs: {len(jobs)} from {len(scripts)} figure script(s)", flush=True)
                workers = args.workers if args.workers is not None else (0 if mode == "smoke" else None)
                run_jobs(jobs, store, scheduler=args.scheduler, workers=workers,
                         retrain=args.retrain, progress=sys.stderr.isatty(), log=lambda s: print(s, flush=True))
        except CLIError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except (RuntimeError, ValueError) as e:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
    failed = []
    for script in scripts:
        t0 = time.perf_counter()
        sflags = flags + (["--no-train"] if mode == "full" and not train and not args.replot else [])
        print(f"== {script.stem} {' '.join(sflags)}", flush=True)
        rc = subprocess.call([sys.executable, str(script), *sflags], cwd=ROOT)
        dt = time.perf_counter() - t0
        print(f"-- {script.stem}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {dt:.0f} s", flush=True)
        if rc != 0:
            failed.append(script.stem)
    total = time.perf_counter() - t_all
    if failed:
        print(f"{len(failed)} of {len(scripts)} figure scripts failed: {', '.join(failed)} ({total:.0f} s)",
              file=sys.stderr)
        return 1
    print(f"all {len(scripts)} figure scripts ran ({total:.0f} s); outputs in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
