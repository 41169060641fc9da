"""Dense layer [L1] on the CPU: the reference's BLAS products, each run single-threaded on the package's threads.

Re-expresses ``mesa_ref.ops.dense`` (y = x W + b; dx = dy W^T, dW = x^T dy, db = sum dy). The products stay the
same BLAS calls (a hand-written Numba product was slower at these sizes); what differs is the threading:

* OpenBLAS's own threads synchronise many times inside one product and busy-wait in between. On a machine whose
  cores are shared with other processes a product can then take hundreds of times longer than on one thread
  (the measurements are in docs/performance.md).
* So while a dense op runs, the BLAS libraries loaded in the process are limited to one thread through
  threadpoolctl (``one_blas_thread``: a ``ThreadpoolController`` made on first use and kept, with SciPy's BLAS,
  which Numba's np.dot calls, loaded before it so that it is among the libraries limited, and its
  ``limit(limits=1, user_api="blas")``; building a controller on every call would cost more than a small
  product), and the previous thread counts come back when the op returns, so the caller's own NumPy code keeps
  its threads between our ops. Nothing is changed at import. The limit is process-wide, as BLAS libraries
  expose it (OpenBLAS's per-thread setter has no effect in NumPy's pthreads build): a BLAS call that another
  thread of the caller makes while a dense op runs also gets one thread. Nested and concurrent dense ops share
  one limit, and the counts come back when the last of them returns.
* The products are split by rows over the package's thread pool (``_pool.map_chunks``), each piece a
  single-threaded BLAS call on its own thread; x^T dy sums the pieces' partial products in range order, so the
  result is the same on every run. Where dy is narrow (the output projection, the MLP's second layer), x^T dy
  runs in ``gemm.atb_rows`` instead of BLAS (``_use_gemm``), and a product with a 40-column output (the
  model's width: y = x W into the residual stream, dx = dy W^T out of the QKV product and the MLP) runs in
  ``gemm.ab_rows`` (``_narrow``): both measured faster there. Fewer than ``MIN_ROWS`` rows per thread: no split. If process CPU time per
  training step grows far beyond 2 x wall time on a busy machine, BLAS worker threads are spinning: look here.

A BLAS library that threadpoolctl does not know is left alone; the products then run with its own threading, as
the reference's do.

Shapes: x (..., Din), W (Din, Dout), b (Dout,) or None, y / dy (..., Dout); N = prod(...) rows.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np
from threadpoolctl import ThreadpoolController

from mesa_ref.ops._common import all_finite

from ._pool import map_chunks

MIN_ROWS = 1024     # rows per thread below which a product is not split
_blas_lock = threading.Lock()
_controller = None      # threadpoolctl.ThreadpoolController, made on the first dense op (lists the loaded libraries)
_blas_depth = 0         # dense ops now running (from any thread)
_blas_limit = None      # the threadpoolctl limiter of the running ops (restores the counts when the last ends)


def blas_controller() -> ThreadpoolController:
    """The ThreadpoolController the dense ops limit (made once, on first use)."""
    global _controller
    with _blas_lock:
        if _controller is None:
            # SciPy's BLAS first: Numba's np.dot (lndense.py) calls it, and a controller lists only the libraries
            # loaded when it is made. Left out, its threads were not limited: each shard's products started a
            # second BLAS thread, and the step slowed down badly (benchmarks/notes.md has the measurement)
            import scipy.linalg.cython_blas  # noqa: F401
            _controller = ThreadpoolController()
        return _controller


@contextlib.contextmanager
def one_blas_thread():
    """The BLAS libraries run single-threaded inside the block (process-wide, see the module docstring); the
    previous counts come back when the last such block, from any thread, ends."""
    global _blas_depth, _blas_limit
    ctl = blas_controller()
    with _blas_lock:
        if _blas_depth == 0:
            _blas_limit = ctl.limit(limits=1, user_api="blas")
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                _blas_limit.restore_original_limits()
                _blas_limit = None


def forward(x2, W, b, check=None):
    """(y, finite): y (N, Dout) = x2 (N, Din) @ W (+ b), x2 C-contiguous.  [L1]

    ``check`` "x" or "y": ``finite`` says whether every entry of that array is finite, each range of rows checked
    by the thread that just multiplied it (so in parallel, and from cache); None: ``finite`` is True."""
    y = np.empty((x2.shape[0], W.shape[1]), dtype=np.result_type(x2, W))
    Wf = _narrow(W, y.dtype)
    if Wf is not None:
        from . import gemm

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
        finite = map_chunks(rows, x2.shape[0], min_chunk=MIN_ROWS)       # (N, Dout)
    return y, all(finite)


def _use_gemm(x2, dy2):
    """Whether x^T dy goes to ``gemm.atb_rows`` (as (dy^T x)^T): float32 with a narrow dy (at most 64 columns) and
    x's width a multiple of 16 and at least 64, the shapes where it measured faster than OpenBLAS (the output
    projection and the MLP's second layer; docs/performance.md)."""
    return (x2.dtype == np.float32 and dy2.dtype == np.float32 and dy2.shape[1] <= 64
            and x2.shape[1] % 16 == 0 and x2.shape[1] >= 64)


