"""Experiments as jobs (mesa_lab.jobs): keys, the store, resuming, and a real Dask cluster that loses a worker.

The cluster test starts a scheduler and two single-threaded worker processes on localhost, sends a smoke sweep
to them, kills the worker running one job once that job has written a checkpoint, and checks that every job
still finishes and that every result equals, bit for bit, the same sweep run undisturbed in this process.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mesa_ref.config import ModelConfig
from mesa_lab.jobs import Job, JobFailed, MissingResults, Store, run_job, run_jobs
from mesa_ref.tasks import LinearTask, NonlinearTask, PartialTask, task_from_dict
from mesa_ref.train import TrainConfig

pytestmark = pytest.mark.slow        # starts Dask clusters and kills workers


def tiny_job(seed=0, steps=40, checkpoint_every=10, backend="ref", layers=("linear",), batch=16, T=8, n=3):
    model = ModelConfig(layers=layers, heads=1, width=4 * n, key_size=n, input_dim=n, output_dim=n, init_std=0.05)
    train = TrainConfig(steps=steps, batch=batch, lr=3e-3, warmup_steps=2, decay_steps=steps, final_lr=3e-4,
                        eval_every=10, test_batches=1, checkpoint_every=checkpoint_every, seed=seed)
    return Job(model, LinearTask(n=n, T=T), train, backend=backend, label=f"tiny{seed}")


def same_params(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- keys and records
def test_key_depends_on_every_part_of_the_job_but_not_the_label():
    j = tiny_job()
    assert j.key == tiny_job().key
    assert j.key == Job(j.model, j.task, j.train, j.backend, j.dtype, label="another name").key
    variants = [tiny_job(seed=1), tiny_job(steps=41), tiny_job(backend="fast"), tiny_job(layers=("softmax",)),
                Job(j.model, LinearTask(n=3, T=8, sigma=0.02), j.train, "ref"),
                Job(j.model, j.task, j.train, "ref", dtype="float64")]
    keys = {v.key for v in variants}
    assert len(keys) == len(variants) and j.key not in keys


def test_record_round_trip():
    for task in (LinearTask(n=3, T=8, tokens="raw"), PartialTask(n=4, m=2, k=3, T=9), NonlinearTask(n=3, T=7)):
        assert task_from_dict(task.to_dict()) == task
    j = tiny_job()
    j2 = Job(j.model, j.task, TrainConfig(**{**j.train.__dict__, "lr_scale": (("lam_raw", 30.0),)}), "ref")
    for job in (j, j2):
        back = Job.from_record(json.loads(json.dumps(job.record())))
        assert back.key == job.key and back.train == job.train and back.model == job.model


def test_bad_job_fields_are_value_errors():
    j = tiny_job()
    with pytest.raises(ValueError, match="backend"):
        Job(j.model, j.task, j.train, backend="gpu")
    with pytest.raises(ValueError, match="dtype"):
        Job(j.model, j.task, j.train, dtype="float16")
    with pytest.raises(ValueError, match="unknown task"):
        task_from_dict({"name": "no_such_task"})


# ---------------------------------------------------------------------------------------------- the store
def test_finished_job_is_not_run_again(tmp_path):
    jobs = [tiny_job(0), tiny_job(1), tiny_job(0)]
    lines = []
    first = run_jobs(jobs, tmp_path, workers=0, progress=False, log=lines.append)
    assert len(first) == 2 and sum(ln.startswith("start") for ln in lines) == 2
    stamp = {k: Store(tmp_path).result_path(k).stat().st_mtime_ns for k in first}
    lines.clear()
    again = run_jobs(jobs, tmp_path, workers=0, progress=False, log=lines.append)
    assert not any(ln.startswith("start") for ln in lines) and sum(ln.startswith("done") for ln in lines) == 2
    assert {k: Store(tmp_path).result_path(k).stat().st_mtime_ns for k in again} == stamp
    for k in first:
        assert same_params(first[k].params, again[k].params)
        assert first[k].record == jobs[0 if k == jobs[0].key else 1].record()
    assert not list((tmp_path / ".work").glob("*/checkpoint.npz"))     # work directories are removed


def test_missing_results_without_training_name_the_jobs(tmp_path):
    with pytest.raises(MissingResults, match="tiny0"):
        run_jobs([tiny_job(0)], tmp_path, train=False, progress=False, log=None)


def test_a_result_under_the_wrong_name_is_refused(tmp_path):
    a, b = tiny_job(0), tiny_job(1)
    run_jobs([a], tmp_path, workers=0, progress=False, log=None)
    store = Store(tmp_path)
    store.result_path(a.key).rename(store.result_path(b.key))
    with pytest.raises(Exception, match="different job"):
        store.get(b)


def test_retrain_discards_the_stored_result(tmp_path):
    j = tiny_job(0)
    run_jobs([j], tmp_path, workers=0, progress=False, log=None)
    lines = []
    run_jobs([j], tmp_path, workers=0, retrain=True, progress=False, log=lines.append)
    assert any(ln.startswith("start") for ln in lines)


def test_resume_after_kill_is_bit_for_bit(tmp_path):
    """A job process killed after a checkpoint resumes there and ends equal to an uninterrupted run."""
    job = tiny_job(3, steps=400, checkpoint_every=20, batch=64, T=20, n=4, layers=("linear", "softmax"))
    ref = run_jobs([job], tmp_path / "undisturbed", workers=0, progress=False, log=None)[job.key]
    store = tmp_path / "killed"
    code = ("import json, sys; from mesa_lab.jobs import run_job; "
            "run_job(json.loads(sys.argv[1]), sys.argv[2], 'victim')")
    p = subprocess.Popen([sys.executable, "-c", code, json.dumps(job.record()), str(store)])
    ckpt = Store(store).work_dir(job.key) / "checkpoint.npz"
    deadline = time.time() + 120
    while not ckpt.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert ckpt.exists() and not Store(store).finished(job)
    res = run_jobs([job], store, workers=0, progress=False, log=None)[job.key]
    assert res.cost["segments"] == 2
    assert same_params(res.params, ref.params)
    assert res.metrics["test_loss"] == ref.metrics["test_loss"]


def test_corrupt_checkpoint_fails_in_process(tmp_path):
    job = tiny_job(0)
    work = Store(tmp_path).work_dir(job.key)
    work.mkdir(parents=True)
    (work / "checkpoint.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="corrupt"):
        run_job(job.record(), str(tmp_path), job.label)


# ---------------------------------------------------------------------------------------------- a real cluster
def _start(args, log):
    return subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})


@pytest.fixture
def cluster(tmp_path):
    """A Dask scheduler and two single-threaded worker processes (no nanny: a killed worker stays dead)."""
    pytest.importorskip("distributed")
    sched_file = tmp_path / "scheduler.json"
    log = open(tmp_path / "cluster.log", "w")
    procs = [_start(["distributed.cli.dask_scheduler", "--scheduler-file", str(sched_file), "--port", "0",
                     "--dashboard-address", ":0", "--no-show"], log)]
    deadline = time.time() + 60
    while not sched_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert sched_file.exists(), (tmp_path / "cluster.log").read_text()
    for i in range(2):
        procs.append(_start(["distributed.cli.dask_worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                             "--no-nanny", "--name", f"w{i}", "--memory-limit", "0"], log))
    from distributed import Client
    with Client(scheduler_file=str(sched_file), timeout="60s") as c:
        c.wait_for_workers(2, timeout=60)
        address = c.scheduler.address
    yield address, procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    log.close()


def smoke_sweep():
    return [tiny_job(s, steps=300, checkpoint_every=20, batch=64, T=20, n=4, layers=("linear", "softmax"))
            for s in (10, 11, 12)]


def test_cluster_survives_a_killed_worker(tmp_path, cluster):
    address, procs = cluster
    jobs = smoke_sweep()
    undisturbed = run_jobs(jobs, tmp_path / "undisturbed", workers=0, progress=False, log=None)
    store = tmp_path / "store"
    lines, outcome = [], {}

    def client():
        try:
            outcome["results"] = run_jobs(jobs, store, scheduler=address, progress=False, log=lines.append)
        except BaseException as e:  # noqa: BLE001  (reported by the assertion below)
            outcome["error"] = e

    th = threading.Thread(target=client)
    th.start()
    worker_pids = {p.pid for p in procs[1:]}
    victim, deadline = None, time.time() + 120
    while victim is None and time.time() < deadline and th.is_alive():
        for ckpt in Store(store).root.glob(".work/*/checkpoint.npz"):
            owner = ckpt.parent / "owner.json"
            try:
                pid = json.loads(owner.read_text())["pid"]
            except (OSError, ValueError):
                continue
            if pid in worker_pids:
                victim = (ckpt.parent.name, pid)
                os.kill(pid, signal.SIGKILL)
                break
        time.sleep(0.005)
    th.join(timeout=300)
    assert not th.is_alive(), "the sweep hung after a worker died"
    assert "error" not in outcome, outcome.get("error")
    assert victim is not None, "no job was seen mid-run"
    results = outcome["results"]
    assert set(results) == {j.key for j in jobs}
    assert results[victim[0]].cost["segments"] == 2                 # it ran on the killed worker, then resumed
    assert any(ln.startswith("resume") and victim[0][:8] in ln for ln in lines), lines
    for j in jobs:
        assert same_params(results[j.key].params, undisturbed[j.key].params), j.label
        assert results[j.key].metrics["test_loss"] == undisturbed[j.key].metrics["test_loss"]


def test_a_failing_job_fails_the_sweep_with_its_error(tmp_path, cluster):
    address, _ = cluster
    bad, good = tiny_job(20), tiny_job(21)
    work = Store(tmp_path).work_dir(bad.key)
    work.mkdir(parents=True)
    (work / "checkpoint.npz").write_bytes(b"not a checkpoint")
    t0 = time.time()
    with pytest.raises(JobFailed, match="tiny20.*corrupt"):
        run_jobs([good, bad], tmp_path, scheduler=address, progress=False, log=None)
    assert time.time() - t0 < 120


def test_scheduler_from_dasks_environment_variable(tmp_path, cluster):
    """A figure script sends its jobs to the scheduler named by DASK_SCHEDULER_ADDRESS, as Dask's own tools do."""
    address, _ = cluster
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(root / "scripts" / "fig3_depth.py"), "--smoke", "--backend", "ref",
                        "--out", str(tmp_path), "--no-progress"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "DASK_SCHEDULER_ADDRESS": address})
    assert r.returncode == 0, r.stderr
    assert f"at {address}" in r.stdout and "dashboard" in r.stdout
    assert sum(ln.startswith("finish") for ln in r.stdout.splitlines()) == 2     # the two smoke depths


def test_embedded_cluster_listens_on_loopback_only():
    """The embedded cluster's scheduler and its dashboard (which shows workers' state, logs and profiles, with no
    authentication) accept connections from this machine only: every socket this process listens on after starting
    it is bound to 127.0.0.1, the dashboard's port among them."""
    import psutil
    from distributed import Client

    from mesa_lab.jobs import local_cluster
    with local_cluster(1) as cluster, Client(cluster):
        port = cluster.scheduler.http_server.port
        listening = [c.laddr for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert port in [a.port for a in listening]
        assert all(a.ip == "127.0.0.1" for a in listening), listening
        assert cluster.dashboard_link.startswith("http://127.0.0.1:")
        assert cluster.scheduler.worker_ttl is None           # a paused queue keeps its workers (mesa_lab/pause.py)
