"""The dense layer [L1] on the CPU: the ``mesa_ref.ops.dense`` op, same signatures; the reference's BLAS products,
each run single-threaded on the package's threads.

Re-expresses ``mesa_ref.ops.dense`` (y = x W + b; dx = dy W^T, dW = x^T dy, db = sum dy). The products stay the
same BLAS calls (a hand-written Numba product was slower at these sizes); what differs is the threading:

* While a dense op runs, the BLAS libraries are limited to one thread (``runtime.blas.one_blas_thread``, which says
  why), and the products are split by rows over the package's thread pool (``runtime.pool.map_chunks``), each piece a
  single-threaded BLAS call on its own thread; x^T dy sums the pieces' partial products in range order, so the
  result is the same on every run. Fewer than ``tuning.DENSE_MIN_ROWS`` rows per thread: no split.
* Where dy is narrow (the output projection, the MLP's second layer), x^T dy runs in ``gemm.atb_rows`` instead of
  BLAS (``_use_gemm``), and a product with a 40-column output (the model's width: y = x W into the residual stream,
  dx = dy W^T out of the QKV product and the MLP) runs in ``gemm.ab_rows`` (``_narrow``): both measured faster there
  (``kernels/simd/gemm.py``; the shapes are ``runtime.tuning``'s ATB_* and NARROW_*).

NumPy input runs these products whatever ``mesa_fast.set_backend`` says; CuPy input, and a reference cache, go to the
reference op. ``xt_dy`` and ``_narrow`` serve the fused ops too (``dense_gelu.py``, ``layernorm_dense.py``).
Shapes: x (..., Din), W (Din, Dout), b (Dout,) or None, y / dy (..., Dout); N = prod(...) rows.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mesa_ref.ops import dense as _ref_dense
from mesa_ref.ops._common import all_finite, check_dout

from ..runtime import tuning
from ..runtime.blas import one_blas_thread
from ..runtime.pool import map_chunks
from ._common import check_numpy_dout, on_numpy

__all__ = ["DenseFastCache", "dense_forward", "dense_backward"]


class DenseFastCache(NamedTuple):
    x2: np.ndarray   # (N, Din) the input, rows flattened, C-contiguous
    W: np.ndarray    # (Din, Dout)
    has_bias: bool
    x_shape: tuple   # the input's shape (..., Din)


def dense_forward(x, W, b=None):
    """[L1] y = x W + b.  x (..., Din), W (Din, Dout), b (Dout,) or None -> (y (..., Dout), cache).

    NaN/inf checks: on x, W and b when x is the smaller array, else on y alone. A non-finite x[n, j] makes every
    y[n, k] non-finite, a non-finite W[j, k] or b[k] the whole column y[:, k] (IEEE: inf * 0 is NaN, and no sum
    with a NaN or inf in it is finite), so a finite y proves finite inputs. x or y is checked range by range by
    the thread that just multiplied it (``_products_forward``), W and b (small) before the product. When a check
    fails the inputs are checked one by one, so the ValueError names the argument as the reference's does;
    finite inputs whose product overflows come back as they are, also as in the reference. (Checks outside the
    product ranges would be an extra pass over memory per call; docs/performance-archive/notes.md, "Dense layer".)"""
    if not on_numpy(x, W, b):
        return _ref_dense.dense_forward(x, W, b)
    _ref_dense.check_dense_inputs(x, W, b, finite=False)   # the reference's checks (same ValueErrors)
    y_size = (x.size // x.shape[-1] if x.shape[-1] else 0) * W.shape[1]
    check = "y" if 0 < y_size < x.size else "x"
    if check == "x" and not (all_finite(W) and (b is None or all_finite(b))):
        _ref_dense.check_dense_inputs(x, W, b)             # raises, with the reference's message
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))                  # (N, Din)
    y, finite = _products_forward(x2, W, b, check)                              # (N, Dout)
    if not finite:
        _ref_dense.check_dense_inputs(x, W, b)
    return y.reshape(x.shape[:-1] + (W.shape[1],)), DenseFastCache(x2, W, b is not None, tuple(x.shape))


def dense_backward(dy, cache, *, input_grad=True):
    """Returns (dx (..., Din), dW (Din, Dout), db (Dout,) or None); dx is None with ``input_grad=False``."""
    if not isinstance(cache, DenseFastCache):
        return _ref_dense.dense_backward(dy, cache, input_grad=input_grad)
    x2, W, has_bias, x_shape = cache
    check_numpy_dout(dy, x_shape[:-1] + (W.shape[1],), x2.dtype)
    dy2 = np.ascontiguousarray(dy.reshape(-1, dy.shape[-1]))                # (N, Dout)
    dx, dW, db = _products_backward(dy2, x2, W, has_bias, input_grad)
    # NaN/inf in dy is found in dW = x^T dy (Din x Dout, small): a non-finite dy[n, k] makes the whole column
    # dW[:, k] non-finite (x[n, j] * inf is inf or NaN, and no sum with a NaN or inf in it is finite). Only
    # then is dy itself checked, for the reference's message; a finite dy whose dW overflows passes, as there.
    if dW.size == 0 or not all_finite(dW):
        check_dout(dy, x_shape[:-1] + (W.shape[1],), x2.dtype)
    return (dx.reshape(x_shape) if input_grad else None), dW, db


# --------------------------------------------------------------------------------------------
# the products, split by rows over the thread pool
# --------------------------------------------------------------------------------------------

def _products_forward(x2, W, b, check=None):
    """(y, finite): y (N, Dout) = x2 (N, Din) @ W (+ b), x2 C-contiguous.  [L1]

    ``check`` "x" or "y": ``finite`` says whether every entry of that array is finite, each range of rows checked
    by the thread that just multiplied it (so in parallel, and from cache); None: ``finite`` is True."""
    y = np.empty((x2.shape[0], W.shape[1]), dtype=np.result_type(x2, W))
    Wf = _narrow(W, y.dtype)
    if Wf is not None:
        from ..kernels.simd import gemm

    def rows(lo, hi):
        if Wf is not None:
            gemm.ab_rows(x2.reshape(-1), Wf, W.shape[0], W.shape[1], lo, hi, y.reshape(-1))
        else:
            np.matmul(x2[lo:hi], W, out=y[lo:hi])
        if b is not None:
            y[lo:hi] += b
        if check == "y":
            return all_finite(y[lo:hi])
        return check != "x" or all_finite(x2[lo:hi])

    with one_blas_thread():
        finite = map_chunks(rows, x2.shape[0], min_chunk=tuning.DENSE_MIN_ROWS)       # (N, Dout)
    return y, all(finite)


def _use_gemm(x2, dy2):
    """Whether x^T dy goes to ``gemm.atb_rows`` (as (dy^T x)^T): float32 with a narrow dy (at most
    ``tuning.ATB_MAX_DY_COLS`` columns) and x's width a multiple of 16 and at least ``tuning.ATB_MIN_X_COLS``, the
    shapes where it measured faster than OpenBLAS (the output projection and the MLP's second layer)."""
    return (x2.dtype == np.float32 and dy2.dtype == np.float32 and dy2.shape[1] <= tuning.ATB_MAX_DY_COLS
            and x2.shape[1] % 16 == 0 and x2.shape[1] >= tuning.ATB_MIN_X_COLS)


def xt_dy(x2, dy2, lo, hi):
    """x2[lo:hi]^T dy2[lo:hi] (Din, Dout) for C-contiguous x2 (N, Din), dy2 (N, Dout): OpenBLAS, or
    ``gemm.atb_rows`` where ``_use_gemm`` says so."""
    if not _use_gemm(x2, dy2):
        return x2[lo:hi].T @ dy2[lo:hi]
    from ..kernels.simd import gemm
    Din, Dout = x2.shape[1], dy2.shape[1]
    out = np.zeros(Dout * Din, x2.dtype)
    gemm.atb_rows(dy2.reshape(-1), x2.reshape(-1), Dout, Din, lo, hi, out)
    return out.reshape(Dout, Din).T


def _narrow(B, dt):
    """B (K, 40) as a flat C-contiguous array when a product a @ B with this 40-column output goes to
    ``gemm.ab_rows`` (float32, 40 = ``tuning.NARROW_COLS`` columns, K >= ``tuning.NARROW_MIN_K``: y = x W for the
    output projection and the MLP's second layer, dx = dy W^T for the QKV product and the MLP's first layer, at the
    model's width 40, where it measured faster than OpenBLAS), else None."""
    if (dt == np.float32 and B.dtype == np.float32 and B.shape[1] == tuning.NARROW_COLS
            and B.shape[0] >= tuning.NARROW_MIN_K):
        return np.ascontiguousarray(B).reshape(-1)
    return None


def _products_backward(dy2, x2, W, has_bias, input_grad=True):
    """(dx (N, Din) or None when not ``input_grad``, dW (Din, Dout), db (Dout,) or None) for C-contiguous
    dy2 (N, Dout), x2 (N, Din)."""
    dx = np.empty((dy2.shape[0], W.shape[0]), dtype=np.result_type(dy2, W)) if input_grad else None
    Wt = _narrow(W.T, dy2.dtype) if input_grad else None
    if Wt is not None:
        from ..kernels.simd import gemm

    def rows(lo, hi):
        if Wt is not None:
            gemm.ab_rows(dy2.reshape(-1), Wt, W.shape[1], W.shape[0], lo, hi, dx.reshape(-1))
        elif input_grad:
            np.matmul(dy2[lo:hi], W.T, out=dx[lo:hi])                       # dx rows (hi-lo, Din)
        return xt_dy(x2, dy2, lo, hi)                                       # partial dW (Din, Dout)

    with one_blas_thread():
        parts = map_chunks(rows, dy2.shape[0], min_chunk=tuning.DENSE_MIN_ROWS)
    dW = np.array(parts[0], order="C")
    for p in parts[1:]:
        dW += p
    db = dy2.sum(axis=0) if has_bias else None                    # (Dout,)
    return dx, dW, db
