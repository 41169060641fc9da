"""Choosing the ops namespace: "ref" (mesa_ref.ops, NumPy) or "fast" (mesa_fast.ops: Numba on the CPU,
CuPy on a GPU).  Used by the trainer's command line and by every figure script."""
from __future__ import annotations

import numpy as np

from .runio import CLIError


def fast_available() -> bool:
    """True when mesa_fast and its Numba dependency import."""
    try:
        import mesa_fast  # noqa: F401
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(name: str):
    """Return (ops namespace, array module) for "ref" or "fast".  With the fast backend on CuPy
    (mesa_fast.get_backend() == "cupy"), the array module is cupy, so parameters and batches live on the GPU."""
    if name == "ref":
        from . import ops
        return ops, np
    if name != "fast":
        raise CLIError(f"backend: expected 'ref' or 'fast', got {name!r}")
    if not fast_available():
        raise CLIError("the fast backend needs mesa_fast and numba (pip install -e '.[fast]')")
    import mesa_fast
    if mesa_fast.get_backend() == "cupy":
        import cupy
        return mesa_fast.ops, cupy
    return mesa_fast.ops, np
