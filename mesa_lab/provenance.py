"""Where a result came from: the code version a job, figure or benchmark records beside its numbers."""
from __future__ import annotations

import subprocess
from pathlib import Path


def code_version() -> str:
    """The git commit of the package's checkout (with "+dirty" for local changes), or "unknown"."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                                "mesa_ref", "mesa_fast", "mesa_lab"], capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
