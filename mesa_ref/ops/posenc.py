"""[L7] Sinusoidal positional encoding (Vaswani et al.): a fixed (T, D) table, no parameters."""
from __future__ import annotations

import numpy as np


def sinusoidal_positional_encoding(T: int, D: int, dtype=np.float64, xp=np):
    """[L7] P[t, 2i] = sin(t / 10000^(2i/D)), P[t, 2i+1] = cos(t / 10000^(2i/D)); t = 0..T-1.  Returns (T, D)."""
    if int(T) != T or T < 1:
        raise ValueError(f"T: expected a positive integer, got {T!r}")
    if int(D) != D or D < 1:
        raise ValueError(f"D: expected a positive integer, got {D!r}")
    pos = np.arange(T, dtype=np.float64)[:, None]                  # (T, 1)
    i = np.arange((D + 1) // 2, dtype=np.float64)[None, :]         # (1, ceil(D/2))
    ang = pos / np.power(10000.0, 2 * i / D)                       # (T, ceil(D/2))
    P = np.zeros((T, D), dtype=np.float64)
    P[:, 0::2] = np.sin(ang)
    P[:, 1::2] = np.cos(ang[:, : D // 2])
    return xp.asarray(P.astype(dtype))
