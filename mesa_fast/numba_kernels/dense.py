"""Dense layer [L1] on the CPU: the reference's BLAS products, with the threading done here.

Re-expresses ``mesa_ref.ops.dense`` (y = x W + b; dx = dy W^T, dW = x^T dy, db = sum dy). The
products stay BLAS calls (no hand-written kernel beats OpenBLAS at these sizes); what differs is
who runs the threads:

* OpenBLAS's own threads synchronise many times inside one product and busy-wait in between.
  On a machine whose cores are shared with other processes that is a disaster: measured on the
  2-core machine under load, ``x.T @ dy`` for x (12800, 40), dy (12800, 80) took ~950 ms wall
  with OpenBLAS's 2 threads and ~2 ms with 1 thread.
* So every product here runs with OpenBLAS set to 1 thread *for the calling thread only*
  (``openblas_set_num_threads_local``, OpenBLAS >= 0.3.27; nothing global changes), and the rows
  are split into ``numba.get_num_threads()`` contiguous blocks run on a small thread pool (NumPy
  releases the GIL inside BLAS): one join per product instead of many. dW is summed from the
  per-block partial products (another summation order than the reference's single product:
  rounding-level differences only).

Where the thread-local switch is not found (another BLAS, or not Linux) the products run as the
reference runs them.

Shapes: x (..., Din), W (Din, Dout), b (Dout,) or None, y / dy (..., Dout); N = prod(...) rows.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import threading

import numpy as np

_UNSET = object()
_set_local = _UNSET
_POOL = None
_POOL_LOCK = threading.Lock()
_tls = threading.local()


def _find_set_local():
    """ctypes handle of NumPy's OpenBLAS ``openblas_set_num_threads_local``, or None."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths, key=lambda p: "numpy" not in p):     # NumPy's own BLAS first
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
        return fn
    return None


def _one_blas_thread():
    """Make OpenBLAS single-threaded for the calling thread (idempotent per thread)."""
    global _set_local
    if _set_local is _UNSET:
        np.ones((2, 2)) @ np.ones((2, 2))          # make sure NumPy's BLAS is loaded
        _set_local = _find_set_local()
    if _set_local is not None and not getattr(_tls, "single", False):
        _set_local(1)
        _tls.single = True


def _release_blas_thread():
    """Undo ``_one_blas_thread`` for the calling thread (0 = follow OpenBLAS's global setting)."""
    if _set_local not in (None, _UNSET) and getattr(_tls, "single", False):
        _set_local(0)
        _tls.single = False


def _worker(fn, *args):
    _one_blas_thread()                    # pool threads stay single-threaded for BLAS
    return fn(*args)


def _run_blocks(fn, nrows, nthreads):
    """fn(r0, r1) over row blocks [r0, r1) covering [0, nrows); returns the results in order.
    The calling thread does the first block, with OpenBLAS single-threaded only for the call."""
    nthreads = max(1, min(nthreads, nrows // 256))           # tiny products: not worth a join
    bounds = [nrows * i // nthreads for i in range(nthreads + 1)]
    futures = []
    if nthreads > 1:
        global _POOL
        with _POOL_LOCK:
            if _POOL is None or _POOL._max_workers < nthreads - 1:
                _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=nthreads - 1,
                                                              thread_name_prefix="mesa_fast_dense")
            pool = _POOL
        futures = [pool.submit(_worker, fn, bounds[i], bounds[i + 1]) for i in range(1, nthreads)]
    _one_blas_thread()
    try:
        first = fn(bounds[0], bounds[1])
    finally:
        _release_blas_thread()
    return [first] + [f.result() for f in futures]


def _nthreads():
    import numba
    return numba.get_num_threads()


def forward(x2, W, b):
    """y (N, Dout) = x2 (N, Din) @ W (+ b), x2 C-contiguous.  [L1]"""
    N = x2.shape[0]
    y = np.empty((N, W.shape[1]), np.result_type(x2, W))

    def block(r0, r1):
        np.matmul(x2[r0:r1], W, out=y[r0:r1])
        if b is not None:
            y[r0:r1] += b

    _run_blocks(block, N, _nthreads())
    return y


def backward(dy2, x2, W, has_bias):
    """(dx (N, Din), dW (Din, Dout), db (Dout,) or None) for C-contiguous dy2 (N, Dout), x2 (N, Din)."""
    N = x2.shape[0]
    dx = np.empty(x2.shape, x2.dtype)
    WT = W.T

    def block(r0, r1):
        np.matmul(dy2[r0:r1], WT, out=dx[r0:r1])
        dW = x2[r0:r1].T @ dy2[r0:r1]
        db = dy2[r0:r1].sum(axis=0) if has_bias else None
        return dW, db

    parts = _run_blocks(block, N, _nthreads())
    dW = parts[0][0]
    for p in parts[1:]:
        dW += p[0]
    db = None
    if has_bias:
        db = parts[0][1]
        for p in parts[1:]:
            db += p[1]
    return dx, dW, db
