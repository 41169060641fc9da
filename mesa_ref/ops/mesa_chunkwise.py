"""The mesa-layer in its exact chunkwise form [M5]: the same outputs and gradients as [M2]/[M3], with the T
sequential rank-1 updates replaced by T/C sequential rank-C updates made of matrix products.

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858; docs/math.md [M5].

Written against an array module ``xp`` (NumPy or CuPy: ``array_module`` of the inputs), so the same code runs
on the CPU and, through cuBLAS / cuSOLVER, on the GPU; it is the form for long sequences (the lm shape of docs/design.md),
where a sequential kernel walks T steps one after another. The one routine that differs by module is the
triangular solve (``_solve_lower``: scipy.linalg or cupyx.scipy.linalg ``solve_triangular``).

Inside one chunk of C tokens after time t0, with K = [k_{t0+1} .. k_{t0+C}] (d x C) and R0 = R_{t0}:

    M = I_C + K^T R0 K = L L^T                      Cholesky, L lower triangular           [M5]
    G = L^{-1} K^T R0                               a triangular solve with L  (C x d)     [M5]
    R_{t0+i} x = R0 x - G^T (m_i * (G x))           m_i = (1, .., 1, 0, .., 0): i ones     [M5]
    R_{t0+C}   = R0 - G^T G                         the next chunk's R0                    [M5]

(Woodbury on the first i keys: R_{t0+i} = R0 - R0 K_i M_i^{-1} K_i^T R0, where M_i, the leading i x i block
of M, is L_i L_i^T with L_i the leading block of L: the prefix of a Cholesky factor is the Cholesky factor of
the prefix. L being lower triangular, the first i rows of G are L_i^{-1} K_i^T R0, so
R0 K_i M_i^{-1} K_i^T R0 = G_{:i}^T G_{:i}, which is G^T (m_i * G x) applied to x.)
Every R_t x the layer needs is then one batch of products per chunk, for the C query times at once:

    X (d x C) with column i = x_{t0+i}:   R_t X -> R0 X - G^T triu(G X)                        [M5]

where triu keeps entry (j, i) for j <= i (key j is in the context of query i). The rest of the layer is
causal sums ([M2]'s o_t = S_t q~_t and [M3]'s reverse-scan accumulators written as the sums they are),
done chunk by chunk with a running state:

    forward    q~_t = R_t q_t;   o_t = sum_{t'<=t} v_{t'} (k_{t'} . q~_t)                             [M2]
    backward   dq~_t = sum_{t'<=t} k_{t'} (v_{t'} . dout_t);   u_t = R_t dq~_t;   dq_t = u_t
               dv_t = sum_{t''>=t} dout_{t''} (q~_{t''} . k_t)                          (= D_t^T k_t)
               dk_t = sum_{t''>=t} [q~_{t''} (dout_{t''} . v_t) - u_{t''} (q~_{t''} . k_t)
                                    - q~_{t''} (u_{t''} . k_t)]                         (= D_t v_t - C_t k_t)
               dlam = - sum_{b,t} q~_t . u_t                                                          [M3]

What the forward keeps for the backward: q~ and, per chunk, R_{t0} and G (T/C d^2 + T d numbers per
sequence). No forgetting factor ([M4]: use ``mesa_forward``). Precision: the Cholesky factorisation and
the triangular solve for G run in the input dtype; M >= I, so L's diagonal is >= 1, but M's condition
number grows with |K^T R0 K| ~ C |k|^2 / lam. Against the float64 sequential op, float32 errors are of the
sequential float32 op's size, a little larger with long chunks when lam is small (tests/ops/test_mesa_chunkwise.py
holds float32 to the fast kernels' tolerances).

On the CPU through NumPy this form is slower than the Numba kernel (its batched small products are not what
NumPy is fast at); it exists for the GPU, where each chunk is a handful of batched cuBLAS / cuSOLVER calls.

Names: B batch, H heads, T time, d key/query size, d_v value size; C (``chunk``) tokens per chunk, c the
length of one chunk (the last may be shorter); dout = dL/do (docs/math.md's g_t), dqt = dL/dq~, d<x> = dL/d<x>.
Shapes: q, k, qt, u, dq, dk (B, H, T, d); v, out, dout, dv (B, H, T, d_v); lam (H,);
per chunk R0 (B, H, d, d), K (B, H, d, c), M and L (B, H, c, c), G (B, H, c, d).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._common import array_module, check_dout
from .mesa import validate_mesa_inputs

__all__ = ["MesaChunkCache", "mesa_chunkwise_forward", "mesa_chunkwise_backward"]

DEFAULT_CHUNK = 64


class MesaChunkCache(NamedTuple):
    """What ``mesa_chunkwise_forward`` keeps for ``mesa_chunkwise_backward`` (never mutated)."""
    q: object        # (B, H, T, d)
    k: object        # (B, H, T, d)
    v: object        # (B, H, T, d_v)
    lam: object      # (H,) in q's dtype
    qt: object       # (B, H, T, d)       q~_t = R_t q_t
    R0s: list        # per chunk: R at the chunk's start (B, H, d, d)
    Gs: list         # per chunk: G = L^{-1} K^T R0, L the Cholesky factor of I + K^T R0 K (B, H, c, d)
    chunk: int


# --------------------------------------------------------------------------------------------
# helpers: transpose, masks, chunk bounds, the triangular solve
# --------------------------------------------------------------------------------------------

def _tr(x):
    """Swap the last two axes (the matrix transpose of a batch of matrices)."""
    return x.swapaxes(-1, -2)


def _triu_mask(xp, c, dtype):
    """(c, c) with ones where row j <= column i: key j is in the context of query i."""
    return xp.triu(xp.ones((c, c), dtype=dtype))


def _bounds(T, chunk):
    """[(s, e)]: the chunks' token ranges s..e-1 (0-based positions), the last possibly shorter."""
    return [(s, min(s + chunk, T)) for s in range(0, T, chunk)]


