"""One sequence's rows in and out, for the plain attention kernels (``attention_linear.py``, ``attention_softmax.py``).

The rows of sequence (b, h) of a (B, H, T, w) array of any strides are copied into small contiguous buffers and
back; the loads add up x - x over the values read (0 when all are finite, NaN otherwise) for the NaN/inf check.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_PAR = dict(cache=True, parallel=True, nogil=True)
_SEQ = dict(cache=True, nogil=True)


@njit(**_SEQ)
def _load(x, b, h, t, buf, chk):
    """buf[:] = x[b, h, t, :] (any strides); returns chk + the sum of x - x over the row (NaN if one is not
    finite)."""
    for i in range(buf.shape[0]):
        xi = x[b, h, t, i]
        buf[i] = xi
        chk += xi - xi
    return chk


@njit(**_SEQ)
def _store(buf, x, b, h, t):
    """x[b, h, t, :] = buf."""
    for i in range(buf.shape[0]):
        x[b, h, t, i] = buf[i]


@njit(**_SEQ)
def _load_seq(x, b, h, buf, chk):
    """buf[t, :] = x[b, h, t, :] for every t (buf: (T, w)); returns chk as ``_load`` does."""
    for t in range(buf.shape[0]):
        chk = _load(x, b, h, t, buf[t], chk)
    return chk


@njit(**_SEQ)
def _store_seq(buf, x, b, h):
    for t in range(buf.shape[0]):
        _store(buf[t], x, b, h, t)


@njit(**_SEQ)
def _load_backward_inputs(n, q, k, v, dout):
    """Sequence n's q, k, v, dout as (T, width) buffers, and whether its dout is all finite (the backwards)."""
    H, T, d, dv = q.shape[1], q.shape[2], q.shape[3], v.shape[3]
    b, h = n // H, n % H
    zero = q.dtype.type(0)
    qs = np.empty((T, d), q.dtype)
    ks = np.empty((T, d), q.dtype)
    vs = np.empty((T, dv), q.dtype)
    gs = np.empty((T, dv), q.dtype)
    _load_seq(q, b, h, qs, zero)
    _load_seq(k, b, h, ks, zero)
    _load_seq(v, b, h, vs, zero)
    return qs, ks, vs, gs, _load_seq(dout, b, h, gs, zero) == 0
