"""BLAS thread control: the BLAS libraries run single-threaded while a fast op's products run on the package's threads.

OpenBLAS's own threads synchronise many times inside one product and busy-wait in between. On a machine whose cores
are shared with other processes a product can then take hundreds of times longer than on one thread
(docs/performance-archive/notes.md, "Dense layer"). The fast ops split their products by rows over the package's
thread pool instead (``runtime.pool.map_chunks``), each piece a single-threaded BLAS call, so while such an op runs
the BLAS libraries loaded in the process are limited to one thread through threadpoolctl (``one_blas_thread``: a
``ThreadpoolController`` made on first use and kept, with SciPy's BLAS, which Numba's np.dot calls, loaded before it
so that it is among the libraries limited, and its ``limit(limits=1, user_api="blas")``; building a controller on
every call would cost more than a small product). The previous thread counts come back when the op returns, so the
caller's own NumPy code keeps its threads between our ops. Nothing is changed at import.

The limit is process-wide, as BLAS libraries expose it (OpenBLAS's per-thread setter has no effect in NumPy's
pthreads build): a BLAS call that another thread of the caller makes while a fast op runs also gets one thread.
Nested and concurrent ops share one limit, and the counts come back when the last of them returns. A BLAS library
that threadpoolctl does not know is left alone; the products then run with its own threading, as the reference's
do. If process CPU time per training step grows far beyond 2 x wall time on a busy machine, BLAS worker threads are
spinning: look here.
"""
from __future__ import annotations

import contextlib
import threading

from threadpoolctl import ThreadpoolController

_blas_lock = threading.Lock()
_controller = None      # threadpoolctl.ThreadpoolController, made on the first use (lists the loaded libraries)
_blas_depth = 0         # blocks now running (from any thread)
_blas_limit = None      # the threadpoolctl limiter of the running blocks (restores the counts when the last ends)


def blas_controller() -> ThreadpoolController:
    """The ThreadpoolController the fast ops limit (made once, on first use)."""
    global _controller
    with _blas_lock:
        if _controller is None:
            # SciPy's BLAS first: Numba's np.dot (kernels/simd/layernorm_dense.py) calls it, and a controller lists
            # only the libraries loaded when it is made. Left out, its threads were not limited: each shard's products
            # started a second BLAS thread, and the step slowed down badly (docs/performance-archive/notes.md, "The
            # pre-LayerNorm fusions")
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
