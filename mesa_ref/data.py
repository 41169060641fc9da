"""The paper's tasks [T1]-[T5] (docs/math.md section 1) as seeded NumPy generators.

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858.

Shape glossary
    B  batch (number of sequences)        T  sequence length (model positions t = 1..T)
    n  hidden state dimension             m  observation dimension ([T3])
    k  observations per history token     h  hidden width of the [T4] MLP
    N  number of (x, y) examples ([T5])   P  prompt length ([T5])

Conventions
    * Every generator takes ``rng``: a ``numpy.random.Generator`` or an int seed, and is fully
      determined by it (never the global ``np.random`` state). Random draws happen in a fixed
      order, documented per generator, always in float64; the result is cast to ``dtype`` at the
      end, so a float32 batch is the float64 batch rounded.
    * Dynamics generators return ``states`` of shape (B, T+1, n) holding s_1..s_{T+1}: the model
      input at position t is ``states[:, t-1]`` (= s_t) and its target is ``states[:, t]``
      (= s_{t+1}), i.e. ``inputs = states[:, :T]`` and ``targets = states[:, 1:]``.
    * Bad arguments raise ``ValueError`` naming the argument.

Contents
    [T1] linear_dynamics, linear_dynamics_batch, haar_orthogonal
    [T2] constructed_tokens
    [T3] partially_observed, partially_observed_batch, history_tokens
    [T4] nonlinear_dynamics, nonlinear_batch, mlp_params, mlp_features
    [T5] fewshot_regression, fewshot_sequence, fewshot_read_positions, fewshot_batch
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ops._common import check_int, check_number
from .ops.activations import gelu_forward

__all__ = [
    "as_rng", "haar_orthogonal",
    "LinearDynamics", "linear_dynamics", "constructed_tokens", "linear_dynamics_batch",
    "PartiallyObserved", "partially_observed", "history_tokens", "partially_observed_batch",
    "NonlinearDynamics", "mlp_params", "mlp_features", "nonlinear_dynamics", "nonlinear_batch",
    "FewShot", "FewShotSequence", "fewshot_regression", "fewshot_read_positions",
    "fewshot_sequence", "fewshot_batch",
]

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def as_rng(rng) -> np.random.Generator:
    """Return ``rng`` if it is a ``numpy.random.Generator``, else ``np.random.default_rng(rng)``
    for an int seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng: expected a numpy.random.Generator or an int seed, got {type(rng).__name__}")


def _check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"dtype: expected float32 or float64, got {dtype!r}") from e
    if dt not in _DTYPES:
        raise ValueError(f"dtype: expected float32 or float64, got {dt}")
    return dt


def _check_dynamics(rng, batch, T, n, sigma, clip, dtype):
    """The arguments every dynamics generator shares, checked (ValueError naming the bad one) and normalised."""
    return (as_rng(rng), check_int("batch", batch), check_int("T", T), check_int("n", n),
            check_number("sigma", sigma, nonneg=True), _check_clip(clip), _check_dtype(dtype))


def _check_clip(clip):
    if clip is None:
        return None
    c = check_number("clip", clip, nonneg=True)
    if c == 0:
        raise ValueError("clip: expected a positive number or None, got 0")
    return c


def haar_orthogonal(rng, batch: int, n: int) -> np.ndarray:
    """[T1] ``batch`` independent Haar-distributed orthogonal n x n matrices, float64 (B, n, n).

    QR of a standard Gaussian matrix, with the columns of Q multiplied by sign(diag(R)) so the
    factorisation is unique and Q is exactly Haar (Mezzadri 2007). Determinants are +1 or -1
    with probability 1/2 each (like ``jax.random.orthogonal``, which the official code uses).
    Uses one draw of ``rng.standard_normal((batch, n, n))``.
    """
    rng = as_rng(rng)
    batch = check_int("batch", batch)
    n = check_int("n", n)
    G = rng.standard_normal((batch, n, n))                    # (B, n, n)
    Q, R = np.linalg.qr(G)                                    # (B, n, n), (B, n, n)
    d = np.sign(np.diagonal(R, axis1=-2, axis2=-1))           # (B, n)
    d[d == 0] = 1.0
    return Q * d[:, None, :]                                  # (B, n, n): column j times d_j


