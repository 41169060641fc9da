"""Helpers the fast op wrappers share: where input goes, and the conditions of the fused ops.

(The checks themselves are the reference's, ``mesa_ref.ops._common``, so the ValueErrors are the same.)
"""
from __future__ import annotations

import importlib

import numpy as np

from mesa_ref.ops._common import all_finite, array_module, check_dout

from ..runtime.pool import map_chunks


def on_numpy(*arrays) -> bool:
    """Whether the arrays (None skipped) are NumPy ones: then the Numba kernels run; CuPy ones go to the reference."""
    return array_module(*arrays) is np


def check_numpy_dout(dout, shape, dtype, inputs: str = "input"):
    """A backward's upstream gradient: the reference's shape and dtype checks (NaN/inf are left to the kernels),
    and a NumPy array like the forward's ``inputs``."""
    check_dout(dout, shape, dtype, finite=False)
    if not on_numpy(dout):
        raise ValueError(f"dout: lives on a different device/array module than the forward's {inputs}")


def float_numpy(arrays) -> bool:
    """Whether the arrays are all NumPy arrays of one float dtype, float32 or float64 (the fused ops' first
    condition)."""
    if not all(isinstance(a, np.ndarray) for a in arrays):
        return False
    dt = arrays[0].dtype
    return dt in (np.float32, np.float64) and all(a.dtype == dt for a in arrays)


def ln_params_fusable(x, w, b, eps) -> bool:
    """The LayerNorm's part of a fused op's conditions (x at least 1-D): w and b NumPy arrays of x's dtype and shape
    (D,), finite, and eps > 0."""
    D = x.shape[-1]
    for a in (w, b):
        if not isinstance(a, np.ndarray) or a.dtype != x.dtype or a.shape != (D,) or not all_finite(a):
            return False
    return isinstance(eps, (int, float, np.floating)) and eps > 0


def elementwise_split(kernel, n, min_chunk, *arrays):
    """all(kernel(*(a[lo:hi] for a in arrays)) over ranges of 0..n-1 shared out to the thread pool) for 1-D
    arrays of length n (``runtime.pool.map_chunks``, at least ``min_chunk`` elements per range; the kernels release
    the GIL)."""
    return all(map_chunks(lambda lo, hi: kernel(*(a[lo:hi] for a in arrays)), n, min_chunk=min_chunk))


_SIMD = {}


def simd(name):
    """The module ``mesa_fast.kernels.simd.<name>``, imported on first use, so that ``import mesa_fast`` defines no
    Numba dispatcher (Numba itself is imported with mesa_fast, by the thread pool; the kernels compile, or load from
    Numba's cache, on their first call either way)."""
    module = _SIMD.get(name)
    if module is None:
        module = _SIMD[name] = importlib.import_module(f"mesa_fast.kernels.simd.{name}")
    return module
