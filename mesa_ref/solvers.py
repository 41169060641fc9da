"""The hypothesised mesa-optimisers [A1]-[A5] (docs/math.md section 4) as batched NumPy baselines.

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858.

Shape glossary
    B batch, T time (positions t = 1..T), n target dimension, p input (feature) dimension
    (p = n unless ``feats`` is given), K iterations.

In-context data at position t ([T1]): inputs x_{t'} = s_{t'-1}, targets y_{t'} = s_{t'} for
t' <= t (s_0 = 0), query q_t = s_t; every solver returns the per-position predictions
W_t q_t of s_{t+1}, shape (B, T, n). ``s`` is the model's input states s_1..s_T (B, T, n), so
predictions line up with ``targets = s_2..s_{T+1}``.

``feats=`` (B, T, p), optional: regress on features instead of states, x_{t'} = f_{t'-1},
q_t = f_t (f_0 = 0), targets still y_{t'} = s_{t'}. Use ``data.mlp_features`` for [T4] and
``data.history_tokens`` for [T3] (with ``s`` = the observations).

Everything is vectorised over (B, T); loops run only over solver iterations. float32 in gives
float32 out. Note: the official least-squares baseline (auxiliary_models.py) fits W_t on the
pairs t' <= t-1 only (``seq_data[:token]``) while its GD baseline uses t' <= t; here every solver
uses t' <= t, the data the model itself sees at position t (docs/math.md section 4).

Contents
    context_stats, curvature                             sufficient statistics
    per_step_loss, mean_loss, line_search, Tuned         evaluation and tuning
    [A1] gd_one_step, tune_eta
    [A2] gd_k_steps, preconditioned_gd
    [A3] ridge, ridge_weights, tune_lam
    [A1]/[A3] on the few-shot task [T5]: fewshot_gd, fewshot_ridge
    [A4] neumann_inverse, newton_schulz_inverse, richardson_inverse, chebyshev_inverse,
         chebyshev_params, fit_inverse_params, InverseFit
    [A5] revalg_features, revalg_predict, revalg_coeffs_from_weights, revalg_fit
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from .ops._common import check_float_array, check_int, check_number, check_same_dtype
from .optim import AdamW

__all__ = [
    "context_stats", "curvature", "per_step_loss", "mean_loss", "Tuned", "line_search",
    "ETA_GRID", "LAM_GRID",
    "gd_one_step", "tune_eta", "gd_k_steps", "preconditioned_gd",
    "ridge", "ridge_weights", "tune_lam", "fewshot_gd", "fewshot_ridge",
    "neumann_inverse", "newton_schulz_inverse", "richardson_inverse", "chebyshev_inverse",
    "chebyshev_params", "InverseFit", "fit_inverse_params",
    "revalg_features", "revalg_predict", "revalg_coeffs_from_weights", "revalg_fit",
]

#: [A1] default line-search grid for eta: 41 points, 10 per decade, 1e-4..1.
ETA_GRID = np.logspace(-4, 0, 41)
#: [A3] default line-search grid for lam: 29 points, 4 per decade, 1e-6..10 (contains 1e-3).
LAM_GRID = np.logspace(-6, 1, 29)


# ----------------------------------------------------------------------------------------------
# validation and sufficient statistics
# ----------------------------------------------------------------------------------------------

def _check_s(s, feats=None):
    check_float_array("s", s, ndim=3)
    if feats is not None:
        check_float_array("feats", feats, ndim=3)
        check_same_dtype(s=s, feats=feats)
        if feats.shape[:2] != s.shape[:2]:
            raise ValueError(f"feats: expected leading shape (B, T) = {s.shape[:2]}, got {feats.shape}")
    return s.shape


def context_stats(s: np.ndarray, feats: np.ndarray | None = None):
    """In-context sufficient statistics at every position (docs/math.md section 4).

    s: (B, T, n) states s_1..s_T; feats: (B, T, p) or None (then f = s).
    Returns (YX, XX, q):
        YX: (B, T, n, p)  sum_{t'<=t} y_{t'} x_{t'}^T,  y_{t'} = s_{t'}, x_{t'} = f_{t'-1} (f_0 = 0)
        XX: (B, T, p, p)  sum_{t'<=t} x_{t'} x_{t'}^T
        q:  (B, T, p)     the query f_t
    """
    _check_s(s, feats)
    f = s if feats is None else feats
    x = np.zeros_like(f)                                              # (B, T, p)
    x[:, 1:] = f[:, :-1]                                              # x_t = f_{t-1}
    YX = np.cumsum(s[..., :, None] * x[..., None, :], axis=1)         # (B, T, n, p)
    XX = np.cumsum(x[..., :, None] * x[..., None, :], axis=1)         # (B, T, p, p)
    return YX, XX, f


def curvature(s: np.ndarray, lam: float, feats: np.ndarray | None = None) -> np.ndarray:
    """[A3]/[A4] A_t = X_t X_t^T + lam I = sum_{t'<=t} x_{t'} x_{t'}^T + lam I, (B, T, p, p)."""
    lam = check_number("lam", lam, nonneg=True)
    _, XX, _ = context_stats(s, feats)
    return XX + lam * np.eye(XX.shape[-1], dtype=XX.dtype)


def _apply(M: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Batched matrix-vector product: (..., a, b) x (..., b) -> (..., a)."""
    return np.einsum("...ij,...j->...i", M, v)


# ----------------------------------------------------------------------------------------------
# evaluation and line search
# ----------------------------------------------------------------------------------------------

def per_step_loss(pred: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-position loss (official convention): sum over batch and dims of (pred - target)^2 / (2B).

    pred, targets: (B, T, n) -> (T,) float64. Its mean over t is ``mean_loss`` = L of docs/math.md
    section 1, sum / (2 B T).
    """
    check_float_array("pred", pred, ndim=3)
    check_float_array("targets", targets, ndim=3)
    if pred.shape != targets.shape:
        raise ValueError(f"targets: expected shape {pred.shape} (same as pred), got {targets.shape}")
    err = np.asarray(pred, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    return np.sum(err * err, axis=(0, 2)) / (2.0 * pred.shape[0])


def mean_loss(pred: np.ndarray, targets: np.ndarray) -> float:
    """L = 1/(2 B T) sum_{b,t} ||pred - target||^2 (docs/math.md section 1, official ``_compute_loss``)."""
    return float(np.mean(per_step_loss(pred, targets)))


class Tuned(NamedTuple):
    """Result of a line search: the chosen value, the grid and the mean loss at every grid point."""
    value: float
    grid: np.ndarray     # (G,)
    losses: np.ndarray   # (G,) mean_loss at each grid value


def line_search(predict: Callable[[float], np.ndarray], targets: np.ndarray, grid) -> Tuned:
    """Evaluate ``mean_loss(predict(v), targets)`` on every grid value; return the minimiser
    (the first one on ties) with all losses. Non-finite losses count as +inf."""
    grid = np.asarray(grid, dtype=np.float64).ravel()
    if grid.size == 0:
        raise ValueError("grid: expected at least one value")
    losses = np.empty(grid.size)
    for i, v in enumerate(grid):
        pred = predict(float(v))
        losses[i] = mean_loss(pred, targets) if np.all(np.isfinite(pred)) else np.inf
    return Tuned(value=float(grid[int(np.argmin(losses))]), grid=grid, losses=losses)


# ----------------------------------------------------------------------------------------------
# [A1] one step of gradient descent
# ----------------------------------------------------------------------------------------------

def gd_one_step(s: np.ndarray, eta: float, feats: np.ndarray | None = None) -> np.ndarray:
    """[A1] One GD step from W = 0 on L_t(W) = 1/2 sum_{t'<=t} ||y_{t'} - W x_{t'}||^2:
    W_t = eta sum_{t'<=t} y_{t'} x_{t'}^T, prediction W_t q_t.

    s: (B, T, n), eta: scalar, feats: (B, T, p) or None -> (B, T, n).
    A single linear-attention layer on [T2] tokens computes exactly this (tests/model/test_solvers.py).
    """
    eta = check_number("eta", eta)
    YX, _, q = context_stats(s, feats)
    return eta * _apply(YX, q)                                        # (B, T, n)


def tune_eta(s: np.ndarray, targets: np.ndarray, grid=None, feats: np.ndarray | None = None) -> Tuned:
    """[A1] line search for eta minimising ``mean_loss(gd_one_step(s, eta), targets)``.

    Default grid ``ETA_GRID`` = logspace(-4, 0, 41) (the official code leaves the range open;
    on [T1] defaults the minimiser is about 0.03). Tune on held-out sequences (official: one batch
    of 512). The prediction is linear in eta, so it is computed once.
    """
    base = gd_one_step(s, 1.0, feats)                                 # (B, T, n)
    return line_search(lambda eta: eta * base, targets, ETA_GRID if grid is None else grid)


# ----------------------------------------------------------------------------------------------
# [A2] K steps of (preconditioned) gradient descent
# ----------------------------------------------------------------------------------------------

def gd_k_steps(s: np.ndarray, eta: float, K: int, lam: float = 0.0, H: np.ndarray | None = None,
               feats: np.ndarray | None = None) -> np.ndarray:
    """[A2] K steps of (preconditioned) GD from W = 0 on
    L_t(W) = 1/2 sum_{t'<=t} ||y_{t'} - W x_{t'}||^2 + lam/2 ||W||_F^2, at every t:

        W <- W - eta (W A_t - YX_t) H_t,   A_t = XX_t + lam I,   H_t = I if H is None.

    s: (B, T, n); H: (B, T, p, p) or None (e.g. from an [A4] inverse approximation of A_t);
    returns the predictions W_t^{(K)} q_t, (B, T, n). K = 1 gives ``gd_one_step`` (H = None) or
    ``preconditioned_gd`` (H given). Converges to the minimiser of L_t (``ridge(s, lam)`` for
    lam > 0) when A_t is nonsingular and 0 < eta < 2/lambda_max(A_t H_t).
    """
    eta = check_number("eta", eta)
    K = check_int("K", K, minimum=0)
    lam = check_number("lam", lam, nonneg=True)
    YX, XX, q = context_stats(s, feats)
    A = XX + lam * np.eye(XX.shape[-1], dtype=XX.dtype)               # (B, T, p, p)
    if H is not None:
        check_float_array("H", H, ndim=4)
        check_same_dtype(s=s, H=H)
        if H.shape != A.shape:
            raise ValueError(f"H: expected shape {A.shape}, got {H.shape}")
    W = np.zeros_like(YX)                                             # (B, T, n, p)
    for _ in range(K):
        G = W @ A - YX                                                # gradient (B, T, n, p)
        W = W - eta * (G if H is None else G @ H)
    return _apply(W, q)


def preconditioned_gd(s: np.ndarray, H: np.ndarray, eta: float = 1.0,
                      feats: np.ndarray | None = None) -> np.ndarray:
    """[A2] W_t = eta (sum_{t'<=t} y_{t'} x_{t'}^T) H_t, prediction W_t q_t.

    H: (B, T, p, p), e.g. an [A4] approximation of (X_t X_t^T + lam I)^{-1}; with the exact
    inverse and eta = 1 this is ``ridge``. Returns (B, T, n).
    """
    eta = check_number("eta", eta)
    YX, _, q = context_stats(s, feats)
    check_float_array("H", H, ndim=4)
    check_same_dtype(s=s, H=H)
    if H.shape != YX.shape[:2] + (q.shape[-1], q.shape[-1]):
        raise ValueError(f"H: expected shape {YX.shape[:2] + (q.shape[-1], q.shape[-1])}, got {H.shape}")
    return eta * _apply(YX, _apply(H, q))


# ----------------------------------------------------------------------------------------------
# [A3] online ridge regression
# ----------------------------------------------------------------------------------------------

def ridge(s: np.ndarray, lam: float, feats: np.ndarray | None = None) -> np.ndarray:
    """[A3] W_t = Y_t X_t^T (X_t X_t^T + lam I)^{-1}, prediction W_t q_t, at every t.

    Solves (X_t X_t^T + lam I) z_t = q_t (batched ``np.linalg.solve`` over (B, T)), then
    returns YX_t z_t: (B, T, n). lam > 0 (official 1e-3).
    """
    lam = check_number("lam", lam, positive=True)
    YX, XX, q = context_stats(s, feats)
    A = XX + lam * np.eye(XX.shape[-1], dtype=XX.dtype)               # (B, T, p, p)
    z = np.linalg.solve(A, q[..., None])[..., 0]                      # (B, T, p)
    return _apply(YX, z)


def ridge_weights(s: np.ndarray, lam: float, feats: np.ndarray | None = None) -> np.ndarray:
    """[A3] the ridge weights W_t = YX_t (XX_t + lam I)^{-1}, (B, T, n, p) (A_t symmetric, so
    W_t^T = solve(A_t, YX_t^T))."""
    lam = check_number("lam", lam, positive=True)
    YX, XX, _ = context_stats(s, feats)
    A = XX + lam * np.eye(XX.shape[-1], dtype=XX.dtype)
    return np.swapaxes(np.linalg.solve(A, np.swapaxes(YX, -1, -2)), -1, -2)


def tune_lam(s: np.ndarray, targets: np.ndarray, grid=None, feats: np.ndarray | None = None) -> Tuned:
    """[A3] line search for lam minimising ``mean_loss(ridge(s, lam), targets)``.

    Default grid ``LAM_GRID`` = logspace(-6, 1, 29), 4 points per decade around the official
    1e-3. Tune on held-out sequences (official: one batch of 512).
    """
    return line_search(lambda lam: ridge(s, lam, feats), targets, LAM_GRID if grid is None else grid)


def _fewshot_stats(xs, ys):
    """Exclusive in-context sums for [T5]: YX_i = sum_{j<i} y_j x_j^T (B, N, n, p),
    XX_i = sum_{j<i} x_j x_j^T (B, N, p, p)."""
    check_float_array("xs", xs, ndim=3)
    check_float_array("ys", ys, ndim=3)
    check_same_dtype(xs=xs, ys=ys)
    if ys.shape[:2] != xs.shape[:2]:
        raise ValueError(f"ys: expected leading shape (B, N) = {xs.shape[:2]}, got {ys.shape}")
    yx = ys[..., :, None] * xs[..., None, :]                          # (B, N, n, p)
    xx = xs[..., :, None] * xs[..., None, :]                          # (B, N, p, p)
    return np.cumsum(yx, axis=1) - yx, np.cumsum(xx, axis=1) - xx


def fewshot_gd(xs: np.ndarray, ys: np.ndarray, eta: float) -> np.ndarray:
    """[A1] on [T5]: W_i = eta sum_{j<i} y_j x_j^T, prediction of y_i = W_i x_i.

    xs: (B, N, p), ys: (B, N, n) -> (B, N, n); the first prediction is 0 (no examples yet).
    """
    eta = check_number("eta", eta)
    YX, _ = _fewshot_stats(xs, ys)
    return eta * _apply(YX, xs)


def fewshot_ridge(xs: np.ndarray, ys: np.ndarray, lam: float) -> np.ndarray:
    """[A3] on [T5]: W_i = sum_{j<i} y_j x_j^T (sum_{j<i} x_j x_j^T + lam I)^{-1}, prediction
    of y_i = W_i x_i, i.e. ridge regression on the examples before x_i (what the model has seen
    when it reads out at x_i's position).

    xs: (B, N, p), ys: (B, N, n) -> (B, N, n); lam > 0.
    """
    lam = check_number("lam", lam, positive=True)
    YX, XX = _fewshot_stats(xs, ys)
    A = XX + lam * np.eye(XX.shape[-1], dtype=XX.dtype)
    return _apply(YX, np.linalg.solve(A, xs[..., None])[..., 0])


# ----------------------------------------------------------------------------------------------
# [A4] inverse approximations of A_t = X_t X_t^T + lam I
# ----------------------------------------------------------------------------------------------

def _check_square(A):
    check_float_array("A", A)
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A: expected a (..., p, p) array, got shape {A.shape}")
    return np.eye(A.shape[-1], dtype=A.dtype)


def neumann_inverse(A: np.ndarray, K: int, a: float = 70.0) -> np.ndarray:
    """[A4] truncated Neumann series sum_{k=0}^{K} (I - A/a)^k / a  ~  A^{-1}.

    A: (..., p, p) symmetric positive definite, batched over the leading axes. Converges as K
    grows when the spectrum of A lies in (0, 2a); a is a norm bound (official scalar 70 with
    K = 6). Returns (..., p, p).
    """
    eye = _check_square(A)
    K = check_int("K", K, minimum=0)
    a = check_number("a", a, positive=True)
    R = eye - A / a                                                   # (..., p, p)
    term = np.broadcast_to(eye, A.shape).copy()
    total = term.copy()
    for _ in range(K):
        term = term @ R
        total = total + term
    return total / a


def newton_schulz_inverse(A: np.ndarray, K: int) -> np.ndarray:
    """[A4] Newton–Schulz iteration X <- X (2I - A X), K steps from X_0 = I / tr(A).

    A: (..., p, p) symmetric positive definite -> (..., p, p). Converges quadratically once
    ||I - A X|| < 1, which X_0 = I/tr(A) guarantees for SPD A.
    """
    eye = _check_square(A)
    K = check_int("K", K, minimum=0)
    tr = np.trace(A, axis1=-2, axis2=-1)[..., None, None]              # (..., 1, 1)
    X = eye / tr                                                       # (..., p, p)
    for _ in range(K):
        X = X @ (2 * eye - A @ X)
    return X


def _scale_of(A: np.ndarray, scale) -> np.ndarray:
    """(..., 1, 1) the normaliser c: ||A||_F per matrix (``"fro"``, official) or a constant."""
    if isinstance(scale, str):
        if scale != "fro":
            raise ValueError(f"scale: expected 'fro' or a positive number, got {scale!r}")
        return np.linalg.norm(A, axis=(-2, -1))[..., None, None]
    c = check_number("scale", scale, positive=True)
    return np.full(A.shape[:-2] + (1, 1), c, dtype=A.dtype)


def _momentum_iteration(A, alphas, betas, scale):
    """X_{k+1} = X_k + alpha_k (I - A' X_k) + beta_k (X_k - X_{k-1}), X_0 = X_{-1} = 0, on
    A' = A / c; returns X_K / c ~ A^{-1}."""
    eye = _check_square(A)
    c = _scale_of(A, scale)
    An = A / c
    X_prev = np.zeros_like(A)
    X = np.zeros_like(A)
    for a_k, b_k in zip(alphas.tolist(), betas.tolist()):       # Python floats keep A's dtype
        X_new = X + a_k * (eye - An @ X) + b_k * (X - X_prev)
        X_prev, X = X, X_new
    return X / c


def _check_params(name, v, K=None):
    v = np.asarray(v, dtype=np.float64).ravel()
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name}: contains non-finite values")
    if K is not None and v.size != K:
        raise ValueError(f"{name}: expected {K} values, got {v.size}")
    return v


def richardson_inverse(A: np.ndarray, alphas, *, scale="fro") -> np.ndarray:
    """[A4] Richardson iteration for A X = I with step sizes alpha_k (K = len(alphas) steps):

        X_{k+1} = X_k + alpha_k (I - A' X_k),   X_0 = 0,   A' = A / c,   returns X_K / c.

    c = ||A||_F per matrix (``scale="fro"``, the official normalisation, so the spectrum of A'
    lies in (0, 1]) or a given constant. With alpha_k = 1 and scale = a this is the Neumann
    series with K - 1 terms: ``neumann_inverse(A, K - 1, a)``. Step sizes: ``fit_inverse_params``.
    A: (..., p, p) -> (..., p, p).
    """
    alphas = _check_params("alphas", alphas)
    return _momentum_iteration(A, alphas, np.zeros_like(alphas), scale)


def chebyshev_inverse(A: np.ndarray, alphas, betas, *, scale="fro") -> np.ndarray:
    """[A4] Chebyshev-type (momentum) iteration for A X = I, K = len(alphas) steps:

        X_{k+1} = X_k + alpha_k (I - A' X_k) + beta_k (X_k - X_{k-1}),   X_0 = X_{-1} = 0,

    A' = A / c as in ``richardson_inverse``; returns X_K / c. ``chebyshev_params`` gives the
    classical parameters for a spectrum in [lmin, lmax]; ``fit_inverse_params`` learns them.
    A: (..., p, p) -> (..., p, p).
    """
    alphas = _check_params("alphas", alphas)
    betas = _check_params("betas", betas, alphas.size)
    return _momentum_iteration(A, alphas, betas, scale)


def chebyshev_params(K: int, lmin: float, lmax: float) -> tuple[np.ndarray, np.ndarray]:
    """[A4] classical Chebyshev semi-iteration parameters for a spectrum in [lmin, lmax].

    The residual I - A X_K is then T_K((d - A)/c) / T_K(d/c), d = (lmax + lmin)/2,
    c = (lmax - lmin)/2, the polynomial of smallest max-norm on [lmin, lmax] with value 1 at 0.
    alpha_0 = 1/d, beta_0 = 0; for k >= 1, rho_{k+1} = 1 / (1 - rho_k / (4 sigma^2)) with
    sigma = d/c, rho_1 = 2, alpha_k = rho_{k+1}/d, beta_k = rho_{k+1} - 1. Returns (alphas, betas), (K,) each.
    """
    K = check_int("K", K, minimum=0)
    lmin = check_number("lmin", lmin, positive=True)
    lmax = check_number("lmax", lmax, positive=True)
    if lmax <= lmin:
        raise ValueError(f"lmax: expected lmax > lmin = {lmin}, got {lmax}")
    d, c = (lmax + lmin) / 2, (lmax - lmin) / 2
    sigma = d / c
    alphas, betas = np.zeros(K), np.zeros(K)
    rho = 2.0                                                          # rho_1
    for k in range(K):
        if k == 0:
            alphas[0], betas[0] = 1.0 / d, 0.0
            continue
        rho = 1.0 / (1.0 - rho / (4 * sigma * sigma))                  # rho_{k+1}
        alphas[k], betas[k] = rho / d, rho - 1.0
    return alphas, betas


class InverseFit(NamedTuple):
    """Result of ``fit_inverse_params``: the fitted step sizes and the training losses."""
    alphas: np.ndarray    # (K,)
    betas: np.ndarray     # (K,) zeros for Richardson
    loss_init: float      # mean_loss of preconditioned_gd with the initial parameters
    loss: float           # ... with the fitted parameters
    history: np.ndarray   # (steps + 1,) loss per optimiser step


def _poly_iteration(alphas, betas):
    """The [A4] iteration written on polynomials: X_k = x_k(A') with x_k a polynomial of degree
    k - 1, stored as its coefficient vector (K,) (index j: coefficient of A'^j). The recurrence
    x_{k+1}(mu) = x_k + a_k (1 - mu x_k) + b_k (x_k - x_{k-1}), x_0 = x_{-1} = 0, becomes
    chi_{k+1} = chi_k + a_k (e_0 - shift(chi_k)) + b_k (chi_k - chi_{k-1}), shift = times mu.
    Returns [chi_0, ..., chi_K]."""
    K = len(alphas)
    e0 = np.zeros(K)
    e0[0] = 1.0
    chis = [np.zeros(K)]
    prev = np.zeros(K)
    for a_k, b_k in zip(alphas, betas):
        x = chis[-1]
        chis.append(x + a_k * (e0 - _shift(x)) + b_k * (x - prev))
        prev = x
    return chis


def _shift(x):
    """Multiply a coefficient vector by mu (degree + 1; the top coefficient is never needed)."""
    out = np.zeros_like(x)
    out[1:] = x[:-1]
    return out


def _shift_T(g):
    """Adjoint of ``_shift``."""
    out = np.zeros_like(g)
    out[:-1] = g[1:]
    return out


def _poly_iteration_backward(chis, alphas, betas, gK):
    """Reverse mode of ``_poly_iteration``: given dL/dchi_K (K,), return (dL/dalphas, dL/dbetas).

    chi_{k+1} = (1 + b_k) chi_k - a_k shift(chi_k) - b_k chi_{k-1} + a_k e_0, so
    dL/da_k = g_{k+1} . (e_0 - shift(chi_k)),  dL/db_k = g_{k+1} . (chi_k - chi_{k-1}),
    g_k += (1 + b_k) g_{k+1} - a_k shift^T(g_{k+1}),  g_{k-1} -= b_k g_{k+1}.
    """
    K = len(alphas)
    e0 = np.zeros(K)
    e0[0] = 1.0
    ga, gb = np.zeros(K), np.zeros(K)
    g_next, g_cur = gK, np.zeros(K)              # adjoints of chi_{k+1} and chi_k
    for k in range(K - 1, -1, -1):
        xk = chis[k]
        xkm1 = chis[k - 1] if k >= 1 else np.zeros(K)
        ga[k] = g_next @ (e0 - _shift(xk))
        gb[k] = g_next @ (xk - xkm1)
        g_k = g_cur + (1 + betas[k]) * g_next - alphas[k] * _shift_T(g_next)
        g_km1 = -betas[k] * g_next
        g_next, g_cur = g_k, g_km1
    return ga, gb


def fit_inverse_params(s: np.ndarray, targets: np.ndarray, K: int, method: str = "chebyshev",
                       lam: float = 1e-3, *, scale="fro", feats: np.ndarray | None = None,
                       init=None, steps: int = 2000, lr: float = 0.05) -> InverseFit:
    """[A4] learn Richardson / Chebyshev step sizes by minimising the prediction loss

        mean_loss(preconditioned_gd(s, H_t(params), eta=1), targets),
        H_t = richardson_inverse / chebyshev_inverse(X_t X_t^T + lam I, params, scale=scale),

    as the official code does (it trains alphas/betas with Adam through JAX autodiff on the
    sequence predictions, init alphas = 1, betas = 0). Here the gradient is hand-written and
    exact: after K steps H_t = x_K(A'_t)/c_t with x_K a polynomial of degree K-1 whose
    coefficients chi depend on the parameters, so the prediction is sum_j chi_j P_j with the
    Krylov terms P_j = YX_t A'^j_t q_t / c_t (B, T, n), computed once. The loss is then a
    quadratic in chi (a K x K Gram matrix), and its gradient flows back through the K-step
    recurrence on chi (``_poly_iteration_backward``, checked by finite differences in the
    tests); each optimiser step costs O(K^2), independent of B and T.
    The optimiser is Adam (``steps`` steps, learning rate ``lr``, float64); the best parameters
    seen are returned.

    method: "richardson" (K alphas, betas = 0) or "chebyshev" (K alphas and K betas).
    init: (alphas,) or (alphas, betas); default alphas = 1, betas = 0 (the official init).
    Returns an ``InverseFit``.
    """
    if method not in ("richardson", "chebyshev"):
        raise ValueError(f"method: expected 'richardson' or 'chebyshev', got {method!r}")
    K = check_int("K", K, minimum=0)
    if K < 1:
        raise ValueError("K: expected at least one step")
    steps = check_int("steps", steps, minimum=0)
    lr = check_number("lr", lr, positive=True)
    lam = check_number("lam", lam, positive=True)
    YX, XX, q = context_stats(s, feats)
    check_float_array("targets", targets, ndim=3)
    if targets.shape != s.shape:
        raise ValueError(f"targets: expected shape {s.shape}, got {targets.shape}")
    YX, XX, q = (np.asarray(v, dtype=np.float64) for v in (YX, XX, q))
    tgt = np.asarray(targets, dtype=np.float64)
    B, T = s.shape[:2]

    A = XX + lam * np.eye(XX.shape[-1])                                # (B, T, p, p)
    c = _scale_of(A, scale)                                            # (B, T, 1, 1)
    An = A / c                                                         # A'
    v = q / c[..., 0]                                                  # (B, T, p): A'^0 q / c
    P = np.empty((K,) + tgt.shape)                                     # (K, B, T, n) Krylov terms
    for j in range(K):
        P[j] = _apply(YX, v)
        v = _apply(An, v)
    Pf = P.reshape(K, -1)
    gram = Pf @ Pf.T                                                   # (K, K)
    cross = Pf @ tgt.ravel()                                           # (K,)
    tt = float(tgt.ravel() @ tgt.ravel())
    norm = 2.0 * B * T

    def loss_and_grad(alphas, betas):
        chis = _poly_iteration(alphas, betas)
        chi = chis[-1]
        loss = (chi @ gram @ chi - 2 * cross @ chi + tt) / norm       # = mean_loss(sum_j chi_j P_j, tgt)
        gK = (2 * gram @ chi - 2 * cross) / norm                       # dL/dchi_K
        ga, gb = _poly_iteration_backward(chis, alphas, betas, gK)
        return float(loss), ga, gb

    if init is None:
        alphas, betas = np.ones(K), np.zeros(K)
    else:
        alphas = _check_params("init", init[0], K).copy()
        betas = _check_params("init", init[1], K).copy() if len(init) > 1 else np.zeros(K)
    if method == "richardson":
        betas = np.zeros(K)
    theta = np.concatenate([alphas, betas])
    opt = AdamW({"theta": theta})                                      # plain Adam, in place on theta
    history = np.empty(steps + 1)
    best_loss, best_theta = np.inf, theta.copy()
    for it in range(steps + 1):
        loss, ga, gb = loss_and_grad(theta[:K], theta[K:])
        history[it] = loss
        if loss < best_loss:
            best_loss, best_theta = loss, theta.copy()
        if it == steps or not np.isfinite(loss):
            break
        g = np.concatenate([ga, gb if method == "chebyshev" else np.zeros(K)])
        opt.update({"theta": theta}, {"theta": g}, lr)
    return InverseFit(alphas=best_theta[:K].copy(), betas=best_theta[K:].copy(),
                      loss_init=float(history[0]), loss=float(best_loss), history=history[:it + 1])


# ----------------------------------------------------------------------------------------------
# [A5] the reverse-engineered one-layer algorithm ("RevAlg")
# ----------------------------------------------------------------------------------------------

def revalg_features(s: np.ndarray) -> np.ndarray:
    """[A5] the 8 candidate terms of the one-layer algorithm, (B, T, 2, 2, 2, n).

    With u_0(t) = s_t, u_1(t) = s_{t-1} (s_0 = 0), entry [..., v, k, q, :] is
        F_{vkq,t} = sum_{t'<=t} u_v(t') (u_k(t') . u_q(t)) = S_{vk,t} u_q(t),
    S_{vk,t} = sum_{t'<=t} u_v(t') u_k(t')^T: the four cumulated outer-product sums s s^T,
    s s_prev^T, s_prev s^T, s_prev s_prev^T applied to s_t or s_{t-1}.
    v indexes the value, k the key and q the query side of a linear-attention head.
    """
    check_float_array("s", s, ndim=3)
    B, T, n = s.shape
    u = np.zeros((2, B, T, n), dtype=s.dtype)                         # u_0 = s_t, u_1 = s_{t-1}
    u[0] = s
    u[1][:, 1:] = s[:, :-1]
    mask = np.tril(np.ones((T, T), dtype=s.dtype))                    # [t, t'] = 1 if t' <= t
    F = np.empty((B, T, 2, 2, 2, n), dtype=s.dtype)
    for k in range(2):
        for q in range(2):
            scores = (u[q] @ np.swapaxes(u[k], 1, 2)) * mask          # (B, T, T): u_k(t') . u_q(t)
            for v in range(2):
                F[:, :, v, k, q] = scores @ u[v]                      # (B, T, n)
    return F


def revalg_predict(s: np.ndarray, coeffs) -> np.ndarray:
    """[A5] prediction sum_{v,k,q} C[v,k,q] S_{vk,t} u_q(t) (see ``revalg_features``).

    s: (B, T, n); coeffs C: (2, 2, 2) (or 8 values, flattened in that order) -> (B, T, n).
    One GD step with rate eta ([A1]) is C[0, 1, 0] = eta, all others 0.
    """
    F = revalg_features(s)
    C = np.asarray(coeffs, dtype=np.float64).reshape(2, 2, 2)
    return np.einsum("btvkqi,vkq->bti", F, C.astype(s.dtype))


# token slots of e_t = (0, s_t, s_t, s_{t-1}): which u each slot holds (None: the zero slot)
_SLOT_U = (None, 0, 0, 1)


def revalg_coeffs_from_weights(wq, wk, wv, wo, n: int, heads: int, *, return_heads: bool = False):
    """[A5] read the RevAlg coefficients off a trained one-layer linear-attention model on [T2].

    wq, wk, wv: (D, H*d), wo: (H*d, D), D = 4n, head h uses columns h*d:(h+1)*d. Head h adds
    a_t = sum_{t'<=t} v_{t'} (k_{t'} . q_t) @ wo_h, so its prediction (first n coordinates) is
        sum_{t'<=t} (e_{t'}^T M_h e_t) (e_{t'}^T N_h)[:n],  M_h = WK_h WQ_h^T, N_h = WV_h WO_h (D x D).
    Each n x n block (i, j) of M_h is read as m_ij I with m_ij the mean of its diagonal (blocks
    of N_h: column block 0 only). Slots 1 and 2 both hold s_t, slot 3 holds s_{t-1}, slot 0 is 0, so
        A_h[k, q] = sum of m_ij over slots i holding u_k and j holding u_q,
        b_h[v]    = sum of N_h's block (i, 0) diagonal means over slots i holding u_v,
        C[v, k, q] = sum_h b_h[v] A_h[k, q].
    Exact when every block is a scaled identity (then ``revalg_predict(s, C)`` equals the layer).
    Returns C (2, 2, 2) float64, or (C, A (H, 2, 2), b (H, 2)) with ``return_heads=True``.
    """
    for name, w in (("wq", wq), ("wk", wk), ("wv", wv), ("wo", wo)):
        check_float_array(name, w, ndim=2)
    n, heads = check_int("n", n, minimum=0), check_int("heads", heads, minimum=0)
    if n < 1 or heads < 1:
        raise ValueError(f"n, heads: expected positive ints, got n = {n}, heads = {heads}")
    D = 4 * n
    if wq.shape[0] != D or wq.shape[1] % heads:
        raise ValueError(f"wq: expected shape ({D}, heads*d) with heads = {heads}, got {wq.shape}")
    if wk.shape != wq.shape:
        raise ValueError(f"wk: expected shape {wq.shape}, got {wk.shape}")
    if wv.shape[0] != D or wv.shape[1] % heads:
        raise ValueError(f"wv: expected shape ({D}, heads*dv), got {wv.shape}")
    if wo.shape != (wv.shape[1], D):
        raise ValueError(f"wo: expected shape ({wv.shape[1]}, {D}), got {wo.shape}")
    d, dv = wq.shape[1] // heads, wv.shape[1] // heads
    wq, wk, wv, wo = (np.asarray(w, dtype=np.float64) for w in (wq, wk, wv, wo))

    def block_diag_mean(M, i, j):
        return float(np.mean(np.diagonal(M[i * n:(i + 1) * n, j * n:(j + 1) * n])))

    A = np.zeros((heads, 2, 2))
    b = np.zeros((heads, 2))
    for h in range(heads):
        M = wk[:, h * d:(h + 1) * d] @ wq[:, h * d:(h + 1) * d].T      # (D, D) key slot x query slot
        N = wv[:, h * dv:(h + 1) * dv] @ wo[h * dv:(h + 1) * dv, :]    # (D, D) value slot x output
        for i, ui in enumerate(_SLOT_U):
            if ui is None:
                continue
            b[h, ui] += block_diag_mean(N, i, 0)
            for j, uj in enumerate(_SLOT_U):
                if uj is not None:
                    A[h, ui, uj] += block_diag_mean(M, i, j)
    C = np.einsum("hv,hkq->vkq", b, A)
    return (C, A, b) if return_heads else C


def revalg_fit(s: np.ndarray, targets: np.ndarray, *, rcond=None) -> np.ndarray:
    """[A5] fit the 8 coefficients C[v, k, q] by least squares (the prediction is linear in C):
    minimise ||targets - revalg_predict(s, C)||^2 over all (b, t, i) with ``np.linalg.lstsq``.

    s, targets: (B, T, n) -> C (2, 2, 2) float64.
    """
    F = revalg_features(s)                                            # (B, T, 2, 2, 2, n)
    check_float_array("targets", targets, ndim=3)
    if targets.shape != s.shape:
        raise ValueError(f"targets: expected shape {s.shape}, got {targets.shape}")
    Phi = np.moveaxis(F.reshape(F.shape[:2] + (8, F.shape[-1])), 2, -1).reshape(-1, 8)  # (B*T*n, 8)
    C, *_ = np.linalg.lstsq(Phi.astype(np.float64), np.asarray(targets, np.float64).ravel(), rcond=rcond)
    return C.reshape(2, 2, 2)
