"""The backend switch of ``mesa_fast``: which kernels run the mesa layer for NumPy input.

    mesa_fast.set_backend("numba" | "cupy" | "auto" | "cudasim")   (or the MESA_BACKEND environment variable)
    mesa_fast.get_backend()  -> "numba" | "cupy" | "cudasim"        (the resolved choice)

Dispatch rule. In every op of ``mesa_fast.ops``, NumPy in -> NumPy out and CuPy in -> CuPy out. Where the work
runs depends on the op:

* The mesa layer (``mesa_forward`` / ``mesa_backward``, mesa_fast/ops/mesa.py), the ops with both a Numba and a
  CUDA kernel, and the only ones the backend setting affects:
    CuPy arrays in -> the CUDA kernels, whatever the setting: the arrays' module says where they live.
    NumPy arrays in -> the setting decides:
      "numba": the Numba CPU kernels.
      "cupy":  the arrays are copied to the current GPU, the CUDA kernels run, and the results are
               copied back. (Convenient, but every call pays two transfers; pass CuPy arrays to avoid them.)
      "auto":  "cupy" if CuPy imports and a CUDA device is usable, else "numba". The choice is
               made once, on first use, logged at INFO level, and reported by ``get_backend()``.
      "cudasim": the CUDA kernels (mesa_fast/cuda/mesa.py) run on the NumPy arrays in Numba's CUDA simulator,
               one Python thread per GPU thread. Very slow (seconds for a few short sequences): for checking the
               GPU kernels' logic without a GPU, and for debugging them with print or pdb; never for training.
               Needs NUMBA_ENABLE_CUDASIM=1 in the environment before numba is imported (for example
               ``NUMBA_ENABLE_CUDASIM=1 MESA_BACKEND=cudasim python ...``); without it, choosing "cudasim"
               raises ValueError saying so. "auto" never picks it.
* The other ops with Numba kernels (dense, linear and softmax attention, layernorm, gelu, clip, MSE, head
  layout, the fused MLP and LayerNorm ops; ``mesa_fast/ops/<op>.py``) have no CUDA twin: NumPy input always runs the
  Numba kernels (copying it to a GPU would buy nothing), CuPy input runs the reference op, which is written against
  an array module.
* Every other op is the reference's own and runs on NumPy or CuPy as its inputs are (the chunkwise mesa
  layer [M5] among them).

An explicit ``set_backend`` call wins over MESA_BACKEND; the variable is read when no explicit
choice was made. A name other than the four raises ValueError (an unusable "cupy" raises
RuntimeError at first use, naming what is missing). Within mesa_fast, CuPy is imported only here, lazily
(``get_cupy``; ``mesa_fast.cuda`` goes through it); ``mesa_ref.ops._common.array_module`` imports it when a CuPy
array comes in.
"""
from __future__ import annotations

import logging
import os
import threading

__all__ = ["BACKENDS", "set_backend", "get_backend", "cupy_available", "get_cupy"]

BACKENDS = ("numba", "cupy", "auto", "cudasim")
SIM_VAR = "NUMBA_ENABLE_CUDASIM"
ENV_VAR = "MESA_BACKEND"

_log = logging.getLogger("mesa_fast")
_lock = threading.Lock()
_requested: str | None = None        # set_backend's argument (None: read MESA_BACKEND)
_auto_choice: str | None = None      # what "auto" resolved to (resolved once)
_cupy_status: tuple | None = None    # (ok, module or None, reason)


def _check_name(name, source):
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {BACKENDS}")
    return name.strip().lower()


def set_backend(name: str) -> str:
    """Choose the kernels for NumPy input: "numba", "cupy", "auto" or "cudasim". Returns the resolved name.

    Raises ValueError for any other name, and for "cudasim" when Numba's CUDA simulator is off. "cupy" is
    checked at once (RuntimeError if CuPy or a CUDA device is missing); "auto" resolves now and logs its choice.
    """
    global _requested
    name = _check_name(name, "backend")
    with _lock:
        _requested = name
    return get_backend()


def get_backend() -> str:
    """The backend NumPy input goes to now: "numba", "cupy" or "cudasim" (after resolving "auto")."""
    global _auto_choice
    with _lock:
        requested = _requested
    if requested is None:
        requested = _check_name(os.environ.get(ENV_VAR, "auto"), f"backend (from ${ENV_VAR})")
    if requested == "numba":
        return "numba"
    if requested == "cudasim":
        _check_simulator()
        return "cudasim"
    if requested == "cupy":
        ok, _, reason = _probe_cupy()
        if not ok:
            raise RuntimeError(f"backend 'cupy' requested but unusable: {reason}")
        return "cupy"
    with _lock:
        if _auto_choice is None:
            ok, _, reason = _probe_cupy()
            _auto_choice = "cupy" if ok else "numba"
            _log.info("mesa_fast backend 'auto' chose %r (%s)", _auto_choice,
                      "CuPy and a CUDA device found" if ok else reason)
        return _auto_choice


def _check_simulator():
    """ValueError unless Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1 when numba was imported)."""
    from numba import config  # noqa: PLC0415  (numba is imported with mesa_fast anyway)
    if not config.ENABLE_CUDASIM:
        raise ValueError(f"backend 'cudasim' needs Numba's CUDA simulator: set {SIM_VAR}=1 in the environment "
                         "before numba is imported (e.g. NUMBA_ENABLE_CUDASIM=1 MESA_BACKEND=cudasim python ...); "
                         f"{SIM_VAR} is {os.environ.get(SIM_VAR, 'unset')!r} here")


def _probe_cupy():
    """(ok, cupy module or None, reason): can CuPy run a kernel on a CUDA device here?"""
    global _cupy_status
    if _cupy_status is not None:
        return _cupy_status
    try:
        import cupy  # noqa: PLC0415  (optional dependency, imported lazily)
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        _cupy_status = (False, None, f"CuPy does not import ({type(exc).__name__}: {exc})")
        return _cupy_status
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            raise RuntimeError("no CUDA device")
        (cupy.arange(4, dtype=cupy.float32) * 2).sum().item()   # a kernel launch really works
    except Exception as exc:
        _cupy_status = (False, None, f"no usable CUDA device ({type(exc).__name__}: {exc})")
        return _cupy_status
    _cupy_status = (True, cupy, "ok")
    return _cupy_status


def cupy_available() -> bool:
    """True if CuPy imports and can launch a kernel on a CUDA device."""
    return _probe_cupy()[0]


def get_cupy():
    """The cupy module (RuntimeError, with the reason, if it is not usable)."""
    ok, cupy, reason = _probe_cupy()
    if not ok:
        raise RuntimeError(f"CuPy is not usable: {reason}")
    return cupy


def _reset_for_tests():
    """Forget the explicit choice and the resolved "auto" (tests of MESA_BACKEND use this)."""
    global _requested, _auto_choice
    with _lock:
        _requested = None
        _auto_choice = None
