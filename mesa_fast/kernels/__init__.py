"""Numba CPU kernels of mesa_fast: ``plain/`` (readable: read these first) and ``simd/`` (the fast ones).

    kernels/plain/<op>.py   one ``prange`` over the sequences, ordinary loops: linear, softmax attention, mesa layer
    kernels/simd/<op>.py    the fast CPU kernels (lane vectors, fused row blocks), each header naming its plain twin
                            (where there is one) and the ``mesa_ref`` function it re-expresses
    kernels/buffers.py      output buffers and input preparation that the plain and the SIMD launchers share

The op wrappers (``mesa_fast/ops/<op>.py``) check the input and call these; the kernels assume checked input.

Which kernels run linear attention, softmax attention and the mesa layer. Each has a plain version and a SIMD version
(16 or 8 sequences in the lanes of explicit vector registers). ``kernel_module(family)`` returns the module that runs
a family ("linear", "softmax", "mesa"): the one ``runtime.tuning.DEFAULT_KERNELS`` names, unless the environment
variable ``MESA_FAST_KERNELS`` is ``plain`` or ``simd`` (read once, when this package is imported), which then
applies to every family. A plain module and its SIMD twin take the same arguments and return the same results up to
rounding (the layouts they return are described in each module).

On-disk cache guard.  The kernels compile with ``cache=True``, and Numba decides whether a cached kernel is still
valid from the modification time and size of the file that defines it, not of the files it inlines from or the
constants it reads: edit ``simd/lanevec.py`` (the SIMD intrinsics inlined into every SIMD kernel) or a block size in
``runtime/tuning.py`` and ``simd/mesa.py`` would keep loading machine code built from the old ones (seen: NaN
outputs after changing the lane count). So on import this package hashes its own sources (every ``.py`` below this
folder) and ``runtime/tuning.py``, and when the hash differs from the one recorded beside the cache, drops the
cached kernels of this package (every ``__pycache__`` below this folder) before any is loaded. With
``NUMBA_CACHE_DIR`` set, clear that directory yourself after editing a kernel.
"""
from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

from ..runtime import tuning

_HERE = Path(__file__).resolve().parent
_EXTRA_SOURCES = (Path(tuning.__file__).resolve(),)     # read by the kernels at compile time
_STAMP = "kernel-sources.sha256"


def _sources():
    """The files whose contents a cached kernel depends on: this package's sources and the tuning constants."""
    return sorted(_HERE.rglob("*.py")) + list(_EXTRA_SOURCES)


def _sources_digest() -> str:
    h = hashlib.sha256()
    for path in _sources():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _drop_stale_cache() -> None:
    cache = _HERE / "__pycache__"
    stamp = cache / _STAMP
    try:
        digest = _sources_digest()
        if stamp.exists() and stamp.read_text().strip() == digest:
            return
        for folder in _HERE.rglob("__pycache__"):
            for f in folder.iterdir():
                if f.suffix in (".nbi", ".nbc"):
                    f.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        tmp = cache / f"{_STAMP}.{os.getpid()}.tmp"
        tmp.write_text(digest + "\n")
        os.replace(tmp, stamp)
    except OSError:
        pass        # read-only install: Numba then caches elsewhere (or not at all); nothing to guard here


_drop_stale_cache()


KERNELS_ENV = "MESA_FAST_KERNELS"
VARIANTS = ("plain", "simd")
FAMILIES = {"linear": "attention_linear", "softmax": "attention_softmax", "mesa": "mesa"}   # family -> module name
_choice = os.environ.get(KERNELS_ENV, "").strip().lower()      # "" = the defaults


def kernel_module(family: str):
    """The kernel module that runs ``family`` ("linear", "softmax" or "mesa"): ``plain.<op>`` or ``simd.<op>``.

    ``MESA_FAST_KERNELS`` (plain | simd), when set, wins over ``tuning.DEFAULT_KERNELS``; another value raises
    ValueError here, at the first attention or mesa call."""
    if _choice and _choice not in VARIANTS:
        raise ValueError(f"{KERNELS_ENV}: expected one of {VARIANTS} or unset, got {_choice!r}")
    variant = _choice or tuning.DEFAULT_KERNELS[family]
    return importlib.import_module(f".{variant}.{FAMILIES[family]}", __name__)
