"""Choosing the ops namespace for a job or a figure: "ref" (mesa_ref.ops, NumPy) or "fast" (mesa_fast.ops: Numba
on the CPU, CuPy on a GPU).  The fast package is imported only when it is chosen, so the lab runs the reference
where Numba is not installed."""
from __future__ import annotations

from mesa_ref.runio import CLIError
from mesa_ref.train import reference_backend


def fast_available() -> bool:
    """True when mesa_fast and its Numba dependency import."""
    try:
        import mesa_fast  # noqa: F401
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(name: str):
    """(ops namespace, array module) for "ref" or "fast" (``mesa_fast.train.resolve_backend``: on CuPy the array
    module is cupy, and the fast backend's heap setting is made)."""
    if name == "ref":
        return reference_backend(name)
    if name != "fast":
        raise CLIError(f"backend: expected 'ref' or 'fast', got {name!r}")
    if not fast_available():
        raise CLIError("the fast backend needs mesa_fast and numba (pip install -e '.[fast]')")
    from mesa_fast.train import resolve_backend as fast_backend
    return fast_backend(name)
