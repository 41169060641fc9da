"""A^T B over a range of rows, for the dense layer's weight gradient dW = x^T dy (float32, lane vectors).

Why: at the model's shapes (N = B*T rows of a few dozen to a few hundred columns) OpenBLAS's x^T dy runs well
below the multiply-add rate the same core reaches in ``dense.forward`` (docs/performance.md has the numbers);
this kernel keeps a 4 x 64 block of the result in sixteen 16-lane registers while it streams the rows, 256 rows
at a time (so they stay in cache for every block of the result).

    out[i, j] += sum_{lo <= n < hi} a[n, i] b[n, j]      a (N, I), b (N, J) C-contiguous, out (I, J) C-contiguous

Blocks: 4 rows of out x 4 lane vectors (64 columns), then 4 rows x one vector for the columns left in whole
vectors, then element by element for the last J mod 16 columns; rows of out left over after the blocks of 4 go
one at a time. Arithmetic: fused multiply-adds (``_simd.vfma``) along n within a block of 256 rows, those sums
added to out in row order: another order of the same sums than BLAS's, float32 rounding only.
"""
from __future__ import annotations

from numba import njit

from ._simd import WIDE, vadd, vfma, vstore, wload, wsplat, wzeros

L = WIDE
ROWS = 256          # rows of a and b per pass over the blocks of out


@njit(cache=True, nogil=True)
def _block4x4(a, b, c0, c1, i, j, out, I, J):
    """out[i:i+4, j:j+64] += a[c0:c1, i:i+4]^T b[c0:c1, j:j+64] (a, b, out flat)."""
    a00 = wzeros(out)
    a01 = wzeros(out)
    a02 = wzeros(out)
    a03 = wzeros(out)
    a10 = wzeros(out)
    a11 = wzeros(out)
    a12 = wzeros(out)
    a13 = wzeros(out)
    a20 = wzeros(out)
    a21 = wzeros(out)
    a22 = wzeros(out)
    a23 = wzeros(out)
    a30 = wzeros(out)
    a31 = wzeros(out)
    a32 = wzeros(out)
    a33 = wzeros(out)
    for n in range(c0, c1):
        o = n * J + j
        d0 = wload(b, o)
        d1 = wload(b, o + L)
        d2 = wload(b, o + 2 * L)
        d3 = wload(b, o + 3 * L)
        xo = n * I + i
        x0 = wsplat(out, a[xo])
        x1 = wsplat(out, a[xo + 1])
        x2 = wsplat(out, a[xo + 2])
        x3 = wsplat(out, a[xo + 3])
        a00 = vfma(x0, d0, a00)
        a01 = vfma(x0, d1, a01)
        a02 = vfma(x0, d2, a02)
        a03 = vfma(x0, d3, a03)
        a10 = vfma(x1, d0, a10)
        a11 = vfma(x1, d1, a11)
        a12 = vfma(x1, d2, a12)
        a13 = vfma(x1, d3, a13)
        a20 = vfma(x2, d0, a20)
        a21 = vfma(x2, d1, a21)
        a22 = vfma(x2, d2, a22)
        a23 = vfma(x2, d3, a23)
        a30 = vfma(x3, d0, a30)
        a31 = vfma(x3, d1, a31)
        a32 = vfma(x3, d2, a32)
        a33 = vfma(x3, d3, a33)
    _add4(out, i * J + j, a00, a01, a02, a03)
    _add4(out, (i + 1) * J + j, a10, a11, a12, a13)
    _add4(out, (i + 2) * J + j, a20, a21, a22, a23)
    _add4(out, (i + 3) * J + j, a30, a31, a32, a33)


@njit(cache=True, nogil=True)
def _add4(out, o, v0, v1, v2, v3):
    vstore(out, o, vadd(wload(out, o), v0))
    vstore(out, o + L, vadd(wload(out, o + L), v1))
    vstore(out, o + 2 * L, vadd(wload(out, o + 2 * L), v2))
    vstore(out, o + 3 * L, vadd(wload(out, o + 3 * L), v3))


@njit(cache=True, nogil=True)
def _block4x1(a, b, c0, c1, i, j, out, I, J):
    """out[i:i+4, j:j+16] += a[c0:c1, i:i+4]^T b[c0:c1, j:j+16]."""
    a0 = wzeros(out)
    a1 = wzeros(out)
    a2 = wzeros(out)
    a3 = wzeros(out)
    for n in range(c0, c1):
        d = wload(b, n * J + j)
        xo = n * I + i
        a0 = vfma(wsplat(out, a[xo]), d, a0)
        a1 = vfma(wsplat(out, a[xo + 1]), d, a1)
        a2 = vfma(wsplat(out, a[xo + 2]), d, a2)
        a3 = vfma(wsplat(out, a[xo + 3]), d, a3)
    o = i * J + j
    vstore(out, o, vadd(wload(out, o), a0))
    vstore(out, o + J, vadd(wload(out, o + J), a1))
    vstore(out, o + 2 * J, vadd(wload(out, o + 2 * J), a2))
    vstore(out, o + 3 * J, vadd(wload(out, o + 3 * J), a3))


@njit(cache=True, nogil=True)
def _row1(a, b, c0, c1, i, j, out, I, J):
    """out[i, j:j+16] += a[c0:c1, i] . b[c0:c1, j:j+16]."""
    acc = wzeros(out)
    for n in range(c0, c1):
        acc = vfma(wsplat(out, a[n * I + i]), wload(b, n * J + j), acc)
    o = i * J + j
    vstore(out, o, vadd(wload(out, o), acc))


@njit(cache=True, nogil=True)
def atb_rows(a, b, I, J, lo, hi, out):
    """out (I*J flat) += a[lo:hi]^T b[lo:hi] for a (N*I flat), b (N*J flat), all float32 or all float64."""
    J64 = J - J % 64
    J16 = J - J % 16
    I4 = I - I % 4
    for c0 in range(lo, hi, ROWS):
        c1 = min(hi, c0 + ROWS)
        for i in range(0, I4, 4):
            for j in range(0, J64, 64):
                _block4x4(a, b, c0, c1, i, j, out, I, J)
            for j in range(J64, J16, 16):
                _block4x1(a, b, c0, c1, i, j, out, I, J)
        for i in range(I4, I):
            for j in range(0, J16, 16):
                _row1(a, b, c0, c1, i, j, out, I, J)
        for i in range(I):
            for j in range(J16, J):
                s = out[i * J + j] * 0
                for n in range(c0, c1):
                    s += a[n * I + i] * b[n * J + j]
                out[i * J + j] += s
