"""Output buffers and input preparation that the kernels' launchers and the op wrappers share (plain NumPy, no kernel).

* ``merged_empty``, ``qkv_empty``, ``grad_buffers``: the memory layouts the attention kernels (plain and SIMD) write
  their outputs in, so that the model's merges after them cost no copy (``mesa_fast.ops.heads.merge_qkv``).
* ``contiguous_writeable``, ``flat``: an input as a C-contiguous, writeable array, copied only when needed (a
  read-only array is a separate Numba type and would trigger a recompile).
"""
from __future__ import annotations

import numpy as np


def merged_empty(B, H, T, w, dtype):
    """An uninitialised (B, H, T, w) array whose memory is laid out as (B, T, H, w): the model's
    ``merge_heads`` (transpose to (B, T, H, w) + ascontiguousarray) is then free."""
    return np.empty((B, T, H, w), dtype).transpose(0, 2, 1, 3)


def qkv_empty(B, H, T, d, dtype):
    """Three uninitialised (B, H, T, d) arrays laid out in one (B, T, 3, H, d) buffer: the layout of the model's
    fused QKV product, so that ``merge_qkv`` of them is free (see ``mesa_fast.ops.heads.merge_qkv``)."""
    buf = np.empty((B, T, 3, H, d), dtype).transpose(2, 0, 3, 1, 4)     # [3, B, H, T, d] view
    return buf[0], buf[1], buf[2]


def grad_buffers(B, H, T, d, dv, dtype):
    """dq, dk (B,H,T,d), dv (B,H,T,dv) outputs: one fused QKV-layout buffer when d == dv, else merged layouts."""
    if d == dv:
        return qkv_empty(B, H, T, d, dtype)
    return merged_empty(B, H, T, d, dtype), merged_empty(B, H, T, d, dtype), merged_empty(B, H, T, dv, dtype)


def contiguous_writeable(x):
    """C-contiguous, writeable ``x``, copied only when needed (a read-only array is a separate Numba
    type and would trigger a recompile)."""
    x = np.ascontiguousarray(x)
    if not x.flags.writeable:
        x = x.copy()
    return x


def flat(x):
    """x as a C-contiguous, writeable 1-D array (copied only when needed)."""
    x = np.ascontiguousarray(x)
    if not x.flags.writeable:
        x = x.copy()
    return x.reshape(-1)