def _roll_dynamics(step, s1: np.ndarray, noise: np.ndarray, clip) -> np.ndarray:
    """s_{t+1} = clip(step(s_t) + noise_t); returns (B, T+1, n) with s_1 first."""
    B, T, n = noise.shape
    states = np.empty((B, T + 1, n))
    states[:, 0] = s1
    for t in range(T):                                        # loop over time only
        nxt = step(states[:, t]) + noise[:, t]                # (B, n)
        if clip is not None:
            nxt = np.clip(nxt, -clip, clip)
        states[:, t + 1] = nxt
    return states


# ----------------------------------------------------------------------------------------------
# [T1] fully observed linear dynamics and [T2] constructed tokens
# ----------------------------------------------------------------------------------------------

class _StateSequence:
    """Inputs and targets of a batch with ``states`` (B, T+1, n): the model sees s_1..s_T and predicts s_{t+1}."""

    @property
    def inputs(self) -> np.ndarray:
        """(B, T, n) s_1..s_T: the model's input states."""
        return self.states[:, :-1]

    @property
    def targets(self) -> np.ndarray:
        """(B, T, n) s_2..s_{T+1}: the target at position t is s_{t+1}."""
        return self.states[:, 1:]


@dataclass
class LinearDynamics(_StateSequence):
    """[T1] a batch of linear-dynamics sequences.

    states: (B, T+1, n)  s_1..s_{T+1}
    W:      (B, n, n)    W* (Haar-orthogonal), s_{t+1} = clip(W* s_t + eps_t)
    noise:  (B, T, n)    eps_1..eps_T (before clipping)
    """
    states: np.ndarray
    W: np.ndarray
    noise: np.ndarray


def linear_dynamics(rng, batch: int, T: int = 50, n: int = 10, sigma: float = 0.01,
                    clip: float | None = 10.0, *, dtype=np.float64) -> LinearDynamics:
    """[T1] W* Haar-orthogonal per sequence, s_1 ~ U[-1, 1]^n, s_{t+1} = W* s_t + eps_t,
    eps_t ~ N(0, sigma^2 I), every state clipped to [-clip, clip] (``clip=None``: no clipping).

    Official defaults (configs/config.py): n = 10, T = 50, sigma = 0.01, clip = 10, batch 256.
    Draw order: W* (``haar_orthogonal``), s_1 (uniform (B, n)), eps (normal (B, T, n)).

    Returns a ``LinearDynamics`` with states (B, T+1, n), W (B, n, n), noise (B, T, n).
    """
    rng, batch, T, n, sigma, clip, dtype = _check_dynamics(rng, batch, T, n, sigma, clip, dtype)

    W = haar_orthogonal(rng, batch, n)                          # (B, n, n)
    s1 = rng.uniform(-1.0, 1.0, size=(batch, n))                # (B, n)
    if clip is not None:
        s1 = np.clip(s1, -clip, clip)
    noise = sigma * rng.standard_normal((batch, T, n))          # (B, T, n)
    states = _roll_dynamics(lambda s: np.einsum("bij,bj->bi", W, s), s1, noise, clip)
    return LinearDynamics(states=states.astype(dtype), W=W.astype(dtype), noise=noise.astype(dtype))


def constructed_tokens(s: np.ndarray) -> np.ndarray:
    """[T2] e_t = (0, s_t, s_t, s_{t-1}) in R^{4n}, with s_0 = 0.

    s: (B, T, n) the states s_1..s_T  ->  (B, T, 4n), same dtype. The model's prediction of
    s_{t+1} is read from the first n output coordinates at position t (the token holds 0 there).
    """
    s = np.asarray(s)
    if s.ndim != 3 or s.dtype not in _DTYPES:
        raise ValueError(f"s: expected a float32/float64 array of shape (B, T, n), got "
                         f"{s.dtype} array of shape {s.shape}")
    B, T, n = s.shape
    e = np.zeros((B, T, 4 * n), dtype=s.dtype)                  # (B, T, 4n)
    e[:, :, n:2 * n] = s
    e[:, :, 2 * n:3 * n] = s
    e[:, 1:, 3 * n:] = s[:, :-1]                                # s_{t-1}; s_0 = 0
    return e


