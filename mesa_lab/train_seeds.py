"""Train the seeded full-size models (mesa_lab/experiments/seeds.py) and the second configurations
(mesa_lab/experiments/retests.py) into the job store, on Dask.

    python scripts/train_seeds.py --list                    what would run, and what is already stored
    python scripts/train_seeds.py --seeds 1 2               train seeds 1 and 2 of every seeded figure
    python scripts/train_seeds.py --seeds 1 2 --only fig8_language,fig3_depth
    python scripts/train_seeds.py --seeds 1 2 --retests     the seeds, then the second configurations

Resumable: a finished job is in STORE/<key>.npz and never runs again; a killed one resumes from its
checkpoint in STORE/.work/.  Figures are taken in SEEDED's order, so the cheap ones complete first, and each
figure's jobs longest first (by what the same model cost at seed 0; a second configuration's by the estimate of
mesa_lab/cost.py), so its last job does not start late.
--store (default figures/full/jobs), --workers N (default: one single-threaded worker per core; 0: no Dask),
--scheduler ADDRESS (an existing Dask scheduler).  --pause / --resume stop and continue the queues training into
the store on this machine (the speed benchmarks pause them by themselves while they time).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]        # the checkout: figures/, docs/, scripts/


def main(argv=None) -> int:
    from mesa_lab.experiments.retests import retest_jobs
    from mesa_lab.experiments.seeds import SEEDED, TRAINING_SEEDS, seed_jobs
    p = argparse.ArgumentParser(prog="scripts/train_seeds.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=list(TRAINING_SEEDS), help="training seeds")
    p.add_argument("--only", default=None, help=f"comma-separated figures (of: {', '.join(SEEDED)})")
    p.add_argument("--store", default=str(ROOT / "figures" / "full" / "jobs"), help="job store")
    p.add_argument("--workers", type=int, default=None, help="local Dask workers (default: one per core); 0: no Dask")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    p.add_argument("--retests", action="store_true",
                   help="also train the figures' second configurations (retests.RETESTS), after the seeds (the "
                        "verdicts rest on the seeds; fig7's second configuration alone is about 20 CPU hours)")
    p.add_argument("--list", action="store_true", help="list the jobs and whether each is stored; train nothing")
    p.add_argument("--pause", action="store_true",
                   help="stop the queues training into --store on this machine (SIGSTOP; mesa_lab/pause.py); "
                        "the benchmarks that measure speed do this themselves")
    p.add_argument("--resume", action="store_true", help="continue the queues that --pause stopped")
    args = p.parse_args(argv)
    if args.pause or args.resume:
        from mesa_lab.pause import pause, resume
        n = (pause if args.pause else resume)(args.store)
        print(f"{'paused' if args.pause else 'resumed'} {n} process(es) of the queues training into {args.store}")
        return 0
    from mesa_lab.jobs import Store, run_jobs, unique_jobs
    from mesa_ref.runio import CLIError
    figures = [f.strip() for f in args.only.split(",") if f.strip()] if args.only else None
    store = Store(args.store)
    try:
        jobs = unique_jobs(seed_jobs(figures, tuple(args.seeds), store=store)
                           + (retest_jobs(figures, ROOT / "figures" / "full", longest_first=True) if args.retests else []))
    except (ValueError, CLIError) as e:                  # CLIError: a stored result that holds another record
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.list:
        for j in jobs:
            print(f"{'stored ' if store.finished(j) else 'missing'} {j.key}  {j.label}")
        return 0
    try:
        run_jobs(jobs, store.root, scheduler=args.scheduler, workers=args.workers, progress=sys.stderr.isatty(),
                 log=lambda s: print(s, flush=True))
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
