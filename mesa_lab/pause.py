"""Pausing the training queue while a benchmark measures speed.

Training jobs fill the machine's cores, so a benchmark timed beside them measures the contention, not the code.
A queue that trains on this machine (``run_jobs``: ``scripts/train_seeds.py``, ``make_figures.py --train``, a
figure script) therefore records itself in its store, ``STORE/.work/queues/<host>-<pid>.json``: its process id
and that process's start time (so a recycled process id is not mistaken for it).  ``pause(store)`` stops each
recorded process and every process below it (the Dask scheduler runs inside it, the workers are its children) with
SIGSTOP; ``resume(store)`` continues them with SIGCONT; ``paused(store)`` does both around a block and resumes
even when the block fails.  The benchmarks that measure speed run inside ``paused`` (``benchmarks/timing.py``).

A stopped queue loses nothing: its clocks jump when it continues.  The embedded Dask cluster is made without a
worker time-to-live (``jobs.local_cluster``), so after a long pause the scheduler does not give up on its workers.
A queue run through an outside scheduler (``--scheduler``) trains elsewhere and records nothing.

    python scripts/train_seeds.py --pause     # or --resume: the queues of the default store, by hand
"""
from __future__ import annotations

import json
import os
import signal
import socket
from contextlib import contextmanager
from pathlib import Path

from mesa_ref.runio import atomic_write_bytes

QUEUES = Path(".work") / "queues"


def _record_path(store_root, pid: int) -> Path:
    return Path(store_root) / QUEUES / f"{socket.gethostname()}-{pid}.json"


def _started(pid: int) -> float:
    import psutil
    return psutil.Process(pid).create_time()


@contextmanager
def registered(store_root):
    """Records this process as a queue of ``store_root`` for the duration of the block."""
    pid = os.getpid()
    path = _record_path(store_root, pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps({"pid": pid, "host": socket.gethostname(), "started": _started(pid)}).encode())
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def queue_processes(store_root) -> list:
    """The live processes of the queues recorded in ``store_root`` on this host, each queue's process followed by
    the processes below it (``psutil.Process`` objects).  Records of queues that have ended are removed."""
    import psutil
    folder = Path(store_root) / QUEUES
    procs = []
    for path in sorted(folder.glob(f"{socket.gethostname()}-*.json")) if folder.is_dir() else []:
        try:
            rec = json.loads(path.read_text())
            proc = psutil.Process(int(rec["pid"]))
            if abs(proc.create_time() - float(rec["started"])) > 1e-3:
                raise psutil.NoSuchProcess(proc.pid)             # the id now belongs to another process
        except (psutil.NoSuchProcess, ValueError, KeyError, OSError):
            path.unlink(missing_ok=True)
            continue
        if proc.pid == os.getpid():
            continue                                             # never stop the caller
        procs.append(proc)
        procs += proc.children(recursive=True)
    return procs


def _signal(store_root, sig) -> int:
    import psutil
    n = 0
    for proc in queue_processes(store_root):
        try:
            proc.send_signal(sig)
            n += 1
        except psutil.NoSuchProcess:
            pass
    return n


def pause(store_root) -> int:
    """SIGSTOP to every queue process of ``store_root`` on this host; returns how many were stopped."""
    return _signal(store_root, signal.SIGSTOP)


def resume(store_root) -> int:
    """SIGCONT to every queue process of ``store_root`` on this host; returns how many were continued."""
    return _signal(store_root, signal.SIGCONT)


@contextmanager
def paused(store_root, log=None):
    """The queues of ``store_root`` stopped for the duration of the block (continued even if it raises)."""
    n = pause(store_root)
    if n and log is not None:
        log(f"paused the training queue of {store_root} ({n} processes) while this runs")
    try:
        yield n
    finally:
        if n:
            resume(store_root)
            if log is not None:
                log("resumed the training queue")