def _tokens_for(s: np.ndarray, tokens: str) -> np.ndarray:
    if tokens == "constructed":
        return constructed_tokens(s)
    if tokens == "raw":
        return s
    raise ValueError(f"tokens: expected 'constructed' or 'raw', got {tokens!r}")


def linear_dynamics_batch(rng, batch: int, T: int = 50, n: int = 10, sigma: float = 0.01,
                          clip: float | None = 10.0, *, tokens: str = "constructed",
                          dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """[T1]+[T2] a training batch: (inputs, targets).

    inputs:  (B, T, 4n) constructed tokens (``tokens="constructed"``) or (B, T, n) raw states
             (``tokens="raw"``);  targets: (B, T, n) = s_2..s_{T+1}.
    Same draws as ``linear_dynamics(rng, batch, T, n, sigma, clip)``.
    """
    d = linear_dynamics(rng, batch, T, n, sigma, clip, dtype=dtype)
    return _tokens_for(np.ascontiguousarray(d.inputs), tokens), np.ascontiguousarray(d.targets)


# ----------------------------------------------------------------------------------------------
# [T3] partially observed linear dynamics
# ----------------------------------------------------------------------------------------------

@dataclass
class PartiallyObserved:
    """[T3] a batch of partially observed linear-dynamics sequences.

    states: (B, T+1, n)  hidden s_1..s_{T+1} ([T1] dynamics)
    W:      (B, n, n)    W*
    C:      (B, m, n)    observation matrix, o_t = C s_t + obs_sigma * xi_t
    obs:    (B, T+1, m)  o_1..o_{T+1}
    tokens: (B, T, k*m)  token at position t = (o_t, o_{t-1}, ..., o_{t-k+1}), zeros before o_1
    """
    states: np.ndarray
    W: np.ndarray
    C: np.ndarray
    obs: np.ndarray
    tokens: np.ndarray

    @property
    def inputs(self) -> np.ndarray:
        """(B, T, k*m) the history tokens."""
        return self.tokens

    @property
    def targets(self) -> np.ndarray:
        """(B, T, m) o_2..o_{T+1}: the target at position t is the next observation o_{t+1}."""
        return self.obs[:, 1:]


def history_tokens(obs: np.ndarray, k: int) -> np.ndarray:
    """[T3] concatenate the last k observations: token_t = (o_t, o_{t-1}, ..., o_{t-k+1}).

    obs: (B, T, m) o_1..o_T  ->  (B, T, k*m), slot j (columns j*m:(j+1)*m) holds o_{t-j}, zero
    when t - j < 1. Most recent first, as the official partial-observation construction
    (which uses k = 8 slots of m = 10, embed_dim 80, and no zero slot).
    """
    obs = np.asarray(obs)
    if obs.ndim != 3 or obs.dtype not in _DTYPES:
        raise ValueError(f"obs: expected a float32/float64 array of shape (B, T, m), got "
                         f"{obs.dtype} array of shape {obs.shape}")
    k = check_int("k", k)
    B, T, m = obs.shape
    out = np.zeros((B, T, k * m), dtype=obs.dtype)              # (B, T, k*m)
    for j in range(min(k, T)):
        out[:, j:, j * m:(j + 1) * m] = obs[:, :T - j]          # o_{t-j}
    return out


def partially_observed(rng, batch: int, T: int = 50, n: int = 10, m: int | None = None,
                       k: int = 1, sigma: float = 0.01, obs_sigma: float = 0.0,
                       clip: float | None = 10.0, *, dtype=np.float64) -> PartiallyObserved:
    """[T3] o_t = C s_t + obs_sigma * xi_t with s_t from [T1] and C a fixed random (m, n) matrix
    per sequence with 0.5 N(0, 1) entries (official); tokens concatenate the last k observations.

    m defaults to n. Official defaults: obs_sigma = 0 (``noise_obs``), m = n = 10.
    Draw order: the [T1] draws (W*, s_1, eps), then C (normal (B, m, n)), then xi
    (normal (B, T+1, m)). The hidden states are the ones ``linear_dynamics`` gives for the same
    rng state.

    Returns a ``PartiallyObserved``: states (B, T+1, n), W (B, n, n), C (B, m, n),
    obs (B, T+1, m), tokens (B, T, k*m); inputs = tokens, targets = obs[:, 1:] (B, T, m).
    """
    rng = as_rng(rng)
    n = check_int("n", n)
    m = n if m is None else check_int("m", m)
    k = check_int("k", k)
    obs_sigma = check_number("obs_sigma", obs_sigma, nonneg=True)
    dtype = _check_dtype(dtype)
    lin = linear_dynamics(rng, batch, T, n, sigma, clip, dtype=np.float64)
    C = 0.5 * rng.standard_normal((lin.W.shape[0], m, n))               # (B, m, n)
    xi = rng.standard_normal((lin.W.shape[0], T + 1, m))                # (B, T+1, m)
    obs = np.einsum("bmn,btn->btm", C, lin.states) + obs_sigma * xi     # (B, T+1, m)
    tokens = history_tokens(obs[:, :-1], k)                             # (B, T, k*m)
    return PartiallyObserved(states=lin.states.astype(dtype), W=lin.W.astype(dtype),
                             C=C.astype(dtype), obs=obs.astype(dtype), tokens=tokens.astype(dtype))


def partially_observed_batch(rng, batch: int, T: int = 50, n: int = 10, m: int | None = None,
                             k: int = 1, sigma: float = 0.01, obs_sigma: float = 0.0,
                             clip: float | None = 10.0, *, dtype=np.float64):
    """[T3] a training batch: inputs (B, T, k*m) history tokens, targets (B, T, m) = o_{t+1}."""
    d = partially_observed(rng, batch, T, n, m, k, sigma, obs_sigma, clip, dtype=dtype)
    return d.tokens, np.ascontiguousarray(d.targets)


# ----------------------------------------------------------------------------------------------
# [T4] nonlinear dynamics
# ----------------------------------------------------------------------------------------------

@dataclass
class NonlinearDynamics(_StateSequence):
    """[T4] a batch of nonlinear-dynamics sequences.

    states: (B, T+1, n)  s_1..s_{T+1}, s_{t+1} = W* f(s_t)/||f(s_t)|| + eps_t
    W:      (B, n, n)    W* (Haar-orthogonal, per sequence)
    A:      (n, h)       first MLP matrix (fixed for the whole data set)
    Bm:     (h, n)       second MLP matrix (fixed for the whole data set)
    noise:  (B, T, n)    eps_1..eps_T
    """
    states: np.ndarray
    W: np.ndarray
    A: np.ndarray
    Bm: np.ndarray
    noise: np.ndarray


def mlp_params(seed=0, n: int = 10, hidden: int | None = None, scale: float = 1.1,
               *, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """[T4] the fixed MLP of f(x) = gelu(x A) B: A (n, h), B (h, n), entries scale * N(0, 1).

    Fixed per data set, as in the official code (``data.A_mat = 1.1 * normal(PRNGKey(421),
    (n, 4n))``, ``data.B_mat = 1.1 * normal(PRNGKey(422), (4n, n))``): h defaults to 4n and
    scale to 1.1. ``seed`` (int or Generator) makes the pair reproducible; the official JAX keys
    cannot be reproduced in NumPy, so the default seed 0 simply names one fixed data set.
    """
    rng = as_rng(seed)
    n = check_int("n", n)
    hidden = 4 * n if hidden is None else check_int("hidden", hidden)
    scale = check_number("scale", scale, nonneg=True)
    dtype = _check_dtype(dtype)
    A = scale * rng.standard_normal((n, hidden))
    Bm = scale * rng.standard_normal((hidden, n))
    return A.astype(dtype), Bm.astype(dtype)


def mlp_features(s: np.ndarray, A: np.ndarray, Bm: np.ndarray, *, eps: float = 1e-16) -> np.ndarray:
    """[T4] phi(s) = f(s)/(||f(s)|| + eps), f(s) = gelu(s A) B (tanh-approximation gelu).

    s: (..., n), A: (n, h), Bm: (h, n) -> (..., n), in s's dtype. eps = 1e-16 as the official
    code. The [T4] step is s_{t+1} = W* phi(s_t) + eps_t, so phi(s) is the natural regression
    input for the least-squares baselines on [T4] (``feats=`` in mesa_ref.solvers).
    """
    s = np.asarray(s)
    if s.dtype not in _DTYPES:
        raise ValueError(f"s: expected float32 or float64, got {s.dtype}")
    A = np.asarray(A, dtype=s.dtype)
    Bm = np.asarray(Bm, dtype=s.dtype)
    if A.ndim != 2 or A.shape[0] != s.shape[-1]:
        raise ValueError(f"A: expected shape ({s.shape[-1]}, h), got {A.shape}")
    if Bm.ndim != 2 or Bm.shape != (A.shape[1], s.shape[-1]):
        raise ValueError(f"Bm: expected shape ({A.shape[1]}, {s.shape[-1]}), got {Bm.shape}")
    f = gelu_forward(s @ A)[0] @ Bm                                   # (..., n)
    return f / (np.linalg.norm(f, axis=-1, keepdims=True) + s.dtype.type(eps))


def nonlinear_dynamics(rng, batch: int, T: int = 50, n: int = 10, sigma: float = 0.01,
                       A: np.ndarray | None = None, Bm: np.ndarray | None = None,
                       mlp_seed=0, clip: float | None = None, s1_range: float = 1.0, *,
                       dtype=np.float64) -> NonlinearDynamics:
    """[T4] s_{t+1} = W* f(s_t)/||f(s_t)|| + eps_t, f(x) = gelu(x A) B (tanh gelu),
    W* Haar-orthogonal per sequence, s_1 ~ U[-s1_range, s1_range]^n (the paper's runs: 1; the authors' [T4]
    comparison: 0.25), eps_t ~ N(0, sigma^2 I).

    A (n, h) and Bm (h, n) are fixed for the data set (official): pass them, or leave them None
    to use ``mlp_params(mlp_seed, n)`` (h = 4n, entries 1.1 N(0,1)). No clipping by default
    (official; the normalised step keeps ||s|| about 1); ``clip`` applies as in [T1] if given.
    Draw order from ``rng``: W*, s_1, eps (as [T1]).

    Returns a ``NonlinearDynamics``: states (B, T+1, n), W (B, n, n), A, Bm, noise (B, T, n).
    """
    rng, batch, T, n, sigma, clip, dtype = _check_dynamics(rng, batch, T, n, sigma, clip, dtype)
    s1_range = check_number("s1_range", s1_range, nonneg=True)
    if not s1_range > 0:
        raise ValueError(f"s1_range: expected > 0, got {s1_range!r}")
    if (A is None) != (Bm is None):
        raise ValueError("A: give both A and Bm, or neither")
    if A is None:
        A, Bm = mlp_params(mlp_seed, n)
    A = np.asarray(A, dtype=np.float64)
    Bm = np.asarray(Bm, dtype=np.float64)

    W = haar_orthogonal(rng, batch, n)                                  # (B, n, n)
    s1 = rng.uniform(-s1_range, s1_range, size=(batch, n))              # (B, n)
    noise = sigma * rng.standard_normal((batch, T, n))                  # (B, T, n)
    step = lambda s: np.einsum("bij,bj->bi", W, mlp_features(s, A, Bm))  # noqa: E731
    states = _roll_dynamics(step, s1, noise, clip)
    return NonlinearDynamics(states=states.astype(dtype), W=W.astype(dtype), A=A.astype(dtype),
                             Bm=Bm.astype(dtype), noise=noise.astype(dtype))


def nonlinear_batch(rng, batch: int, T: int = 50, n: int = 10, sigma: float = 0.01,
                    A=None, Bm=None, mlp_seed=0, *, tokens: str = "constructed", s1_range: float = 1.0,
                    dtype=np.float64):
    """[T4]+[T2] a training batch: inputs (B, T, 4n) constructed or (B, T, n) raw, targets (B, T, n)."""
    d = nonlinear_dynamics(rng, batch, T, n, sigma, A, Bm, mlp_seed, s1_range=s1_range, dtype=dtype)
    return _tokens_for(np.ascontiguousarray(d.inputs), tokens), np.ascontiguousarray(d.targets)


# ----------------------------------------------------------------------------------------------
# [T5] few-shot in-context regression
# ----------------------------------------------------------------------------------------------

@dataclass
class FewShot:
    """[T5] a batch of in-context regression tasks.

    xs: (B, N, n)  x_1..x_N ~ U[-1, 1]^n
    ys: (B, N, n)  y_i = W x_i (y_i = W2 x_i for i >= switch in the two-task variant, 0-based i)
    W:  (B, n, n)  the task (Haar-orthogonal)
    W2: (B, n, n) or None  the second task (two-task variant)
    switch: int or None  0-based index of the first example drawn from W2 (N // 2)
    """
    xs: np.ndarray
    ys: np.ndarray
    W: np.ndarray
    W2: np.ndarray | None = None
    switch: int | None = None

    @property
    def seq(self) -> np.ndarray:
        """(B, 2N, n) the plain sequence x_1, y_1, x_2, y_2, ... (no EOS, no prompt)."""
        return fewshot_sequence(self.xs, self.ys).seq


def fewshot_regression(rng, batch: int, N: int = 25, n: int = 10, *, two_task: bool = False,
                       dtype=np.float64) -> FewShot:
    """[T5] y = W x with W Haar-orthogonal per sequence and x ~ U[-1, 1]^n.

    ``two_task=True``: a second task W2 is drawn and examples i >= N // 2 (0-based) use it.
    Draw order: W, then W2 (two-task only), then xs (uniform (B, N, n)).
    Returns a ``FewShot`` with xs, ys (B, N, n), W (and W2) (B, n, n), switch.
    """
    rng = as_rng(rng)
    batch = check_int("batch", batch)
    N = check_int("N", N)
    n = check_int("n", n)
    dtype = _check_dtype(dtype)
    W = haar_orthogonal(rng, batch, n)                                  # (B, n, n)
    W2 = haar_orthogonal(rng, batch, n) if two_task else None           # (B, n, n)
    xs = rng.uniform(-1.0, 1.0, size=(batch, N, n))                     # (B, N, n)
    ys = np.einsum("bij,bnj->bni", W, xs)                               # (B, N, n)
    switch = None
    if two_task:
        switch = N // 2
        ys[:, switch:] = np.einsum("bij,bnj->bni", W2, xs[:, switch:])
    return FewShot(xs=xs.astype(dtype), ys=ys.astype(dtype), W=W.astype(dtype),
                   W2=None if W2 is None else W2.astype(dtype), switch=switch)


@dataclass
class FewShotSequence:
    """[T5] a laid-out few-shot sequence (see ``fewshot_sequence``).

    seq:        (B, L, n)  L = P + N*(2 + eos)
    read_pos:   (N,) int   position of x_i: the model's output there is its prediction of y_i
    y_pos:      (N,) int   position of y_i (= read_pos + 1)
    eos_pos:    (N,) int   positions of the EOS tokens (empty when no EOS)
    prompt_pos: (P,) int   positions of the prompt tokens (0..P-1; empty when no prompt)
    """
    seq: np.ndarray
    read_pos: np.ndarray
    y_pos: np.ndarray
    eos_pos: np.ndarray
    prompt_pos: np.ndarray


def fewshot_read_positions(N: int, *, eos: bool = False, prompt_len: int = 0) -> np.ndarray:
    """[T5] (N,) positions (0-based) of x_1..x_N in the laid-out sequence: P + i*(2 + eos).

    The prediction of y_i is read from the model's output at the position of x_i.
    """
    N = check_int("N", N)
    return check_int("prompt_len", prompt_len, minimum=0) + np.arange(N) * (3 if eos else 2)


def fewshot_sequence(xs: np.ndarray, ys: np.ndarray, eos: np.ndarray | None = None,
                     prompt: np.ndarray | None = None) -> FewShotSequence:
    """[T5] lay out [prompt_1..prompt_P,] x_1, y_1, [eos,] x_2, y_2, [eos,] ... one token each.

    xs, ys: (B, N, n); eos: (n,) or None, the (learned) EOS vector put after every y_i;
    prompt: (P, n) or None, a (learned) prefix shared by the batch. eos and prompt are cast to
    xs's dtype. Returns a ``FewShotSequence`` (seq (B, P + N*(2 + [eos]), n) and the positions
    of the x's = read-out positions, y's, EOS tokens and prompt tokens). To back-propagate into
    eos/prompt, sum the sequence gradient over ``eos_pos`` / take it at ``prompt_pos``.
    """
    xs = np.asarray(xs)
    ys = np.asarray(ys)
    if xs.ndim != 3 or xs.dtype not in _DTYPES:
        raise ValueError(f"xs: expected a float32/float64 array of shape (B, N, n), got "
                         f"{xs.dtype} array of shape {xs.shape}")
    if ys.shape != xs.shape:
        raise ValueError(f"ys: expected shape {xs.shape} (same as xs), got {ys.shape}")
    B, N, n = xs.shape
    if eos is not None:
        eos = np.asarray(eos, dtype=xs.dtype)
        if eos.shape != (n,):
            raise ValueError(f"eos: expected shape ({n},), got {eos.shape}")
    P = 0
    if prompt is not None:
        prompt = np.asarray(prompt, dtype=xs.dtype)
        if prompt.ndim != 2 or prompt.shape[1] != n:
            raise ValueError(f"prompt: expected shape (P, {n}), got {prompt.shape}")
        P = prompt.shape[0]
    stride = 3 if eos is not None else 2
    L = P + N * stride
    seq = np.zeros((B, L, n), dtype=xs.dtype)                            # (B, L, n)
    read_pos = fewshot_read_positions(N, eos=eos is not None, prompt_len=P)   # (N,)
    seq[:, read_pos] = xs
    seq[:, read_pos + 1] = ys.astype(xs.dtype, copy=False)
    eos_pos = read_pos + 2 if eos is not None else np.zeros(0, dtype=read_pos.dtype)
    if eos is not None:
        seq[:, eos_pos] = eos
    prompt_pos = np.arange(P)
    if P:
        seq[:, :P] = prompt
    return FewShotSequence(seq=seq, read_pos=read_pos, y_pos=read_pos + 1, eos_pos=eos_pos,
                           prompt_pos=prompt_pos)


def fewshot_batch(rng, batch: int, N: int = 25, n: int = 10, *, two_task: bool = False,
                  dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """[T5] an autoregressive training batch, as the official ICL training: the plain sequence
    z = (x_1, y_1, ..., x_N, y_N) (B, 2N, n) gives inputs z[:, :-1] and targets z[:, 1:]
    (both (B, 2N-1, n)); the in-context predictions of y_i sit at inputs positions 2i
    (``fewshot_read_positions(N)``), the other positions ask for the unpredictable next x.
    """
    d = fewshot_regression(rng, batch, N, n, two_task=two_task, dtype=dtype)
    z = d.seq
    return np.ascontiguousarray(z[:, :-1]), np.ascontiguousarray(z[:, 1:])
