"""Run directories and atomic file output.

Every file the toolkit writes goes through a temporary file in the same directory followed by
``os.replace``, so a killed run never leaves a half-written checkpoint, JSON or figure behind.
Checkpoints are ``.npz`` archives of named arrays plus a JSON metadata entry.
"""
from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .ops._common import is_cupy, to_host


class CLIError(Exception):
    """An error a command-line entry point reports as one line (no traceback) with a non-zero exit."""


def run_cli(body, *, interrupted: str) -> int:
    """Run a command-line entry's ``body()`` (which returns its exit status): bad input and failed runs end
    with one ``error:`` line and status 2, an interrupt with ``interrupted`` and status 130, never a traceback."""
    try:
        return body()
    except (CLIError, ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyError, RuntimeError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130


def ensure_writable_dir(path) -> Path:
    """Create ``path`` if needed and check that files can be created in it; raise CLIError otherwise."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CLIError(f"output directory {str(p)!r} is a file, not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".probe-", delete=True):
            pass
    except OSError as e:
        raise CLIError(f"output directory {str(p)!r} is not writable: {e.strerror or e}") from None
    return p


def current_umask() -> int:
    """The process's file-creation mask. Read from /proc where it exists: setting the mask to read it (the only
    portable way) would briefly change it for every thread of the process, e.g. a Dask worker's."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``. The file
    gets the mode an ordinary ``open(path, "w")`` would give it (0666 less the umask: 0644 under umask 022), not
    the temporary file's private 0600, so collaborators on a shared file system can read the results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _to_jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if is_cupy(obj):                                                     # a CuPy array or scalar
        return _to_jsonable(to_host(obj))
    return obj


def as_json(obj):
    """``obj`` as it reads back from its JSON file (arrays as lists, tuples as lists, non-finite floats as None)."""
    return json.loads(json.dumps(_to_jsonable(obj)))


def write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(_to_jsonable(obj), indent=2) + "\n").encode())


def read_json(path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CLIError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CLIError(f"{path} is not valid JSON: {e}") from None


def save_checkpoint(path, arrays: dict, meta: dict) -> None:
    """Write named arrays and JSON metadata to ``path`` (.npz) atomically."""
    buf = io.BytesIO()
    payload = {k: to_host(v) for k, v in arrays.items()}
    payload["__meta__"] = np.frombuffer(json.dumps(_to_jsonable(meta)).encode(), dtype=np.uint8)
    np.savez(buf, **payload)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path):
    """Return (arrays, meta); raise CLIError for a missing or corrupt checkpoint."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
            if "__meta__" not in z.files:
                raise ValueError("no metadata entry")
            meta = json.loads(z["__meta__"].tobytes().decode())
    except FileNotFoundError:
        raise CLIError(f"checkpoint not found: {path}") from None
    except Exception as e:  # zipfile.BadZipFile, ValueError, KeyError, OSError, JSON errors
        raise CLIError(f"checkpoint {path} is corrupt or unreadable: {type(e).__name__}: {e}") from None
    return arrays, meta
