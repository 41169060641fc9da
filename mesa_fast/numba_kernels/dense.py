"""Dense layer [L1] on the CPU: the reference's BLAS products, run single-threaded.

Re-expresses ``mesa_ref.ops.dense`` (y = x W + b; dx = dy W^T, dW = x^T dy, db = sum dy). The
products stay the same BLAS calls (no hand-written kernel beats OpenBLAS at these sizes; a naive
Numba product measured 5-10x slower); what differs is the threading:

* OpenBLAS's own threads synchronise many times inside one product and busy-wait in between.
  On a machine whose cores are shared with other processes that is a disaster: measured on the
  2-core machine under load, ``x.T @ dy`` for x (12800, 40), dy (12800, 80) took ~950 ms wall
  with OpenBLAS's 2 threads and ~2 ms with 1 thread.
* So every product here runs with OpenBLAS set to 1 thread (``openblas_set_num_threads``, found
  in the BLAS NumPy loaded), and the previous setting is put back when the op returns, so the
  caller's own NumPy code keeps its threads between our ops. The setting is process-wide: a
  BLAS call another thread of the caller makes while one of our dense ops runs also gets one
  thread. (``openblas_set_num_threads_local``, OpenBLAS >= 0.3.27, would limit only the
  calling thread, but in NumPy's pthreads OpenBLAS it does not: measured 2026-11-29 with
  OPENBLAS_NUM_THREADS=2, OpenBLAS's own worker thread still ran during every product, and
  the training step took 59 ms against 35 ms with the global setting.)
* The products are split by rows over the package's thread pool (``_pool.map_chunks``), each piece
  a single-threaded BLAS call on its own thread; x^T dy sums the pieces' partial products. Measured on
  the 2-core Xeon machine (2026-11-29), one QKV product forward and backward at the default model's
  shape (12800 x 40 by 40 x 240): 4.1-5.1 ms median against 7.1-9.7 ms unsplit, at the same process
  CPU time (7.7-10.6 vs 7.1-9.8 ms): no OpenBLAS worker threads are involved, so none busy-wait.
  With a competing busy process (``yes``) on one of the two cores: 8.3 ms split against 7.8-11.8 ms
  unsplit, CPU time 11-12 ms against 8-12 ms, so no spinning blow-up. (An earlier split, measured on
  the AMD machine under load, recorded OpenBLAS's own workers spinning: ~770 ms of CPU per training
  step; if process CPU time per step grows far beyond 2 x wall time on a busy machine, look here
  first.) Fewer than ``MIN_ROWS`` rows per thread: no split.

Where the setter is not found (another BLAS) the products run as the reference runs them.

Shapes: x (..., Din), W (Din, Dout), b (Dout,) or None, y / dy (..., Dout); N = prod(...) rows.
"""
from __future__ import annotations

import contextlib
import ctypes
import threading

import numpy as np

from mesa_ref.ops._common import all_finite

from ._pool import map_chunks

MIN_ROWS = 1024     # rows per thread below which a product is not split
_UNSET = object()
_blas = _UNSET          # (get, set) ctypes handles of OpenBLAS's global thread count, or None
_blas_lock = threading.Lock()
_blas_depth = 0         # dense ops now running (from any thread)
_blas_saved = 1         # the thread count to put back when the last one returns

_SETTERS = (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
            ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
            ("openblas_get_num_threads", "openblas_set_num_threads"))


def _find_blas():
    """(get, set) for the thread count of NumPy's OpenBLAS, or None (another BLAS, or not Linux)."""
    np.ones((2, 2)) @ np.ones((2, 2))              # make sure NumPy's BLAS is loaded
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths, key=lambda p: "numpy" not in p):     # NumPy's own BLAS first
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _SETTERS:
            get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and set_ is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                set_.restype, set_.argtypes = None, [ctypes.c_int]
                return get, set_
    return None


@contextlib.contextmanager
def one_blas_thread():
    """OpenBLAS runs single-threaded inside the block (process-wide, see the module docstring); the previous
    count comes back when the last such block, from any thread, ends."""
    global _blas, _blas_depth, _blas_saved
    with _blas_lock:
        if _blas is _UNSET:
            _blas = _find_blas()
        if _blas is not None:
            if _blas_depth == 0:
                _blas_saved = _blas[0]()
                if _blas_saved != 1:
                    _blas[1](1)
            _blas_depth += 1
    try:
        yield
    finally:
        if _blas is not None:
            with _blas_lock:
                _blas_depth -= 1
                if _blas_depth == 0 and _blas_saved != 1:
                    _blas[1](_blas_saved)


def forward(x2, W, b, check=None):
    """(y, finite): y (N, Dout) = x2 (N, Din) @ W (+ b), x2 C-contiguous.  [L1]

    ``check`` "x" or "y": ``finite`` says whether every entry of that array is finite, each range of rows checked
    by the thread that just multiplied it (so in parallel, and from cache); None: ``finite`` is True."""
    y = np.empty((x2.shape[0], W.shape[1]), dtype=np.result_type(x2, W))

    def rows(lo, hi):
        np.matmul(x2[lo:hi], W, out=y[lo:hi])
        if b is not None:
            y[lo:hi] += b
        if check == "y":
            return all_finite(y[lo:hi])
        return check != "x" or all_finite(x2[lo:hi])

    with one_blas_thread():
        finite = map_chunks(rows, x2.shape[0], min_chunk=MIN_ROWS)       # (N, Dout)
    return y, all(finite)


def backward(dy2, x2, W, has_bias, input_grad=True):
    """(dx (N, Din) or None when not ``input_grad``, dW (Din, Dout), db (Dout,) or None) for C-contiguous
    dy2 (N, Dout), x2 (N, Din)."""
    dx = np.empty((dy2.shape[0], W.shape[0]), dtype=np.result_type(dy2, W)) if input_grad else None

    def rows(lo, hi):
        if input_grad:
            np.matmul(dy2[lo:hi], W.T, out=dx[lo:hi])                       # dx rows (hi-lo, Din)
        return x2[lo:hi].T @ dy2[lo:hi]                                     # partial dW (Din, Dout)

    with one_blas_thread():
        parts = map_chunks(rows, dy2.shape[0], min_chunk=MIN_ROWS)
    dW = parts[0]
    for p in parts[1:]:
        dW += p
    db = dy2.sum(axis=0) if has_bias else None                    # (Dout,)
    return dx, dW, db
