"""The mesa-layer in its exact chunkwise form [M5]: the same outputs and gradients as [M2]/[M3], with the T
sequential rank-1 updates replaced by T/C sequential rank-C updates made of matrix products.

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858; MATH.md [M5].

Written against an array module ``xp`` (NumPy or CuPy: ``array_module`` of the inputs), so the same code runs
on the CPU and, through cuBLAS / cuSOLVER, on the GPU; it is the form for long sequences (DESIGN.md's lm shape),
where a sequential kernel walks T steps one after another.

Inside one chunk of C tokens after time t0, with K = [k_{t0+1} .. k_{t0+C}] (d x C), R0 = R_{t0} and
M = I_C + K^T R0 K = L L^T (Cholesky, L lower triangular), let G = L^{-1} K^T R0 (C x d).  Then

    R_{t0+i} x = R0 x - G^T (m_i * (G x))          m_i = (1, .., 1, 0, .., 0): i ones
    R_{t0+C}   = R0 - G^T G

(Woodbury on the first i keys: R_{t0+i} = R0 - R0 K_i M_i^{-1} K_i^T R0, where M_i, the leading i x i block
of M, is L_i L_i^T with L_i the leading block of L.  L being lower triangular, the first i rows of G are
L_i^{-1} K_i^T R0, so R0 K_i M_i^{-1} K_i^T R0 = G_{:i}^T G_{:i}, which is G^T (m_i * G x) applied to x.)
Every R_t x the layer needs is then one batch of products per chunk, for the C query times at once:

    X (d x C) with column i = x_{t0+i}:   R_t X -> R0 X - G^T triu(G X)

where triu keeps entry (j, i) for j <= i (key j is in the context of query i).  The rest of the layer is
causal sums, done chunk by chunk with a running state:

    forward    q~_t = R_t q_t;   o_t = sum_{t'<=t} v_{t'} (k_{t'} . q~_t)
    backward   dq~_t = sum_{t'<=t} k_{t'} (v_{t'} . g_t);   u_t = R_t dq~_t;   dq_t = u_t
               dv_t = sum_{t''>=t} g_{t''} (q~_{t''} . k_t)
               dk_t = sum_{t''>=t} [q~_{t''} (g_{t''} . v_t) - u_{t''} (q~_{t''} . k_t) - q~_{t''} (u_{t''} . k_t)]
               dlam = - sum_{b,t} q~_t . u_t                                            [M3]

What the forward keeps for the backward: q~ and, per chunk, R_{t0} and G (T/C d^2 + T d numbers per
sequence).  No forgetting factor ([M4]: use ``mesa_forward``).  Precision: the Cholesky factorisation and
the one solve with L per chunk (for G) run in the input dtype; M >= I, so L's diagonal is >= 1, but M's
condition number grows with |K^T R0 K| ~ C |k|^2 / lam.
Measured in float32 against the float64 sequential op (max error / max value, (2, 4, 256, 20, 20), |k| ~ 1):
lam = 1, C = 64: <= 1.2e-6 (the sequential op in float32: <= 5.4e-7); lam = 0.01, C = 64: <= 2.7e-4 on dk,
<= 5.4e-5 elsewhere (sequential: 1.5e-4, 3.5e-5); lam = 0.01, C = 16: 2.4e-4 / 7.7e-5.  So errors of the
sequential op's size, a little larger with long chunks when lam is small.

On the CPU through NumPy this form is slower than the Numba kernel at every DESIGN.md shape (its batched
small products are not what NumPy is fast at: 261 ms vs 16-24 ms at the paper shape); it exists
for the GPU, where each chunk is a handful of batched cuBLAS / cuSOLVER calls.

Shapes: q, k (B, H, T, d); v (B, H, T, dv); lam (H,); chunk C (the last chunk may be shorter).
"""
from __future__ import annotations

from typing import NamedTuple

from ._common import array_module, check_dout
from .mesa import validate_mesa_inputs

__all__ = ["MesaChunkCache", "mesa_chunkwise_forward", "mesa_chunkwise_backward"]

DEFAULT_CHUNK = 64


class MesaChunkCache(NamedTuple):
    """What ``mesa_chunkwise_forward`` keeps for ``mesa_chunkwise_backward`` (never mutated)."""
    q: object        # (B, H, T, d)
    k: object        # (B, H, T, d)
    v: object        # (B, H, T, dv)
    lam: object      # (H,) in q's dtype
    qt: object       # (B, H, T, d)       q~_t = R_t q_t
    R0s: list        # per chunk: R at the chunk's start (B, H, d, d)
    Gs: list         # per chunk: G = L^{-1} K^T R0, L the Cholesky factor of I + K^T R0 K (B, H, c, d)
    chunk: int


def _tr(x):
    return x.swapaxes(-1, -2)


def _triu_mask(xp, c, dtype):
    """(c, c) with ones where row j <= column i: key j is in the context of query i."""
    return xp.triu(xp.ones((c, c), dtype=dtype))


def _apply_R(R0, G, X, xp):
    """R_{t0+i} x_i for every column i of X (..., d, c): R0 X - G^T triu(G X)."""
    P = (G @ X) * _triu_mask(xp, X.shape[-1], X.dtype)                 # (..., c, c)
    return R0 @ X - _tr(G) @ P                                          # (..., d, c)


