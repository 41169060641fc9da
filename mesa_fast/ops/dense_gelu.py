"""The MLP's first layer [L1] + [L5], g = gelu(x W + b), on the CPU: the ``mesa_ref.ops.dense_gelu`` op, same
signatures, the product and the GELU fused block of rows by block.

Re-expresses ``mesa_ref.ops.dense_gelu`` (the composition of ``dense`` and ``gelu``): each block of
``tuning.DENSE_GELU_SUB_ROWS`` rows gets its GELU (``kernels/simd/activations.py``) right after its product, while z
is in cache, and the backward makes dz = dg gelu'(z) and its products block by block likewise. The products are the
dense op's (``dense.py``: BLAS on one thread per range of rows, ``gemm.ab_rows`` for a 40-column dx); the ranges are
shared out to the thread pool. NumPy input runs these kernels whatever ``mesa_fast.set_backend`` says; CuPy input,
and a reference cache, go to the reference op.
Shapes: x (..., Din), W (Din, M), b (M,) or None, g / dg (..., M); N = prod(...) rows.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mesa_ref.ops import dense as _ref_dense
from mesa_ref.ops import dense_gelu as _ref_dg
from mesa_ref.ops._common import all_finite, check_dout, check_float_array

from ..runtime import tuning
from ..runtime.blas import one_blas_thread
from ..runtime.pool import map_chunks
from ._common import check_numpy_dout, on_numpy, simd
from .dense import _narrow

__all__ = ["DenseGeluFastCache", "dense_gelu_forward", "dense_gelu_backward"]


class DenseGeluFastCache(NamedTuple):
    x2: np.ndarray   # (N, Din) the input, rows flattened, C-contiguous
    W: np.ndarray    # (Din, M)
    has_bias: bool
    x_shape: tuple   # the input's shape (..., Din)
    z: np.ndarray    # (N, M) x W + b
    t: np.ndarray    # (N, M) tanh(sqrt(2/pi) (z + 0.044715 z^3))


def dense_gelu_forward(x, W, b=None):
    """[L1] + [L5] g = gelu(x W + b).  x (..., Din), W (Din, M), b (M,) or None -> (g (..., M), cache).

    One pass: each block of rows gets its GELU right after its product, while z is in cache (``_products_forward``).
    NaN/inf: W and b (small) are checked first; a non-finite x[n, j] makes every z[n, k] non-finite (as in
    ``dense_forward``), which the GELU kernel sees; then x is checked for the reference's message, and a finite x
    whose product overflows raises gelu_forward's ValueError on z, as the reference composition does."""
    if not on_numpy(x, W, b):
        return _ref_dg.dense_gelu_forward(x, W, b)
    _ref_dense.check_dense_inputs(x, W, b, finite=False)
    if not (all_finite(W) and (b is None or all_finite(b))):
        _ref_dense.check_dense_inputs(x, W, b)
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))                  # (N, Din)
    g, z, t, finite = _products_forward(x2, W, b, simd("activations").bias_gelu_fwd)
    shape = x.shape[:-1] + (W.shape[1],)
    if not finite and z.size:
        _ref_dense.check_dense_inputs(x, W, b)
        check_float_array("x", z)
    return g.reshape(shape), DenseGeluFastCache(x2, W, b is not None, tuple(x.shape), z, t)


def dense_gelu_backward(dg, cache, *, input_grad=True):
    """Returns (dx (..., Din) or None with ``input_grad=False``, dW (Din, M), db (M,) or None).  Block by block of
    rows: dz = dg gelu'(z), then its products, while dz is in cache (``_products_backward``). NaN/inf in dg: found
    by the GELU kernel, then reported by the reference's check (same message)."""
    if not isinstance(cache, DenseGeluFastCache):
        return _ref_dg.dense_gelu_backward(dg, cache, input_grad=input_grad)
    x2, W, has_bias, x_shape, z, t = cache
    check_numpy_dout(dg, x_shape[:-1] + (W.shape[1],), z.dtype)
    dg2 = np.ascontiguousarray(dg.reshape(-1, dg.shape[-1]))
    dx, dW, db, finite = _products_backward(dg2, x2, W, z, t, has_bias, input_grad, simd("activations").gelu_bwd_rows)
    if not finite:
        check_dout(dg, x_shape[:-1] + (W.shape[1],), z.dtype)
    return (dx.reshape(x_shape) if input_grad else None), dW, db


