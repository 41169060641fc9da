"""Input checks (arrays, and the scalar ``check_int`` / ``check_number``) and the array-module helpers shared by every op (``array_module``, ``to_host``).

Every public op validates its inputs before doing any work, so that a wrong shape,
dtype or a non-finite value raises ``ValueError`` naming the argument rather than
producing a silent NaN downstream (docs/design.md, "Public contract").

The ops are written against an array module ``xp`` (NumPy, or CuPy when a CuPy array
comes in), so ``mesa_fast`` can reuse the reference ops that need no custom kernel.
``to_host(a)`` brings any array back as NumPy (``a.get()`` for CuPy); use it wherever a result leaves the
device, rather than another ``.get()`` test.
"""
from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    CuPy is imported lazily, only when an array that is not a NumPy array shows up.
    """
    for a in arrays:
        if a is None or isinstance(a, (np.ndarray, np.generic, float, int)):
            continue
        if is_cupy(a):
            import cupy  # noqa: PLC0415  (optional dependency)
            return cupy
    return np


def is_cupy(x) -> bool:
    """True when ``x`` is a CuPy array (or other CuPy object), without importing CuPy."""
    return type(x).__module__.startswith("cupy")


def is_array(x) -> bool:
    return isinstance(x, np.ndarray) or is_cupy(x)


def to_host(a):
    """``a`` as a NumPy array: a CuPy array is copied to the host (``a.get()``); anything else goes through
    ``np.asarray`` (no copy for a NumPy array). The one host-transfer helper of the toolkit."""
    return a.get() if is_cupy(a) else np.asarray(a)


def check_float_array(name: str, x, *, ndim: int | None = None, finite: bool = True):
    """Raise ValueError unless ``x`` is a float32/float64 array of rank ``ndim`` with finite values."""
    if not is_array(x):
        raise ValueError(f"{name}: expected a float32 or float64 array, got {type(x).__name__}")
    if np.dtype(x.dtype) not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected dtype float32 or float64, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected a rank-{ndim} array, got shape {tuple(x.shape)}")
    if finite and not all_finite(x):
        raise ValueError(f"{name}: contains non-finite values (NaN or inf)")
    return x


def check_int(name: str, v, minimum: int = 1) -> int:
    """``v`` as an int; ValueError naming ``name`` unless it is an integer (not a bool) of at least ``minimum``."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        what = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
        raise ValueError(f"{name}: expected {what}, got {v!r}")
    return int(v)


def check_number(name: str, v, *, positive=False, nonneg=False) -> float:
    """``v`` as a float; ValueError naming ``name`` unless it is a finite number (> 0 with ``positive``, >= 0 with
    ``nonneg``)."""
    try:
        f = float(v)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected a number, got {v!r}") from e
    if not np.isfinite(f):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    if positive and f <= 0:
        raise ValueError(f"{name}: expected a positive number, got {v!r}")
    if nonneg and f < 0:
        raise ValueError(f"{name}: expected a non-negative number, got {v!r}")
    return f


def _contiguous_order(x):
    """x with its axes reordered so that the result is C-contiguous, if some order makes it so (a transposed or
    head-split view of a contiguous buffer); else x. The result holds exactly x's elements."""
    if x.flags.c_contiguous or x.ndim < 2:
        return x
    y = x.transpose(sorted(range(x.ndim), key=lambda a: -abs(x.strides[a])))
    return y if y.flags.c_contiguous else x


def all_finite(x) -> bool:
    """True when every entry of the float array x is finite (True for an empty array)."""
    if not x.size:
        return True
    xp = array_module(x)
    y = _contiguous_order(x)          # a reduction over contiguous memory is faster than over a strided view
    # min and max are NaN/inf exactly when some entry is: two reductions, no boolean temporary
    return bool(xp.isfinite(y.min())) and bool(xp.isfinite(y.max()))


def check_same_dtype(**arrays):
    """Raise ValueError unless all given arrays share one dtype and one device/module."""
    items = [(k, v) for k, v in arrays.items() if v is not None]
    if not items:
        return None
    name0, a0 = items[0]
    mod0 = array_module(a0)
    for name, a in items[1:]:
        if a.dtype != a0.dtype:
            raise ValueError(f"{name}: dtype {a.dtype} does not match {name0}'s dtype {a0.dtype}")
        if array_module(a) is not mod0:
            raise ValueError(f"{name}: lives on a different device/array module than {name0}")
    return a0.dtype


def check_qkv(q, k, v, *, finite=True):
    """Validate attention inputs: q, k of shape (B, H, T, d), v of shape (B, H, T, dv), and (unless ``finite`` is
    False) finite values.

    Returns (B, H, T, d, dv).
    """
    check_float_array("q", q, ndim=4, finite=finite)
    check_float_array("k", k, ndim=4, finite=finite)
    check_float_array("v", v, ndim=4, finite=finite)
    check_same_dtype(q=q, k=k, v=v)
    if k.shape != q.shape:
        raise ValueError(f"k: expected shape {tuple(q.shape)} (same as q), got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v: expected leading shape (B, H, T) = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    B, H, T, d = q.shape
    if min(B, H, T, d, v.shape[3]) < 1:
        raise ValueError(f"q, k, v: every dimension must be >= 1, got q {tuple(q.shape)}, v {tuple(v.shape)}")
    return B, H, T, d, v.shape[3]


def check_dout(dout, expected_shape, dtype, *, finite=True):
    check_float_array("dout", dout, finite=finite)
    if tuple(dout.shape) != tuple(expected_shape):
        raise ValueError(f"dout: expected shape {tuple(expected_shape)}, got {tuple(dout.shape)}")
    if dout.dtype != dtype:
        raise ValueError(f"dout: expected dtype {dtype} (the forward's), got {dout.dtype}")
    return dout


def causal_mask(T: int, xp=np):
    """Boolean (T, T) mask, True where t' <= t (row t, column t')."""
    return xp.tril(xp.ones((T, T), dtype=bool))
