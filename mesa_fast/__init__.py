"""mesa_fast: the ``mesa_ref`` API with fast kernels (Numba on the CPU, CuPy/CUDA on a GPU).

    import mesa_fast
    mesa_fast.ops.mesa_forward(q, k, v, lam)     # same names and signatures as mesa_ref.ops
    mesa_fast.set_backend("numba" | "cupy" | "auto" | "cudasim")   # or MESA_BACKEND; cudasim: mesa_fast.backend
    mesa_fast.get_backend()                            # the resolved choice
    mesa_fast.keep_freed_memory()                      # optional, once per process: see below

NumPy in -> NumPy out, CuPy in -> CuPy out (see ``mesa_fast.backend`` for the dispatch rule).
CuPy is optional and imported only when a GPU path is taken. Numba is imported with mesa_fast (the
thread pool asks it for the thread count); the kernels compile, or load from Numba's cache, on first use.

Importing mesa_fast changes no process-wide setting. Two are made explicitly instead:
* ``keep_freed_memory()`` keeps freed memory in the C heap (glibc ``mallopt``), so that a training step's large
  temporaries do not page-fault every step; the training entry points call it, a library user may
  (``MESA_FAST_KEEP_HEAP=0`` makes it a no-op; runtime/heap.py).
* The fast dense op limits the BLAS libraries to one thread while it runs, through threadpoolctl, and puts the
  previous counts back when it returns (runtime/blas.py).
"""
from mesa_ref import __version__  # noqa: F401

from . import ops  # noqa: F401
from .backend import get_backend, set_backend  # noqa: F401
from .runtime.heap import keep_freed_memory  # noqa: F401

__all__ = ["ops", "set_backend", "get_backend", "keep_freed_memory", "__version__"]
