"""Experiments as jobs: independent training runs kept in a content-addressed store, run on Dask.

A figure's computation is a list of training jobs plus a cheap analysis of their results.  A ``Job`` is
everything that decides a training run's numbers: the model config, the task, the training config (its
seed included), the backend and the dtype.  Its ``key`` is a hash of that whole record, so

* a job's result lives at ``STORE/<key>.npz`` (trained parameters, metrics, the record itself, and what
  the run cost), written atomically once the run is complete: a finished job is never run again;
* a job in progress checkpoints to ``STORE/.work/<key>/`` (``mesa_ref.train.train`` every
  ``TrainConfig.checkpoint_every`` steps); a killed job resumes from there, and on the CPU with the same
  backend it ends bit-for-bit equal to an uninterrupted run (the data stream's state is in the checkpoint);
* ``STORE`` is any directory every worker can reach: a local path on one machine, a shared file system on a
  cluster.

``run_jobs`` sends the jobs that are not finished to Dask: an embedded ``LocalCluster`` (one single-threaded
worker process per core) by default, or an existing scheduler (``scheduler=ADDRESS``, or Dask's
``DASK_SCHEDULER_ADDRESS``).  When a worker dies mid-job, Dask's scheduler gives the job to another worker,
which resumes it from its checkpoint; a job that raises fails the whole call with that job's error.
``workers=0`` runs the jobs one after another in this process, without Dask.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mesa_ref.config import ModelConfig
from mesa_ref.ops._common import to_host
from mesa_ref.runio import CLIError, _to_jsonable, atomic_write_bytes, load_checkpoint, read_json, save_checkpoint, write_json
from mesa_ref.tasks import task_from_dict
from mesa_ref.train import TrainConfig

from .pause import registered
from .provenance import code_version

EVENT_TOPIC = "mesa-jobs"      # Dask event topic of the job progress lines


class JobFailed(RuntimeError):
    """A job raised in its own code (or its workers kept dying); the message names the job."""


class MissingResults(CLIError):
    """Results are needed but absent from the store and training was not allowed."""


# ---------------------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    """One training run.  ``label`` is a human-readable name for progress lines; it is not part of the key."""
    model: ModelConfig
    task: object                # a mesa_ref.tasks task (anything task_from_dict can rebuild)
    train: TrainConfig
    backend: str = "fast"       # "ref" | "fast"
    dtype: str = "float32"
    label: str = ""

    def __post_init__(self):
        if self.backend not in ("ref", "fast"):
            raise ValueError(f"backend: expected 'ref' or 'fast', got {self.backend!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype: expected 'float32' or 'float64', got {self.dtype!r}")

    def record(self) -> dict:
        """The job as plain JSON: what the key hashes and what a worker rebuilds the job from."""
        rec = {"model": self.model.to_dict(), "task": self.task.to_dict(), "train": dataclasses.asdict(self.train),
               "backend": self.backend, "dtype": self.dtype}
        return json.loads(json.dumps(_to_jsonable(rec), sort_keys=True))

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode()).hexdigest()[:20]

    @classmethod
    def from_record(cls, rec: dict, label: str = "") -> "Job":
        tr = dict(rec["train"])
        tr["lr_scale"] = tuple(tuple(p) for p in tr.get("lr_scale", ()))
        return cls(model=ModelConfig.from_dict({**rec["model"], "layers": tuple(rec["model"]["layers"])}),
                   task=task_from_dict(rec["task"]), train=TrainConfig(**tr), backend=rec["backend"],
                   dtype=rec["dtype"], label=label)

    def name(self) -> str:
        return f"{self.label or 'job'} [{self.key[:8]}]"


@dataclass
class JobResult:
    key: str
    record: dict
    params: dict          # name -> NumPy array (host)
    metrics: dict         # mesa_ref.train's metrics: step, test_loss, ..., final_test_loss
    cost: dict            # cpu_seconds, wall_seconds, segments (1 + number of resumes), steps, host, ...

    @property
    def final_test_loss(self) -> float:
        return float(self.metrics["final_test_loss"])


# ---------------------------------------------------------------------------------------------- the store
class Store:
    """``ROOT/<key>.npz`` finished results; ``ROOT/.work/<key>/`` checkpoints of jobs in progress."""

    def __init__(self, root):
        self.root = Path(root).resolve()

    def result_path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def work_dir(self, key: str) -> Path:
        return self.root / ".work" / key

    def prepare(self) -> None:
        """Create the store (and the ignore file that keeps work directories out of version control)."""
        work = self.root / ".work"
        try:
            work.mkdir(parents=True, exist_ok=True)
            ign = work / ".gitignore"
            if not ign.exists():
                atomic_write_bytes(ign, b"# checkpoints of jobs in progress\n*\n")
        except OSError as e:
            raise CLIError(f"job store {str(self.root)!r} is not writable: {e.strerror or e}") from None

    def finished(self, job: Job) -> bool:
        return self.result_path(job.key).exists()

    def get(self, job: Job) -> JobResult | None:
        """The finished result of ``job`` or None.  The stored record must equal the job's (a hash collision
        or a file copied under the wrong name is an error, not a silent mix-up)."""
        path = self.result_path(job.key)
        if not path.exists():
            return None
        arrays, meta = load_checkpoint(path)
        if meta.get("record") != job.record():
            raise CLIError(f"{path}: holds a different job's record; remove it")
        return JobResult(job.key, meta["record"], arrays, meta["metrics"], meta.get("cost", {}))

    def put(self, job: Job, params: dict, metrics: dict, cost: dict) -> None:
        save_checkpoint(self.result_path(job.key), params,
                        {"record": job.record(), "label": job.label, "metrics": metrics, "cost": cost})

    def discard(self, job: Job) -> None:
        """Forget a job's result and checkpoint (``--retrain``)."""
        self.result_path(job.key).unlink(missing_ok=True)
        shutil.rmtree(self.work_dir(job.key), ignore_errors=True)