def _solve_lower(L, X, xp):
    """L^{-1} X by forward substitution: L (..., c, c) lower triangular, X (..., c, n) -> (..., c, n).

    CuPy arrays: cupyx.scipy.linalg.solve_triangular, which takes the batch at once (batched cuBLAS trsm).
    NumPy arrays: scipy.linalg.solve_triangular one matrix at a time (older SciPy releases take no batch axes).
    Both compute in the inputs' dtype.
    """
    if xp is not np:
        from cupyx.scipy.linalg import solve_triangular  # noqa: PLC0415  (optional dependency)
        return solve_triangular(L, X, lower=True)
    from scipy.linalg import solve_triangular  # noqa: PLC0415
    Y = np.empty_like(X)                                                # (..., c, n)
    for idx in np.ndindex(X.shape[:-2]):                                # L and X share their batch axes
        Y[idx] = solve_triangular(L[idx], X[idx], lower=True, check_finite=False)  # (c, n)
    return Y


# --------------------------------------------------------------------------------------------
# [M5]: the chunk state and R_t x inside a chunk
# --------------------------------------------------------------------------------------------

def _chunk_state(R0, K, xp):
    """(G, R at the chunk's end) for R0 (..., d, d) and the chunk's keys K (..., d, c)  [M5]."""
    KR = _tr(K) @ R0                                                    # [M5] K^T R0        (..., c, d)
    M = xp.eye(K.shape[-1], dtype=K.dtype) + KR @ K                     # [M5] I + K^T R0 K  (..., c, c)
    L = xp.linalg.cholesky(M)                                           # [M5] M = L L^T     (..., c, c)
    G = _solve_lower(L, KR, xp)                                         # [M5] L^{-1} K^T R0 (..., c, d)
    R1 = R0 - _tr(G) @ G                                                # [M5] R0 - G^T G    (..., d, d)
    return G, (R1 + _tr(R1)) / 2                                        # exact symmetry kept (..., d, d)


def _apply_R(R0, G, X, xp):
    """R_{t0+i} x_i for every column i of X (..., d, c): R0 X - G^T triu(G X)  [M5]."""
    P = (G @ X) * _triu_mask(xp, X.shape[-1], X.dtype)                 # [M5] triu(G X)     (..., c, c)
    return R0 @ X - _tr(G) @ P                                          # [M5] R_t x_t       (..., d, c)


def _apply_R_all(R0s, Gs, X, chunk, xp):
    """R_t x_t for every t (X: (B, H, T, d)), from the stored chunk states  [M5]."""
    out = xp.empty_like(X)                                              # (B,H,T,d)
    for (s, e), R0, G in zip(_bounds(X.shape[2], chunk), R0s, Gs):
        out[:, :, s:e] = _tr(_apply_R(R0, G, _tr(X[:, :, s:e]), xp))    # [M5] R_t x_t       (B,H,c,d)
    return out


# --------------------------------------------------------------------------------------------
# causal sums, chunk by chunk
# --------------------------------------------------------------------------------------------

def _causal_sum(x, y, z, chunk, xp):
    """out_t = sum_{t'<=t} x_{t'} (y_{t'} . z_t), chunk by chunk.  x (..., T, n_x); y, z (..., T, n_y).

    Running state S = sum over the previous chunks of y_{t'} x_{t'}^T (..., n_y, n_x); inside a chunk the
    masked scores [i, j] = y_j . z_i for j <= i. Returns (..., T, n_x).
    """
    out = xp.empty(z.shape[:-1] + (x.shape[-1],), dtype=x.dtype)        # (..., T, n_x)
    S = xp.zeros(x.shape[:-2] + (y.shape[-1], x.shape[-1]), dtype=x.dtype)  # sum y x^T so far (..., n_y, n_x)
    for s, e in _bounds(x.shape[-2], chunk):
        xc, yc, zc = x[..., s:e, :], y[..., s:e, :], z[..., s:e, :]      # (..., c, n_x), (..., c, n_y) x 2
        scores = (zc @ _tr(yc)) * _tr(_triu_mask(xp, e - s, x.dtype))   # [i, j] = y_j . z_i, j <= i (..., c, c)
        out[..., s:e, :] = zc @ S + scores @ xc                          # earlier chunks + this one (..., c, n_x)
        S = S + _tr(yc) @ xc                                             # (..., n_y, n_x)
    return out


