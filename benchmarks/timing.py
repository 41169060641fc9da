"""What the benchmarks share: the timing loop, the fresh-process worker, and the atomic write of a result.

``timed_calls`` is used by ``bench_train_step.py`` (each worker's training steps), ``bench_lm_cost.py`` (steps,
forward passes and single ops) and ``bench_plain_vs_simd.py`` (single ops), so that all measure a call the same
way. ``run_worker`` runs one alternating block in a fresh process (``bench_train_step.py``,
``bench_plain_vs_simd.py``); ``write_result`` writes a result's JSON and Markdown each atomically;
``training_paused`` stops this checkout's training queues while a benchmark that measures speed runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "figures" / "full" / "jobs"       # the job store the training queues of this checkout train into


@contextmanager
def training_paused():
    """The training queues of this checkout's job store stopped for the duration of the block
    (``mesa_lab.pause``): jobs training beside a benchmark share its cores and caches, and the benchmark would time
    them too. Every benchmark that measures speed runs its ``main`` inside this. MESA_BENCH_KEEP_QUEUE=1 leaves the
    queues running."""
    if os.environ.get("MESA_BENCH_KEEP_QUEUE") == "1":
        yield 0
        return
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from mesa_lab.pause import paused
    with paused(STORE) as n:            # silently: a benchmark's own output (and a bad input's one line) stays its own
        yield n


def timed_calls(run, repeats: int, warmup: int = 0) -> tuple[list, list]:
    """(wall seconds, process-CPU seconds) of each of ``repeats`` calls of ``run()``, after ``warmup`` untimed
    calls."""
    for _ in range(warmup):
        run()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        run()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return wall, cpu


def python_call(module: str, call: str, root=None) -> list:
    """The command that runs ``<module>.<call>`` (e.g. ``worker('linear2', ...)``) in a fresh interpreter with the
    project and benchmarks/ on its path; ``root``: another checkout whose packages are imported instead (the
    benchmark's own code still comes from this one)."""
    # The benchmark module puts this checkout first on the path when it is imported, so ``root`` goes in front
    # after that import and before the call (the modules import the packages inside their workers); the workers
    # report which checkout they imported (``package``), and the callers check it.
    code = (f"import sys; sys.path[:0] = [{str(ROOT / 'benchmarks')!r}]; import {module} as m; "
            f"sys.path.insert(0, {str(root or ROOT)!r}); m.{call}")
    return [sys.executable, "-c", code]


def run_worker(cmd: list, label: str, env: dict | None = None) -> dict:
    """Run one benchmark worker process and return the JSON dict its last line of output holds; exit with the
    tail of its stderr if it fails."""
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"error: worker {label} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def write_result(out: Path, stem: str, data: dict, md: str, *, indent: int = 2) -> None:
    """``out/<stem>.json`` and ``out/<stem>.md``, each written atomically (a killed run leaves the old file)."""
    from mesa_ref.runio import atomic_write_bytes
    atomic_write_bytes(Path(out) / f"{stem}.json", (json.dumps(data, indent=indent) + "\n").encode())
    atomic_write_bytes(Path(out) / f"{stem}.md", md.encode())