# ---------------------------------------------------------------------------------------------- one job
def _emit(log, kind: str, job: Job, **info) -> None:
    """A progress event: to Dask's event log on a worker (the client prints it), else to ``log``."""
    msg = {"event": kind, "label": job.label, "key": job.key, "host": socket.gethostname(), "pid": os.getpid(),
           **info}
    try:
        from distributed import get_worker
        get_worker().log_event(EVENT_TOPIC, msg)
        return
    except (ImportError, ValueError):
        pass
    if log is not None:
        log(format_event(msg))


def format_event(msg: dict) -> str:
    name = f"{msg.get('label') or 'job'} [{msg['key'][:8]}]"
    kind = msg["event"]
    if kind == "start":
        return f"start   {name} on {msg['host']}:{msg['pid']}"
    if kind == "resume":
        return f"resume  {name} from step {msg['step']} on {msg['host']}:{msg['pid']}"
    if kind == "finish":
        return (f"finish  {name}: test loss {msg['loss']:.5g} after {msg['steps']} steps, "
                f"{msg['cpu_seconds'] / 3600:.2f} CPU h")
    if kind == "cached":
        return f"done    {name}: test loss {msg['loss']:.5g} (stored result)"
    return f"{kind} {name}"


def _limit_threads(threads: int, backend: str):
    """Numba's and the BLAS's thread counts for this job (restored afterwards by the returned context)."""
    import contextlib
    stack = contextlib.ExitStack()
    try:
        from threadpoolctl import threadpool_limits
        stack.enter_context(threadpool_limits(limits=threads))
    except ImportError:  # pragma: no cover
        pass
    if backend == "fast":
        try:
            import numba
            old = numba.get_num_threads()
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            stack.callback(numba.set_num_threads, old)
        except ImportError:  # pragma: no cover
            pass
    return stack