# --------------------------------------------------------------------------------------------
# the products and the GELU, block of rows by block, split by rows over the thread pool
# --------------------------------------------------------------------------------------------

def _products_forward(x2, W, b, gelu_fwd):
    """(g, z, t, finite): z (N, M) = x2 (N, Din) @ W + b, g = gelu(z), t = tanh(...) (``activations.bias_gelu_fwd``
    of kernels/simd, passed in), block of SUB_ROWS (``tuning.DENSE_GELU_SUB_ROWS``) rows by block, each block's GELU
    right after its product (while z is in cache); ``finite``: no NaN/inf in z.  [L1] + [L5]"""
    N, M = x2.shape[0], W.shape[1]
    dt = np.result_type(x2, W)
    z = np.empty((N, M), dt)
    g = np.empty((N, M), dt)
    t = np.empty((N, M), dt)
    bb = b if b is not None else np.zeros(M, dt)

    sub = tuning.DENSE_GELU_SUB_ROWS

    def rows(lo, hi):
        ok = True
        for s0 in range(lo, hi, sub):
            s1 = min(hi, s0 + sub)
            np.matmul(x2[s0:s1], W, out=z[s0:s1])
            ok &= gelu_fwd(z[s0:s1].reshape(-1), bb, M, g[s0:s1].reshape(-1), t[s0:s1].reshape(-1))
        return ok

    with one_blas_thread():
        finite = map_chunks(rows, N, min_chunk=tuning.DENSE_MIN_ROWS)
    return g, z, t, all(finite)


def _products_backward(dg2, x2, W, z, t, has_bias, input_grad, gelu_bwd):
    """(dx or None, dW, db or None, finite) of g = gelu(x2 W + b) for C-contiguous dg2, z, t (N, M), x2 (N, Din):
    per block of SUB_ROWS rows dz = dg gelu'(z) (``activations.gelu_bwd_rows`` of kernels/simd, passed in, with the
    bias gradient's float64 column sums), then its products dx = dz W^T and dW += x^T dz while dz is in cache;
    partial dW, db summed in range order.  ``finite``: no NaN/inf in dg.  [L1] + [L5]"""
    N, M = dg2.shape
    dt = np.result_type(dg2, W)
    dx = np.empty((N, W.shape[0]), dt) if input_grad else None
    Wt = _narrow(W.T, dt) if input_grad else None
    if Wt is not None:
        from ..kernels.simd import gemm
    sub = tuning.DENSE_GELU_SUB_ROWS

    def rows(lo, hi):
        dz = np.empty((min(sub, hi - lo), M), dt)
        part = np.zeros((W.shape[0], M), dt)
        tmp = np.empty((W.shape[0], M), dt)
        sb = np.zeros(M)
        ok = True
        for s0 in range(lo, hi, sub):
            s1 = min(hi, s0 + sub)
            d = dz[:s1 - s0]
            ok &= gelu_bwd(dg2[s0:s1].reshape(-1), z[s0:s1].reshape(-1), t[s0:s1].reshape(-1), M, d.reshape(-1), sb)
            if Wt is not None:
                gemm.ab_rows(d.reshape(-1), Wt, M, W.shape[0], 0, s1 - s0, dx[s0:s1].reshape(-1))
            elif input_grad:
                np.matmul(d, W.T, out=dx[s0:s1])
            np.matmul(x2[s0:s1].T, d, out=tmp)
            part += tmp
        return part, sb, ok

    with one_blas_thread():
        parts = map_chunks(rows, N, min_chunk=tuning.DENSE_MIN_ROWS)
    dW, sb, ok = parts[0]
    finite = ok
    for p, s, o in parts[1:]:
        dW += p
        sb += s
        finite &= o
    return dx, dW, (sb.astype(dt) if has_bias else None), finite
