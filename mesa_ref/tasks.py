"""The training tasks: what a batch is, how a task is named in a job's record, and what the baselines regress on.

Every task is a frozen dataclass with

    batch(rng, B, dtype) -> (x, y)     inputs and targets of one batch, drawn from ``rng``
    to_dict() -> dict                   {"name": <registry name>, **fields}: the task's part of a job's record
    baseline_inputs(x) -> (s, feats)    what the [A1]-[A5] solvers see (dynamics tasks only)

and ``task_from_dict(to_dict())`` rebuilds it, so a job can travel to another process as plain JSON.
Tags refer to docs/math.md; shapes: B batch, T time, n state size, m observation size, k history length.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearTask:
    """[T1] fully observed linear dynamics, as [T2] constructed tokens (B, T, 4n) or raw states (B, T, n);
    the target is s_{t+1} (B, T, n).  Baselines regress s_{t'} on s_{t'-1}."""
    n: int = 10
    T: int = 50
    sigma: float = 0.01
    tokens: str = "constructed"   # "constructed" | "raw"
    registry_name = "linear_dynamics"

    def batch(self, rng, batch: int, dtype=np.float32):
        from .data import linear_dynamics_batch
        return linear_dynamics_batch(rng, batch, T=self.T, n=self.n, sigma=self.sigma, tokens=self.tokens, dtype=dtype)

    def baseline_inputs(self, x):
        """(s (B, T, n), None): the states the solvers regress on."""
        x = np.asarray(x)
        s = x[..., self.n:2 * self.n] if self.tokens == "constructed" else x
        return np.ascontiguousarray(s), None

    def to_dict(self):
        return {"name": self.registry_name, **dataclasses.asdict(self)}


#: the name the trainer has always used for [T1]
DynamicsTask = LinearTask


@dataclass(frozen=True)
class PartialTask:
    """[T3] partially observed linear dynamics: tokens = the last k observations (B, T, k*m), target o_{t+1}.
    Baselines: ridge regression of o_{t'} on the history token of t'-1 (``feats`` = the tokens)."""
    n: int = 10
    m: int = 10
    k: int = 4
    T: int = 50
    sigma: float = 0.01
    obs_sigma: float = 0.0
    registry_name = "partially_observed"

    def batch(self, rng, batch: int, dtype=np.float32):
        from .data import partially_observed_batch
        return partially_observed_batch(rng, batch, T=self.T, n=self.n, m=self.m, k=self.k, sigma=self.sigma,
                                        obs_sigma=self.obs_sigma, dtype=dtype)

    def baseline_inputs(self, x):
        x = np.asarray(x)
        return np.ascontiguousarray(x[..., :self.m]), np.ascontiguousarray(x)

    def to_dict(self):
        return {"name": self.registry_name, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class NonlinearTask:
    """[T4] nonlinear dynamics s_{t+1} = W* phi(s_t) + eps with [T2] constructed tokens.  Baselines:
    ridge on the true features phi(s) (``feats``, an oracle the model does not have) and, under the
    name ``lsq_linear``, ridge on the raw states."""
    n: int = 10
    T: int = 50
    sigma: float = 0.01
    mlp_seed: int = 0
    registry_name = "nonlinear_dynamics"

    def batch(self, rng, batch: int, dtype=np.float32):
        from .data import mlp_params, nonlinear_batch
        A, Bm = mlp_params(self.mlp_seed, self.n)
        return nonlinear_batch(rng, batch, T=self.T, n=self.n, sigma=self.sigma, A=A, Bm=Bm, dtype=dtype)

    def baseline_inputs(self, x):
        from .data import mlp_features, mlp_params
        x = np.asarray(x)
        s = np.ascontiguousarray(x[..., self.n:2 * self.n])
        A, Bm = mlp_params(self.mlp_seed, self.n)
        return s, mlp_features(s, A, Bm)

    def to_dict(self):
        return {"name": self.registry_name, **dataclasses.asdict(self)}


TASKS = {cls.registry_name: cls for cls in (LinearTask, PartialTask, NonlinearTask)}


def register_task(cls):
    """Add a task class (with ``registry_name``, ``to_dict`` and a dataclass constructor) to the registry."""
    TASKS[cls.registry_name] = cls
    return cls


def task_from_dict(d: dict):
    """The task whose ``to_dict()`` is ``d``; ValueError for an unknown name or field."""
    if not isinstance(d, dict) or "name" not in d:
        raise ValueError(f"task: expected a dict with a 'name', got {d!r}")
    cls = TASKS.get(d["name"])
    if cls is None:
        raise ValueError(f"task: unknown task {d['name']!r} (known: {sorted(TASKS)})")
    fields = {k: v for k, v in d.items() if k != "name"}
    known = {f.name for f in dataclasses.fields(cls)}
    if set(fields) - known:
        raise ValueError(f"task {d['name']!r}: unknown fields {sorted(set(fields) - known)}")
    return cls(**fields)
