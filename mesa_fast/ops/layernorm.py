"""LayerNorm [L4] on the CPU: the ``mesa_ref.ops.layernorm`` op, same signatures and the reference's cache type.

Re-expresses ``mesa_ref.ops.layernorm``: the kernels of ``kernels/simd/layernorm.py`` (one pass per row for each
sum, 16 rows in the lanes of a vector), the rows shared out to the thread pool (at least
``tuning.LAYERNORM_MIN_ROWS`` per range). The cache is the reference's ``LayerNormCache`` (xhat, rstd, w keep their
meaning), so either backward takes it. CuPy input goes to the reference op.
"""
from __future__ import annotations

import numpy as np

from mesa_ref.ops import layernorm as _ref_ln
from mesa_ref.ops._common import all_finite, check_dout

from ..kernels.buffers import flat
from ..runtime import tuning
from ..runtime.pool import map_chunks
from ._common import check_numpy_dout, on_numpy, simd

__all__ = ["layernorm_forward", "layernorm_backward"]


def layernorm_forward(x, w, b, *, eps=1e-5):
    """[L4] y = (x - mean(x)) / sqrt(var(x) + eps) * w + b over the last axis.  Rows shared out to the thread pool;
    NaN/inf in x: found by the kernel in its row sums (a NaN or inf entry makes its row's sum NaN or inf), then
    reported by the reference's check (same message)."""
    if not on_numpy(x, w, b):
        return _ref_ln.layernorm_forward(x, w, b, eps=eps)
    _ref_ln.check_layernorm_inputs(x, w, b, eps, finite=False)   # the reference's checks (same ValueErrors) ...
    if not (all_finite(w) and all_finite(b)):
        _ref_ln.check_layernorm_inputs(x, w, b, eps)               # ... NaN/inf in w, b (small): the reference's
    D = x.shape[-1]
    xf, wf, bf = flat(x), flat(w), flat(b)
    M = xf.size // D if D else 0
    y = np.empty(xf.shape, x.dtype)
    xhat = np.empty(xf.shape, x.dtype)
    rstd = np.empty(M, x.dtype)
    e = x.dtype.type(eps)
    kernel = simd("layernorm").layernorm_fwd
    ok = map_chunks(lambda lo, hi: kernel(xf[lo * D:hi * D], wf, bf, e, D, y[lo * D:hi * D],
                                          xhat[lo * D:hi * D], rstd[lo:hi]), M, min_chunk=tuning.LAYERNORM_MIN_ROWS)
    if not all(ok):
        _ref_ln.check_layernorm_inputs(x, w, b, eps)
    return y.reshape(x.shape), _ref_ln.LayerNormCache(xhat.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)), w)


def layernorm_backward(dy, cache):
    """Returns (dx (..., D), dw (D,), db (D,)).  Rows shared out to the thread pool, each range's dw, db partial sums
    (float64) added in range order, so the result does not depend on the threads. NaN/inf in dy is found in db (a
    non-finite dy[m, j] leaves db[j] non-finite), then reported by the reference's check of dy (same message)."""
    xhat, rstd, w = cache
    if not on_numpy(xhat):
        return _ref_ln.layernorm_backward(dy, cache)
    check_numpy_dout(dy, xhat.shape, xhat.dtype)
    D = xhat.shape[-1]
    dyf, xf, rf, wf = flat(dy), flat(xhat), flat(rstd), flat(w)
    M = rf.size
    dx = np.empty(xf.shape, xhat.dtype)
    kernel = simd("layernorm").layernorm_bwd

    def rows(lo, hi):
        sw, sb = np.zeros(D), np.zeros(D)
        kernel(dyf[lo * D:hi * D], xf[lo * D:hi * D], rf[lo:hi], wf, D, dx[lo * D:hi * D], sw, sb)
        return sw, sb

    parts = map_chunks(rows, M, min_chunk=tuning.LAYERNORM_MIN_ROWS)
    sw, sb = parts[0]
    for pw, pb in parts[1:]:
        sw += pw
        sb += pb
    dw, db = sw.astype(xhat.dtype), sb.astype(xhat.dtype)
    if not all_finite(db):
        check_dout(dy, xhat.shape, xhat.dtype)
    return dx.reshape(xhat.shape), dw, db
