"""What a figure's jobs would cost to train, before queueing them: each job's gradient step timed on its own model,
task and batch, times its number of steps.

    python benchmarks/estimate_jobs.py fig7_mesa_vs_attention --flags="--setup authors" --tag fig7_authors

Per job: the median process-CPU seconds of ``--repeats`` calls of ``loss_and_grads`` (fast backend, one thread, float32,
the job's training batch) after one untimed call (compilation), and that times the job's steps in CPU hours.  The
AdamW update, the periodic test-loss evaluations and checkpoints are left out: they add a few percent.  Other jobs
running on the machine share its cores and caches, so this is a planning number, not a speed comparison (those
alternate in one run: bench_train_step.py).  Writes benchmarks/results/estimate_jobs_<tag>.json and .md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]


def main(argv=None) -> int:
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")              # as a training job runs: one thread, one job per core
    import numpy as np

    from bench_train_step import cpu_name, git_commit, loadavg
    from mesa_lab.experiments import experiment
    from mesa_lab.experiments.common import experiment_parser
    from mesa_fast.model import Transformer
    from timing import timed_calls, write_result

    p = argparse.ArgumentParser(prog="benchmarks/estimate_jobs.py", description=__doc__.splitlines()[0])
    p.add_argument("figure", help="a figure's name, e.g. fig7_mesa_vs_attention")
    p.add_argument("--flags", default="", help="the figure script's flags that select its configuration")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--tag", default=None, help="result file name: estimate_jobs_<tag> (default: the figure)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where the result files go")
    args = p.parse_args(argv)
    try:
        exp = experiment(args.figure)
    except (KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("error: --repeats: expected >= 1", file=sys.stderr)
        return 2
    fargs = experiment_parser(exp).parse_args(shlex.split(args.flags))
    if fargs.out is None:           # nothing is written there; a second configuration only asks that one is named
        fargs.out = os.devnull
    cfg = exp.config("full", fargs)
    rows = {}
    for name, job in exp.jobs(cfg, fargs.seed, "fast").items():
        model = Transformer(job.model)
        params = model.init(0, np.float32)
        x, y = job.task.batch(np.random.default_rng(0), job.train.batch, np.float32)
        _, cpu = timed_calls(lambda: model.loss_and_grads(params, x, y), args.repeats, warmup=1)
        step = statistics.median(cpu)
        rows[name] = {"key": job.key, "steps": job.train.steps, "cpu_seconds_per_step": step,
                      "cpu_hours": step * job.train.steps / 3600}
        print(f"{name}: {1e3 * step:.0f} ms CPU per step x {job.train.steps} steps = {rows[name]['cpu_hours']:.2f} "
              f"CPU h", flush=True)
    total = sum(r["cpu_hours"] for r in rows.values())
    meta = {"benchmark": "estimate_jobs", "git_commit": git_commit(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/estimate_jobs.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                        "loadavg": loadavg()},
            "figure": args.figure, "flags": args.flags, "what": "loss_and_grads only (fast backend, 1 thread, "
                                                                 "float32); the optimizer, evaluations and "
                                                                 "checkpoints are not included",
            "jobs": rows, "cpu_hours_total": total, "two_core_machine_hours": total / 2}
    md = [f"# Estimated training cost: {args.figure} {args.flags}".rstrip(), "",
          f"- date: {meta['date']}; commit {meta['git_commit']}",
          f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores; load average at the end "
          f"{meta['machine']['loadavg']}", f"- command: `{meta['command']}`", f"- {meta['what']}", "",
          "| job | ms CPU per step | steps | CPU hours |", "|---|---|---|---|"]
    md += [f"| {k} | {1e3 * r['cpu_seconds_per_step']:.0f} | {r['steps']} | {r['cpu_hours']:.2f} |"
           for k, r in rows.items()]
    md += ["", f"Total: {total:.1f} CPU hours, {total / 2:.1f} hours of the 2-core machine (one job per core).", ""]
    write_result(Path(args.out), f"estimate_jobs_{args.tag or args.figure}", meta, "\n".join(md))
    return 0


if __name__ == "__main__":
    from timing import training_paused
    with training_paused():
        sys.exit(main())
