"""mesa_lab/pause.py: a training queue records itself in its store, and a benchmark stops it (and every process
below it) while it times, and continues it afterwards, also when the timed block fails."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from mesa_lab import pause
from mesa_lab.jobs import run_jobs
from mesa_lab.pause import QUEUES, paused, queue_processes, registered

ROOT = Path(__file__).resolve().parents[2]

# a queue: records itself in the store, starts a child, and both spin until killed
QUEUE = textwrap.dedent("""
    import subprocess, sys, time
    from mesa_lab.pause import registered
    with registered(sys.argv[1]):
        child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        print("ready", child.pid, flush=True)
        while True:
            time.sleep(0.01)
""")


def _status(pid, want, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if psutil.Process(pid).status() in want:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def queue(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", QUEUE, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    pids = [proc.pid]
    try:
        ready, child = proc.stdout.readline().split()
        assert ready == "ready"
        pids.append(int(child))
        yield proc.pid, int(child)
    finally:
        for pid in pids:
            try:
                psutil.Process(pid).resume()
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=10)


STOPPED = {psutil.STATUS_STOPPED}
GOING = {psutil.STATUS_RUNNING, psutil.STATUS_SLEEPING}


def test_pause_stops_the_queue_and_its_children_and_resume_continues_them(queue, tmp_path):
    parent, child = queue
    assert {p.pid for p in queue_processes(tmp_path)} == {parent, child}
    assert pause.pause(tmp_path) == 2
    assert _status(parent, STOPPED) and _status(child, STOPPED)
    assert pause.resume(tmp_path) == 2
    assert _status(parent, GOING) and _status(child, GOING)


def test_paused_continues_the_queue_when_the_block_fails(queue, tmp_path):
    parent, child = queue
    with pytest.raises(RuntimeError, match="benchmark failed"):
        with paused(tmp_path) as n:
            assert n == 2 and _status(child, STOPPED)
            raise RuntimeError("benchmark failed")
    assert _status(parent, GOING) and _status(child, GOING)


def test_records_of_ended_or_recycled_processes_are_dropped(tmp_path):
    folder = tmp_path / QUEUES
    folder.mkdir(parents=True)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    (folder / f"{host}-1.json").write_text(json.dumps({"pid": int(ended.stdout), "host": host, "started": 0.0}))
    me = psutil.Process()
    (folder / f"{host}-2.json").write_text(json.dumps({"pid": me.ppid(), "host": host, "started": 1.0}))
    (folder / f"{host}-3.json").write_text("{not json")
    assert queue_processes(tmp_path) == [] and pause.pause(tmp_path) == 0
    assert not list(folder.iterdir())


def test_the_caller_is_never_stopped_and_its_record_goes_with_it(tmp_path):
    with registered(tmp_path) as path:
        rec = json.loads(path.read_text())
        assert rec["pid"] == os.getpid() and path.name.endswith(f"-{os.getpid()}.json")
        assert queue_processes(tmp_path) == []
    assert not path.exists()


def test_run_jobs_records_its_queue_while_it_trains(tmp_path):
    from test_jobs import tiny_job
    seen = []

    def log(line):
        seen.append([json.loads(p.read_text())["pid"] for p in (tmp_path / QUEUES).glob("*.json")])

    run_jobs([tiny_job(steps=4)], tmp_path, workers=0, log=log, progress=False)
    assert seen and all(s == [os.getpid()] for s in seen)
    assert not list((tmp_path / QUEUES).glob("*.json"))


def test_train_seeds_pause_and_resume_by_hand(queue, tmp_path):
    parent, child = queue
    for flag, want in (("--pause", STOPPED), ("--resume", GOING)):
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_seeds.py"), flag, "--store", str(tmp_path)],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0 and "2 process(es)" in r.stdout, r.stderr
        assert _status(child, want)


def test_benchmarks_pause_this_checkouts_queues_unless_told_not_to(queue, tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import timing
    parent, child = queue
    monkeypatch.setattr(timing, "STORE", tmp_path)
    with timing.training_paused() as n:
        assert n == 2 and _status(parent, STOPPED) and _status(child, STOPPED)
    assert _status(child, GOING)
    monkeypatch.setenv("MESA_BENCH_KEEP_QUEUE", "1")
    with timing.training_paused() as n:
        assert n == 0 and _status(child, GOING)
    speed = ("bench_huge_pages", "bench_lm_cost", "bench_mesa", "bench_plain_vs_simd", "bench_train_step",
             "estimate_jobs", "profile_train_step")
    for name in speed:                   # every benchmark that measures speed runs its main inside it
        main_guard = (ROOT / "benchmarks" / f"{name}.py").read_text().split('if __name__ == "__main__":')[1]
        assert "with training_paused():" in main_guard, name
