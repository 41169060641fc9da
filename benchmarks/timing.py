"""The timing loop the benchmarks share: wall-clock and process-CPU time of each call of a function.

Shared by ``bench_train_step.py`` (each worker's training steps) and ``bench_lm_cost.py`` (steps, forward
passes and single ops), so that both measure a call the same way.
"""
from __future__ import annotations

import time


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
