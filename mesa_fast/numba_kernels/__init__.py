"""Numba CPU kernels of mesa_fast.

On-disk cache guard.  The kernels compile with ``cache=True``, and Numba decides whether a cached kernel is
still valid from the modification time and size of the file that defines it, not of the files it inlines
from: edit ``_simd.py`` (the SIMD intrinsics inlined into every kernel) and ``mesa.py`` would keep loading
machine code built from the old intrinsics (seen: NaN outputs after changing the lane count).  So on import
this package hashes its own sources and, when the hash differs from the one recorded beside the cache, drops
the cached kernels of this package before any is loaded.  Only ``__pycache__`` next to these files is
managed: with ``NUMBA_CACHE_DIR`` set, clear that directory yourself after editing a kernel.

Which kernels run linear attention, softmax attention and the mesa layer. Each has a plain version
(``plain.py``: a ``prange`` over the sequences, scalar loops) and may have a SIMD version (``attention.py``,
``mesa.py``: 16 or 8 sequences in the lanes of explicit vector registers). ``kernels(family)`` returns the module
that runs a family ("linear", "softmax", "mesa"): the one ``DEFAULT_KERNELS`` names, unless the environment
variable ``MESA_FAST_KERNELS`` is ``plain`` or ``simd`` (read once, when this package is imported), which then
applies to every family. The defaults follow the decision rule of ``benchmarks/bench_plain_vs_simd.py`` (the SIMD
version only where it is clearly faster; docs/performance.md has the numbers).
"""
from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_STAMP = "kernel-sources.sha256"


def _sources_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(_HERE.glob("*.py")):
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
        if cache.is_dir():
            for f in cache.iterdir():
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
# SIMD clearly faster for all three (benchmarks/results/bench_plain_vs_simd_cpu.json)
DEFAULT_KERNELS = {"linear": "simd", "softmax": "simd", "mesa": "simd"}
_SIMD_MODULE = {"linear": "attention", "softmax": "attention", "mesa": "mesa"}
_choice = os.environ.get(KERNELS_ENV, "").strip().lower()      # "" = the defaults


def kernels(family: str):
    """The kernel module that runs ``family`` ("linear", "softmax" or "mesa"): ``plain`` or the SIMD module.

    ``MESA_FAST_KERNELS`` (plain | simd), when set, wins over ``DEFAULT_KERNELS``; another value raises
    ValueError here, at the first attention or mesa call."""
    if _choice and _choice not in VARIANTS:
        raise ValueError(f"{KERNELS_ENV}: expected one of {VARIANTS} or unset, got {_choice!r}")
    variant = _choice or DEFAULT_KERNELS[family]
    if variant == "plain":
        from . import plain
        return plain
    return importlib.import_module(f".{_SIMD_MODULE[family]}", __name__)