def run_job(record: dict, store_root: str, label: str = "", *, threads: int = 1, progress: bool = False,
            log=None) -> dict:
    """Run one job to completion (or load its stored result) and return a summary dict.

    Resumes from ``STORE/.work/<key>/checkpoint.npz`` when a previous attempt was killed.  Runs with
    ``threads`` Numba and BLAS threads (1 on a cluster of single-threaded workers).  Writes the result
    atomically, then removes the job's work directory."""
    from .ref_or_fast import resolve_backend
    from mesa_ref.model import Transformer
    from mesa_ref.train import train

    job = Job.from_record(record, label)
    store = Store(store_root)
    done = store.get(job)
    if done is not None:
        return {"key": job.key, "label": label, "status": "cached", "loss": done.final_test_loss}
    store.prepare()
    work = store.work_dir(job.key)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint.npz"
    cost_path = work / "cost.json"
    cost = read_json(cost_path) if cost_path.exists() else {"cpu_seconds": 0.0, "wall_seconds": 0.0, "segments": 0}
    cost["segments"] += 1
    cost["codes"] = cost.get("codes", []) + [code_version()]   # the code of every segment (a resume may use newer)
    if ckpt.exists():
        _, meta = load_checkpoint(ckpt)
        _emit(log, "resume", job, step=int(meta["step"]))
    else:
        _emit(log, "start", job)
    write_json(cost_path, cost)       # this attempt counts as a segment even if it dies before a checkpoint
    write_json(work / "owner.json", {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
    cpu0, wall0 = time.process_time(), time.perf_counter()
    base = dict(cost)

    def note_cost(step, metrics):
        c = {**base, "cpu_seconds": base["cpu_seconds"] + time.process_time() - cpu0,
             "wall_seconds": base["wall_seconds"] + time.perf_counter() - wall0, "step": step}
        write_json(cost_path, c)

    ops, xp = resolve_backend(job.backend)      # "fast" also keeps freed memory in the C heap (mesa_fast.train)
    with _limit_threads(threads, job.backend):
        res = train(Transformer(job.model, ops=ops), job.task, job.train, work, resume=True, progress=progress,
                    dtype=np.dtype(job.dtype), xp=xp, on_checkpoint=note_cost)
    params = {k: to_host(v) for k, v in res.params.items()}
    cost = {**base, "cpu_seconds": base["cpu_seconds"] + time.process_time() - cpu0,
            "wall_seconds": base["wall_seconds"] + time.perf_counter() - wall0, "steps": job.train.steps,
            "threads": threads, "host": socket.gethostname(), "cpu": _cpu_name(), "code": code_version(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    cost.pop("step", None)
    store.put(job, params, res.metrics, cost)
    shutil.rmtree(work, ignore_errors=True)
    loss = float(res.metrics["final_test_loss"])
    _emit(log, "finish", job, loss=loss, steps=job.train.steps, cpu_seconds=cost["cpu_seconds"])
    return {"key": job.key, "label": label, "status": "finished", "loss": loss, "cpu_seconds": cost["cpu_seconds"]}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------- many jobs
def unique_jobs(jobs) -> list[Job]:
    """Jobs in order, each key once (figures share jobs: the first label wins)."""
    seen = {}
    for j in jobs:
        seen.setdefault(j.key, j)
    return list(seen.values())


def run_jobs(jobs, store_root, *, scheduler: str | None = None, workers: int | None = None, train: bool = True,
             retrain: bool = False, threads: int = 1, log=print, progress: bool = True) -> dict:
    """Make sure every job has a result in the store; return {key: JobResult}.

    scheduler  address of an existing Dask scheduler (default: Dask's DASK_SCHEDULER_ADDRESS, else an
               embedded LocalCluster of ``workers`` single-threaded worker processes, default one per core)
    workers    0: run the jobs here, one after another, without Dask
    train      False: raise MissingResults listing the jobs without a stored result instead of training
    retrain    discard stored results (and checkpoints) of these jobs first"""
    jobs = unique_jobs(jobs)
    store = Store(store_root)
    if retrain:
        for j in jobs:
            store.discard(j)
    done = {j.key: store.get(j) for j in jobs if store.finished(j)}     # read (and checked) once
    pending = [j for j in jobs if j.key not in done]
    for j in jobs:
        if j.key in done and log is not None:
            log(format_event({"event": "cached", "label": j.label, "key": j.key,
                              "loss": done[j.key].final_test_loss}))
    if pending and not train:
        names = ", ".join(j.name() for j in pending)
        raise MissingResults(f"{len(pending)} job result(s) missing from {store.root}: {names}; "
                             "run with --train to train them")
    if pending:
        store.prepare()
        address = scheduler or _configured_scheduler()
        # training here is recorded, so a benchmark may pause it (mesa_lab/pause.py); through an outside
        # scheduler it runs elsewhere
        with registered(store.root) if address is None else contextlib.nullcontext():
            if workers == 0 and address is None:
                for i, j in enumerate(pending):
                    if log is not None:
                        log(f"[{i + 1}/{len(pending)}]")
                    run_job(j.record(), str(store.root), j.label, threads=threads, progress=progress, log=log)
            else:
                _run_on_dask(pending, store, address, workers, threads, log, progress)
    return {j.key: done[j.key] if j.key in done else store.get(j) for j in jobs}


def _configured_scheduler():
    try:
        import dask
        return dask.config.get("scheduler-address", None)
    except ImportError:  # pragma: no cover
        return None


def local_cluster(workers: int | None = None, **kw):
    """An embedded LocalCluster: ``workers`` (default: one per core) single-threaded worker processes whose BLAS
    libraries start with one thread."""
    import dask
    from distributed import LocalCluster
    n = workers or os.cpu_count() or 1
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # no worker time-to-live: a queue paused while a benchmark runs (mesa_lab/pause.py) keeps its workers
    with dask.config.set({"distributed.scheduler.worker-ttl": None}):
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                            env=env, **kw)


def _run_on_dask(pending, store, address, workers, threads, log, progress):
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise CLIError("running jobs on a cluster needs Dask's distributed package (pip install distributed); "
                       "--workers 0 runs them in this process") from None
    cluster = None
    try:
        if address:
            client = Client(address, timeout="30s")
        else:
            cluster = local_cluster(workers)
            client = Client(cluster)
    except OSError as e:
        if cluster is not None:
            cluster.close()
        raise CLIError(f"cannot reach the Dask scheduler {address!r}: {e}") from None
    bar = None
    try:
        if log is not None:
            n = len(client.scheduler_info(n_workers=-1).get("workers", {})) if address else (workers or os.cpu_count())
            log(f"Dask: {n} worker(s) at {client.scheduler.address}; dashboard {client.dashboard_link}")
            client.subscribe_topic(EVENT_TOPIC, lambda ev: log(format_event(ev[1])))
        futures = {client.submit(run_job, j.record(), str(store.root), j.label, threads=threads,
                                 key=f"mesa-job-{j.key}", pure=False, retries=0): j for j in pending}
        if progress:
            try:
                from tqdm import tqdm
                bar = tqdm(total=len(futures), desc="jobs", unit="job", dynamic_ncols=True)
            except ImportError:  # pragma: no cover
                bar = None
        for fut in as_completed(futures):
            j = futures[fut]
            if fut.status != "finished":
                exc = fut.exception()
                for other in futures:
                    other.cancel()
                raise JobFailed(f"job {j.name()} failed: {type(exc).__name__}: {exc}") from exc
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        client.close()
        if cluster is not None:
            cluster.close()


def cost_summary(results) -> dict:
    """Total CPU hours and steps of some job results, and the per-job breakdown."""
    rows = {r.key: {"cpu_hours": r.cost.get("cpu_seconds", 0.0) / 3600, "steps": r.cost.get("steps"),
                    "segments": r.cost.get("segments"), "cpu": r.cost.get("cpu"), "code": r.cost.get("code")}
            for r in results}
    return {"cpu_hours": sum(v["cpu_hours"] for v in rows.values()), "jobs": rows}