def xt_dy(x2, dy2, lo, hi):
    """x2[lo:hi]^T dy2[lo:hi] (Din, Dout) for C-contiguous x2 (N, Din), dy2 (N, Dout): OpenBLAS, or
    ``gemm.atb_rows`` where ``_use_gemm`` says so."""
    if not _use_gemm(x2, dy2):
        return x2[lo:hi].T @ dy2[lo:hi]
    from . import gemm
    Din, Dout = x2.shape[1], dy2.shape[1]
    out = np.zeros(Dout * Din, x2.dtype)
    gemm.atb_rows(dy2.reshape(-1), x2.reshape(-1), Dout, Din, lo, hi, out)
    return out.reshape(Dout, Din).T


def _narrow(B, dt):
    """B (K, 40) as a flat C-contiguous array when a product a @ B with this 40-column output goes to
    ``gemm.ab_rows`` (float32, K >= 32: y = x W for the output projection and the MLP's second layer, dx = dy W^T for
    the QKV product and the MLP's first layer, at the model's width 40, where it measured faster than OpenBLAS;
    docs/performance.md), else None."""
    if dt == np.float32 and B.dtype == np.float32 and B.shape[1] == 40 and B.shape[0] >= 32:
        return np.ascontiguousarray(B).reshape(-1)
    return None


def backward(dy2, x2, W, has_bias, input_grad=True):
    """(dx (N, Din) or None when not ``input_grad``, dW (Din, Dout), db (Dout,) or None) for C-contiguous
    dy2 (N, Dout), x2 (N, Din)."""
    dx = np.empty((dy2.shape[0], W.shape[0]), dtype=np.result_type(dy2, W)) if input_grad else None
    Wt = _narrow(W.T, dy2.dtype) if input_grad else None
    if Wt is not None:
        from . import gemm

    def rows(lo, hi):
        if Wt is not None:
            gemm.ab_rows(dy2.reshape(-1), Wt, W.shape[1], W.shape[0], lo, hi, dx.reshape(-1))
        elif input_grad:
            np.matmul(dy2[lo:hi], W.T, out=dx[lo:hi])                       # dx rows (hi-lo, Din)
        return xt_dy(x2, dy2, lo, hi)                                       # partial dW (Din, Dout)

    with one_blas_thread():
        parts = map_chunks(rows, dy2.shape[0], min_chunk=MIN_ROWS)
    dW = np.array(parts[0], order="C")
    for p in parts[1:]:
        dW += p
    db = dy2.sum(axis=0) if has_bias else None                    # (Dout,)
    return dx, dW, db


SUB_ROWS = 128      # rows per block of the fused dense + GELU ops: the block's (rows, M) activations stay in cache


def forward_gelu(x2, W, b, gelu_fwd):
    """(g, z, t, finite): z (N, M) = x2 (N, Din) @ W + b, g = gelu(z), t = tanh(...) (``elementwise.bias_gelu_fwd``,
    passed in), block of SUB_ROWS rows by block, each block's GELU right after its product (while z is in cache);
    ``finite``: no NaN/inf in z.  [L1] + [L5]"""
    N, M = x2.shape[0], W.shape[1]
    dt = np.result_type(x2, W)
    z = np.empty((N, M), dt)
    g = np.empty((N, M), dt)
    t = np.empty((N, M), dt)
    bb = b if b is not None else np.zeros(M, dt)

    def rows(lo, hi):
        ok = True
        for s0 in range(lo, hi, SUB_ROWS):
            s1 = min(hi, s0 + SUB_ROWS)
            np.matmul(x2[s0:s1], W, out=z[s0:s1])
            ok &= gelu_fwd(z[s0:s1].reshape(-1), bb, M, g[s0:s1].reshape(-1), t[s0:s1].reshape(-1))
        return ok

    with one_blas_thread():
        finite = map_chunks(rows, N, min_chunk=MIN_ROWS)
    return g, z, t, all(finite)


def backward_gelu(dg2, x2, W, z, t, has_bias, input_grad, gelu_bwd):
    """(dx or None, dW, db or None, finite) of g = gelu(x2 W + b) for C-contiguous dg2, z, t (N, M), x2 (N, Din):
    per block of SUB_ROWS rows dz = dg gelu'(z) (``elementwise.gelu_bwd_rows``, passed in, with the bias gradient's
    float64 column sums), then its products dx = dz W^T and dW += x^T dz while dz is in cache; partial dW, db
    summed in range order.  ``finite``: no NaN/inf in dg.  [L1] + [L5]"""
    N, M = dg2.shape
    dt = np.result_type(dg2, W)
    dx = np.empty((N, W.shape[0]), dt) if input_grad else None
    Wt = _narrow(W.T, dt) if input_grad else None
    if Wt is not None:
        from . import gemm

    def rows(lo, hi):
        dz = np.empty((min(SUB_ROWS, hi - lo), M), dt)
        part = np.zeros((W.shape[0], M), dt)
        tmp = np.empty((W.shape[0], M), dt)
        sb = np.zeros(M)
        ok = True
        for s0 in range(lo, hi, SUB_ROWS):
            s1 = min(hi, s0 + SUB_ROWS)
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
        parts = map_chunks(rows, N, min_chunk=MIN_ROWS)
    dW, sb, ok = parts[0]
    finite = ok
    for p, s, o in parts[1:]:
        dW += p
        sb += s
        finite &= o
    return dx, dW, (sb.astype(dt) if has_bias else None), finite