def _anticausal_sum(x, y, z, chunk, xp):
    """out_t = sum_{t''>=t} x_{t''} (y_{t''} . z_t): ``_causal_sum`` on the time-reversed sequences."""
    rev = (Ellipsis, slice(None, None, -1), slice(None))
    return _causal_sum(x[rev], y[rev], z[rev], chunk, xp)[rev]


# --------------------------------------------------------------------------------------------
# forward and backward
# --------------------------------------------------------------------------------------------

def mesa_chunkwise_forward(q, k, v, lam, *, chunk: int = DEFAULT_CHUNK):
    """Mesa-layer forward [M1]/[M2] in the chunkwise form [M5]; same output as ``mesa_forward`` (no gamma).

    q~_t = R_t q_t with R_t from the chunk states [M5];  o_t = sum_{t'<=t} v_{t'} (k_{t'} . q~_t)  [M2].
    Inputs: q, k (B, H, T, d); v (B, H, T, d_v); lam (H,) > 0; chunk: tokens per chunk (positive int).
    Returns (out (B, H, T, d_v) in q's dtype and array module, MesaChunkCache).
    """
    q, k, v, lam, _, _, _ = validate_mesa_inputs(q, k, v, lam)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected a positive int, got {chunk!r}")
    xp = array_module(q)
    B, H, T, d = q.shape
    eye = xp.eye(d, dtype=q.dtype)                                       # (d,d)
    R0 = eye / lam[None, :, None, None] * xp.ones((B, 1, 1, 1), dtype=q.dtype)  # [M2] R_0 = I/lam (B,H,d,d)
    R0s, Gs = [], []
    for s, e in _bounds(T, chunk):                                       # the sequential part: T/C rank-C updates
        G, R1 = _chunk_state(R0, _tr(k[:, :, s:e]), xp)                  # [M5] G (B,H,c,d), R_{t0+c} (B,H,d,d)
        R0s.append(R0)
        Gs.append(G)
        R0 = R1
    qt = _apply_R_all(R0s, Gs, q, chunk, xp)                             # [M5] q~_t = R_t q_t (B,H,T,d)
    out = _causal_sum(v, k, qt, chunk, xp)                               # [M2] o_t = sum v (k . q~_t) (B,H,T,d_v)
    return out, MesaChunkCache(q, k, v, lam, qt, R0s, Gs, chunk)


def mesa_chunkwise_backward(dout, cache):
    """Mesa-layer backward [M3] in the chunkwise form [M5]: (dq, dk, dv, dlam) as ``mesa_backward``.

    The [M3] sums of the module docstring, each a causal or anti-causal sum; u_t = R_t dq~_t by [M5].
    Inputs: dout (B, H, T, d_v) in the forward's dtype and array module; cache from ``mesa_chunkwise_forward``.
    Returns dq, dk (B, H, T, d), dv (B, H, T, d_v), dlam (H,) (summed over the batch).
    """
    if not isinstance(cache, MesaChunkCache):
        raise ValueError(f"cache: expected a MesaChunkCache from mesa_chunkwise_forward, got {type(cache).__name__}")
    q, k, v, qt, chunk = cache.q, cache.k, cache.v, cache.qt, cache.chunk
    check_dout(dout, v.shape, q.dtype)
    xp = array_module(q)
    if array_module(dout) is not xp:
        raise ValueError(f"dout: expected a {xp.__name__} array like the forward's inputs")
    dqt = _causal_sum(k, v, dout, chunk, xp)                             # [M3] dq~_t = S_t^T dout_t  (B,H,T,d)
    u = _apply_R_all(cache.R0s, cache.Gs, dqt, chunk, xp)                # [M3]/[M5] u_t = R_t dq~_t  (B,H,T,d)
    dq = u                                                               # [M3] dq_t = u_t            (B,H,T,d)
    dv = _anticausal_sum(dout, qt, k, chunk, xp)                         # [M3] dv_t = D_t^T k_t      (B,H,T,d_v)
    # [M3] dk_t = D_t v_t - C_t k_t, C_t k_t as its two sums
    dk = (_anticausal_sum(qt, dout, v, chunk, xp)                        # [M3] D_t v_t               (B,H,T,d)
          - _anticausal_sum(u, qt, k, chunk, xp)                         # [M3] - sum u (q~ . k_t)    (B,H,T,d)
          - _anticausal_sum(qt, u, k, chunk, xp))                        # [M3] - sum q~ (u . k_t)    (B,H,T,d)
    dlam = -(qt * u).sum(axis=(0, 2, 3))                                 # [M3] dlam = -sum q~ . u    (H,)
    return dq, dk, dv, dlam
