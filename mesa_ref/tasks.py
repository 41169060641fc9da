"""The training tasks: what a batch is, how a task is named in a job's record, and what the baselines regress on.

Every task is a frozen dataclass with

    batch(rng, B, dtype) -> (x, y)     inputs and targets of one batch, drawn from ``rng``
    to_dict() -> dict                   {"name": <registry name>, **fields}: the task's part of a job's record
    baseline_inputs(x) -> (s, feats)    what the [A1]-[A5] solvers see (dynamics tasks only)
    test_batch(rng, B, dtype) -> (x, y) optional: the trainer's fixed test set comes from here (held-out
                                        data) instead of ``batch`` (the language task's held-out text)

and ``task_from_dict(to_dict())`` rebuilds it, so a job can travel to another process as plain JSON.
Tags refer to docs/math.md; shapes: B batch, T time, n state size, m observation size, k history length.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .config import omit_defaults


class _Task:
    """What every task's record is: its registry name and its dataclass fields.  A field named in ``OPTIONAL``
    is left out of the record while it has its default there: a field added later then leaves every existing job's
    key (a hash of the record) as it was."""
    registry_name = ""
    OPTIONAL: dict = {}

    def to_dict(self):
        return {"name": self.registry_name, **omit_defaults(dataclasses.asdict(self), self.OPTIONAL)}


@dataclass(frozen=True)
class _DynamicsTask(_Task):
    """The fields the dynamics tasks [T1], [T3], [T4] share (each adds its own after these)."""
    n: int = 10                   # state size
    T: int = 50                   # sequence length
    sigma: float = 0.01           # transition noise


@dataclass(frozen=True)
class LinearTask(_DynamicsTask):
    """[T1] fully observed linear dynamics, as [T2] constructed tokens (B, T, 4n) or raw states (B, T, n);
    the target is s_{t+1} (B, T, n).  Baselines regress s_{t'} on s_{t'-1}."""
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


@dataclass(frozen=True)
class PartialTask(_DynamicsTask):
    """[T3] partially observed linear dynamics: tokens = the last k observations (B, T, k*m), target o_{t+1}.
    Baselines: ridge regression of o_{t'} on the history token of t'-1 (``feats`` = the tokens)."""
    m: int = 10
    k: int = 4
    obs_sigma: float = 0.0
    registry_name = "partially_observed"

    def batch(self, rng, batch: int, dtype=np.float32):
        from .data import partially_observed_batch
        return partially_observed_batch(rng, batch, T=self.T, n=self.n, m=self.m, k=self.k, sigma=self.sigma,
                                        obs_sigma=self.obs_sigma, dtype=dtype)

    def baseline_inputs(self, x):
        x = np.asarray(x)
        return np.ascontiguousarray(x[..., :self.m]), np.ascontiguousarray(x)


@dataclass(frozen=True)
class NonlinearTask(_DynamicsTask):
    """[T4] nonlinear dynamics s_{t+1} = W* phi(s_t) + eps, s_1 ~ U[-s1_range, s1_range]^n, as [T2] constructed
    tokens (B, T, 4n) or raw states (B, T, n).  Baselines: ridge on the true features phi(s) (``feats``, an oracle
    the model does not have) and, under the name ``lsq_linear``, ridge on the raw states."""
    mlp_seed: int = 0
    tokens: str = "constructed"   # "constructed" | "raw"
    s1_range: float = 1.0         # the first state's uniform range (the authors' [T4] runs: 0.25)
    registry_name = "nonlinear_dynamics"
    OPTIONAL = {"tokens": "constructed", "s1_range": 1.0}

    def __post_init__(self):
        if self.tokens not in ("constructed", "raw"):
            raise ValueError(f"tokens: expected 'constructed' or 'raw', got {self.tokens!r}")
        if not self.s1_range > 0:
            raise ValueError(f"s1_range: expected > 0, got {self.s1_range!r}")

    def batch(self, rng, batch: int, dtype=np.float32):
        from .data import mlp_params, nonlinear_batch
        A, Bm = mlp_params(self.mlp_seed, self.n)
        return nonlinear_batch(rng, batch, T=self.T, n=self.n, sigma=self.sigma, A=A, Bm=Bm, tokens=self.tokens,
                               s1_range=self.s1_range, dtype=dtype)

    def baseline_inputs(self, x):
        from .data import mlp_features, mlp_params
        x = np.asarray(x)
        s = np.ascontiguousarray(x[..., self.n:2 * self.n] if self.tokens == "constructed" else x)
        A, Bm = mlp_params(self.mlp_seed, self.n)
        return s, mlp_features(s, A, Bm)


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


@register_task
@dataclass(frozen=True)
class LanguageTask(_Task):
    """[T6] next-token prediction on windows of T tokens of a text, at character or byte level.

    The record names the corpus, not its tokens: ``source`` is ``"pydoc_data.topics"`` (the text that ships
    with Python) or a file's absolute path, and ``sha256`` is the hash of the text (filled in at
    construction when left empty), so a worker rebuilds the same ids from the record and a different text
    makes a different job.  The corpus is split once into a training part and the held-out last
    ``heldout_frac``; ``batch`` draws random windows from the part named by ``split`` and ``test_batch``
    from the held-out part (the trainer's test set, where the learning curves are measured).
    Both return (x, y) int64 ids (B, T) with y[:, t] the token after x[:, t]; ``dtype`` is ignored."""
    source: str = "pydoc_data.topics"
    sha256: str = ""
    level: str = "char"            # "char" | "byte"
    T: int = 256                   # context length (tokens per window)
    heldout_frac: float = 0.1
    split: str = "train"           # the part batch() draws from: "train" | "heldout"
    registry_name = "language_modelling"

    def __post_init__(self):
        import os
        from .runio import CLIError
        from .text import DEFAULT_SOURCE, LEVELS
        if self.level not in LEVELS:
            raise ValueError(f"level: expected one of {LEVELS}, got {self.level!r}")
        if self.split not in ("train", "heldout"):
            raise ValueError(f"split: expected 'train' or 'heldout', got {self.split!r}")
        if isinstance(self.T, bool) or not isinstance(self.T, int) or self.T < 1:
            raise ValueError(f"T: expected a positive int, got {self.T!r}")
        if not 0 < self.heldout_frac < 1:
            raise ValueError(f"heldout_frac: expected a number in (0, 1), got {self.heldout_frac!r}")
        if str(self.source) != DEFAULT_SOURCE:
            object.__setattr__(self, "source", os.path.abspath(str(self.source)))   # any worker's working directory
        from .text import load_corpus
        corpus = load_corpus(self.source, self.level, self.sha256 or None)    # checks the hash when given
        object.__setattr__(self, "sha256", corpus.sha256)
        object.__setattr__(self, "_corpus", corpus)          # the text this task was checked against (not a field)
        train, held = corpus.split(self.heldout_frac)
        if min(len(train), len(held)) < self.T + 1:
            need = int((self.T + 1) / min(self.heldout_frac, 1 - self.heldout_frac)) + 1
            raise CLIError(f"corpus {self.source!r}: {len(corpus.ids)} tokens is too short for context T = {self.T} "
                           f"with a {self.heldout_frac:.0%} held-out split (need at least {need})")

    def corpus(self):
        """The ``mesa_ref.text.Corpus`` whose hash was checked when this task was made."""
        return self._corpus

    @property
    def vocab_size(self) -> int:
        return self.corpus().V

    def split_ids(self):
        """(training ids, held-out ids): the contiguous split of the corpus."""
        return self.corpus().split(self.heldout_frac)

    def batch(self, rng, batch: int, dtype=None):
        from .text import LMTask
        train, held = self.split_ids()
        return LMTask(train if self.split == "train" else held, self.T, self.split).batch(rng, batch)

    def test_batch(self, rng, batch: int, dtype=None):
        from .text import LMTask
        return LMTask(self.split_ids()[1], self.T, "heldout").batch(rng, batch)

