"""The fast mesa-layer op, [M1]-[M4]: same contract as ``mesa_ref.ops.mesa``, fast kernels.

    mesa_forward(q, k, v, lam, *, gamma=None, backward="store", checkpoint_every=None) -> (out, cache)
    mesa_backward(dout, cache) -> (dq, dk, dv, dlam) (+ (dgamma,) when gamma was given)

Shapes as the reference: q, k (B, H, T, d); v (B, H, T, dv); lam, gamma (H,); out (B, H, T, dv).
Validation is the reference's own ``validate_mesa_inputs`` (same ValueErrors, same messages).
Kernels: NumPy input -> ``kernels/simd/mesa.py`` or ``kernels/plain/mesa.py`` (``mesa_fast.kernels.kernel_module
("mesa")`` picks; or the GPU, or Numba's CUDA simulator for the backend "cudasim", see ``mesa_fast.backend``); CuPy
input -> ``cuda/mesa.py``. Float32 in -> float32 arithmetic and output; float64 -> float64.

Backward strategies (chosen at forward time, as in the reference):
    "store"      the forward keeps w_t = c_t sqrt(beta_t) (T d numbers per sequence) and the
                 backward rebuilds R_t by the rank-1 updates alone. (The reference keeps every
                 R_t, T d^2 numbers: at the paper shape that is 80 MB of memory traffic.)
    "checkpoint" the forward keeps nothing beyond q~_t; the backward re-runs the recursion from
                 R_0 = I/lam. The fast backward sweeps forward in time (it needs dq~_t = S_t^T g_t,
                 a forward recursion, anyway), so the one checkpoint R_0 suffices;
                 ``checkpoint_every`` is validated and recorded, not needed.
    "downdate"   reference-only: ValueError. The Sherman-Morrison downdate loses precision as t
                 grows ([M3]; benchmarks/mesa_stability.py); the fast strategies above are exact
                 recomputations and need no more memory.
Both fast strategies rebuild R_t bit for bit as the forward computed it.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from mesa_ref.ops._common import array_module, check_dout, to_host
from mesa_ref.ops.mesa import validate_mesa_inputs

from ..backend import get_backend, get_cupy
from ..kernels.buffers import contiguous_writeable

__all__ = ["MesaFastCache", "mesa_forward", "mesa_backward"]


class MesaFastCache(NamedTuple):
    """What ``mesa_fast`` ``mesa_forward`` keeps for ``mesa_backward`` (never mutated).

    q, k:     (B, H, T, d)  the inputs (C-contiguous; on the GPU when engine == "cupy").
    v:        (B, H, T, dv) the input values.
    lam:      (H,)          ridge parameter in q's dtype (a private copy).
    gamma:    (H,) or None  forgetting factor in q's dtype (private copy); None = [M2].
    backward: str           "store" | "checkpoint".
    checkpoint_every: int or None   as validated (recorded; the fast backward needs only R_0).
    engine:   str           "numba" | "cupy" | "cudasim": the kernels that made it (the backward uses the same;
                            "cudasim": the CUDA kernels in Numba's simulator, on NumPy arrays).
    qt_raw:   q~_t = R_t q_t in the kernels' layout: the SIMD Numba kernels: the lane layout, flat
              (G*T*d*8,) (see kernels/simd/mesa.py); the plain Numba kernels, cupy and cudasim: (B, H, T, d).
              Use the ``qt`` property.
    w_raw:    w_t = c_t sqrt(beta_t) ("store"; empty for "checkpoint"), same layout as qt_raw.
    to_host:  bool          NumPy input computed on the GPU: the backward returns NumPy too.
    """

    q: object
    k: object
    v: object
    lam: object
    gamma: Optional[object]
    backward: str
    checkpoint_every: Optional[int]
    engine: str
    qt_raw: object
    w_raw: object
    to_host: bool

    @property
    def qt(self):
        """q~_t = R_t q_t as (B, H, T, d) (a fresh array, in the input's array module)."""
        B, H, T, d = self.q.shape
        if self.qt_raw.ndim == 1:         # the SIMD Numba kernels' lane layout
            from ..kernels.simd import mesa as simd_mesa  # noqa: PLC0415
            return simd_mesa.lanes_to_bhtd(self.qt_raw, B, H, T, d)
        return to_host(self.qt_raw) if self.to_host else self.qt_raw.copy()


def _numba():
    from ..kernels import kernel_module  # noqa: PLC0415
    return kernel_module("mesa")


def _cuda():
    from ..cuda import mesa as ck  # noqa: PLC0415  (imports numba.cuda on first use)
    return ck


def cp_module():
    """The cupy module (RuntimeError naming what is missing when CuPy or a GPU is not usable)."""
    return get_cupy()


def mesa_forward(q, k, v, lam, *, gamma=None, backward="store", checkpoint_every=None):
    """Mesa-layer forward [M2] (forgetting factor [M4]), fast kernels; contract of the reference.

    R_0 = I/lam; c_t = R_{t-1} k_t; R_t = (1/gamma)[R_{t-1} - c c^T/(gamma + k.c)];
    S_t = gamma S_{t-1} + v_t k_t^T; q~_t = R_t q_t; o_t = S_t q~_t  (gamma = 1 without gamma).

    Inputs: q, k (B, H, T, d); v (B, H, T, dv); lam (H,) > 0; gamma (H,) in (0, 1] or None;
        backward "store" | "checkpoint" ("downdate" is reference-only: ValueError);
        checkpoint_every: validated as in the reference, not needed by the fast backward.
    Returns (out (B, H, T, dv) in q's dtype and array module, cache: MesaFastCache).
    """
    q, k, v, lam, gamma, backward, C = validate_mesa_inputs(q, k, v, lam, gamma, backward,
                                                            checkpoint_every)
    if backward == "downdate":
        raise ValueError("backward: 'downdate' is reference-only (mesa_ref.ops.mesa_forward); it loses "
                         "precision as t grows. mesa_fast offers 'store' and 'checkpoint', both exact "
                         "recomputations of R_t with O(T d) memory")
    store_w = backward == "store"
    xp = array_module(q)
    engine = "cupy" if xp is not np else get_backend()
    if engine == "numba":
        q, k, v = (contiguous_writeable(x) for x in (q, k, v))
        out, qt_raw, w_raw = _numba().forward(q, k, v, lam, gamma, store_w)
        return out, MesaFastCache(q, k, v, lam, gamma, backward, C, "numba", qt_raw, w_raw, False)
    ck = _cuda()
    if engine == "cudasim":               # the CUDA kernels in Numba's simulator, on the NumPy arrays
        out, qt_raw, w_raw = ck.forward(np, q, k, v, lam, gamma, store_w)
        return out, MesaFastCache(q, k, v, lam, gamma, backward, C, "cudasim", qt_raw, w_raw, False)
    copy_back = xp is np                  # NumPy input on the "cupy" backend: NumPy out
    if copy_back:
        cp = get_cupy()
        q, k, v, lam = (cp.asarray(x) for x in (q, k, v, lam))
        gamma = None if gamma is None else cp.asarray(gamma)
    cp = cp_module()
    q, k, v = (cp.ascontiguousarray(x) for x in (q, k, v))
    out, qt_raw, w_raw = ck.forward(cp, q, k, v, lam, gamma, store_w)
    if copy_back:
        out = to_host(out)
    return out, MesaFastCache(q, k, v, lam, gamma, backward, C, "cupy", qt_raw, w_raw, copy_back)


def mesa_backward(dout, cache):
    """Mesa-layer backward [M3] (with gamma [M4]), fast kernels; contract of the reference.

    dq~_t = S_t^T g_t; u_t = R_t dq~_t; dq_t = u_t; D_t = sum_{t''>=t} w q~ g^T;
    C_t = sum_{t''>=t} w (u q~^T + q~ u^T); dv_t = D_t^T k_t; dk_t = D_t v_t - C_t k_t;
    dlam = -sum_t gamma^t q~_t.u_t; dgamma by the lag-weighted accumulators D'_t, C'_t.

    Inputs: dout (B, H, T, dv), the forward's dtype and array module; cache from this module's
        ``mesa_forward``.
    Returns (dq, dk, dv, dlam) plus dgamma when the forward was given gamma; dq, dk (B, H, T, d),
        dv (B, H, T, dv), dlam, dgamma (H,), all in q's dtype and in the input's array module.
    """
    if not isinstance(cache, MesaFastCache):
        raise ValueError("cache: expected the MesaFastCache returned by mesa_fast.ops.mesa_forward, "
                         f"got {type(cache).__name__}")
    B, H, T, d = cache.q.shape
    dv = cache.v.shape[3]
    check_dout(dout, (B, H, T, dv), cache.q.dtype)
    want_module = np if (cache.engine in ("numba", "cudasim") or cache.to_host) else array_module(cache.q)
    if array_module(dout) is not want_module:
        raise ValueError(f"dout: expected a {want_module.__name__} array like the forward's inputs, "
                         f"got {type(dout).__module__}.{type(dout).__name__}")
    store_w = cache.backward == "store"
    if cache.engine == "numba":
        dq, dk, dv_, dlam, dgamma = _numba().backward(dout, cache.k, cache.v, cache.lam, cache.gamma,
                                                      store_w, cache.qt_raw, cache.w_raw)
    elif cache.engine == "cudasim":
        dq, dk, dv_, dlam, dgamma = _cuda().backward(np, dout, cache.k, cache.v, cache.lam, cache.gamma,
                                                     store_w, cache.qt_raw, cache.w_raw)
    else:
        ck = _cuda()
        if cache.to_host:
            dout = get_cupy().asarray(dout)
        dq, dk, dv_, dlam, dgamma = ck.backward(cp_module(), dout, cache.k, cache.v, cache.lam,
                                                cache.gamma, store_w, cache.qt_raw, cache.w_raw)
        if cache.to_host:
            dq, dk, dv_, dlam = (to_host(x) for x in (dq, dk, dv_, dlam))
            dgamma = None if dgamma is None else to_host(dgamma)
    if cache.gamma is None:
        return dq, dk, dv_, dlam
    return dq, dk, dv_, dlam, dgamma
