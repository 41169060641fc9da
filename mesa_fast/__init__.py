"""mesa_fast: the ``mesa_ref`` API with fast kernels (Numba on the CPU, CuPy/CUDA on a GPU).

    import mesa_fast
    mesa_fast.ops.mesa_forward(q, k, v, lam)     # same names and signatures as mesa_ref.ops
    mesa_fast.set_backend("numba" | "cupy" | "auto")   # or the MESA_BACKEND environment variable
    mesa_fast.get_backend()                            # the resolved choice

NumPy in -> NumPy out, CuPy in -> CuPy out (see ``mesa_fast.backend`` for the dispatch rule).
CuPy is optional and imported only when a GPU path is taken. Numba is imported with mesa_fast (the
thread pool asks it for the thread count); the kernels compile, or load from Numba's cache, on first use.
Importing mesa_fast also keeps freed memory in the process heap (glibc; see numba_kernels/_heap.py).
"""
from mesa_ref import __version__  # noqa: F401

from . import ops  # noqa: F401
from .backend import get_backend, set_backend  # noqa: F401

__all__ = ["ops", "set_backend", "get_backend", "__version__"]
