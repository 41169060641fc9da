"""Numba CPU kernels of mesa_fast.

On-disk cache guard.  The kernels compile with ``cache=True``, and Numba decides whether a cached kernel is
still valid from the modification time and size of the file that defines it, not of the files it inlines
from: edit ``_simd.py`` (the SIMD intrinsics inlined into every kernel) and ``mesa.py`` would keep loading
machine code built from the old intrinsics (seen: NaN outputs after changing the lane count).  So on import
this package hashes its own sources and, when the hash differs from the one recorded beside the cache, drops
the cached kernels of this package before any is loaded.  Only ``__pycache__`` next to these files is
managed: with ``NUMBA_CACHE_DIR`` set, clear that directory yourself after editing a kernel.
"""
from __future__ import annotations

import hashlib
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