def _chunk_state(R0, K, xp):
    """(G, R at the chunk's end) for R0 (..., d, d) and the chunk's keys K (..., d, c)."""
    KR = _tr(K) @ R0                                                    # K^T R0            (..., c, d)
    M = xp.eye(K.shape[-1], dtype=K.dtype) + KR @ K                     # I + K^T R0 K      (..., c, c)
    G = xp.linalg.solve(xp.linalg.cholesky(M), KR)                      # L^{-1} K^T R0     (..., c, d)
    R1 = R0 - _tr(G) @ G
    return G, (R1 + _tr(R1)) / 2                                         # exact symmetry kept


def _bounds(T, C):
    return [(s, min(s + C, T)) for s in range(0, T, C)]


def _causal(a, b, c, C, xp):
    """out_t = sum_{t'<=t} a_{t'} (b_{t'} . c_t), chunk by chunk.  a (..., T, da); b, c (..., T, db)."""
    out = xp.empty(c.shape[:-1] + (a.shape[-1],), dtype=a.dtype)
    S = xp.zeros(a.shape[:-2] + (b.shape[-1], a.shape[-1]), dtype=a.dtype)  # sum b a^T so far (..., db, da)
    for s, e in _bounds(a.shape[-2], C):
        ac, bc, cc = a[..., s:e, :], b[..., s:e, :], c[..., s:e, :]
        scores = (cc @ _tr(bc)) * _tr(_triu_mask(xp, e - s, a.dtype))  # (..., c, c): [i, j] = b_j . c_i, j <= i
        out[..., s:e, :] = cc @ S + scores @ ac
        S = S + _tr(bc) @ ac
    return out


def _anticausal(a, b, c, C, xp):
    """out_t = sum_{t''>=t} a_{t''} (b_{t''} . c_t): ``_causal`` on the time-reversed sequences."""
    rev = (Ellipsis, slice(None, None, -1), slice(None))
    return _causal(a[rev], b[rev], c[rev], C, xp)[rev]


def _apply_R_all(R0s, Gs, X, C, xp):
    """R_t x_t for every t (X: (B, H, T, d)), from the stored chunk states."""
    out = xp.empty_like(X)
    for (s, e), R0, G in zip(_bounds(X.shape[2], C), R0s, Gs):
        out[:, :, s:e] = _tr(_apply_R(R0, G, _tr(X[:, :, s:e]), xp))
    return out


def mesa_chunkwise_forward(q, k, v, lam, *, chunk: int = DEFAULT_CHUNK):
    """Mesa-layer forward [M1]/[M2] in the chunkwise form [M5]; same output as ``mesa_forward`` (no gamma).

    Inputs: q, k (B, H, T, d); v (B, H, T, dv); lam (H,) > 0; chunk: tokens per chunk (positive int).
    Returns (out (B, H, T, dv) in q's dtype and array module, MesaChunkCache).
    """
    q, k, v, lam, _, _, _ = validate_mesa_inputs(q, k, v, lam)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected a positive int, got {chunk!r}")
    xp = array_module(q)
    B, H, T, d = q.shape
    R0 = xp.eye(d, dtype=q.dtype) / lam[None, :, None, None] * xp.ones((B, 1, 1, 1), dtype=q.dtype)  # (B,H,d,d)
    R0s, Gs = [], []
    for s, e in _bounds(T, chunk):                                       # the sequential part: T/C rank-C updates
        G, R1 = _chunk_state(R0, _tr(k[:, :, s:e]), xp)
        R0s.append(R0)
        Gs.append(G)
        R0 = R1
    qt = _apply_R_all(R0s, Gs, q, chunk, xp)                             # [M5] q~_t = R_t q_t
    out = _causal(v, k, qt, chunk, xp)                                   # o_t = sum v (k . q~_t)
    return out, MesaChunkCache(q, k, v, lam, qt, R0s, Gs, chunk)


def mesa_chunkwise_backward(dout, cache):
    """Mesa-layer backward [M3] in the chunkwise form [M5]: (dq, dk, dv, dlam) as ``mesa_backward``.

    Inputs: dout (B, H, T, dv) in the forward's dtype and array module; cache from ``mesa_chunkwise_forward``.
    Returns dq, dk (B, H, T, d), dv (B, H, T, dv), dlam (H,) (summed over the batch).
    """
    if not isinstance(cache, MesaChunkCache):
        raise ValueError(f"cache: expected a MesaChunkCache from mesa_chunkwise_forward, got {type(cache).__name__}")
    q, k, v, qt, C = cache.q, cache.k, cache.v, cache.qt, cache.chunk
    check_dout(dout, v.shape, q.dtype)
    xp = array_module(q)
    if array_module(dout) is not xp:
        raise ValueError(f"dout: expected a {xp.__name__} array like the forward's inputs")
    g = dout
    a = _causal(k, v, g, C, xp)                                          # dq~_t = S_t^T g_t
    u = _apply_R_all(cache.R0s, cache.Gs, a, C, xp)                      # u_t = R_t dq~_t
    dv = _anticausal(g, qt, k, C, xp)                                    # D_t^T k_t
    dk = _anticausal(qt, g, v, C, xp) - _anticausal(u, qt, k, C, xp) - _anticausal(qt, u, k, C, xp)
    dlam = -(qt * u).sum(axis=(0, 2, 3))                                 # (H,)
    return u, dk, dv, dlam
