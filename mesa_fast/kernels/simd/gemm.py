"""Two narrow matrix products of the dense layer [L1] on lane vectors (float32 at the model's shapes), where
OpenBLAS runs well below the multiply-add rate the same core reaches on wider products
(docs/performance-archive/notes.md, "The full Transformer on the CPU"):

* ``atb_rows``: out += a^T b over a range of rows, for the weight gradient dW = x^T dy with a narrow dy (the dense
  op calls it as (dy^T x)^T). A 4 x 64 block of the result stays in sixteen 16-lane registers while the rows
  stream, ``ROWS`` (``runtime.tuning.GEMM_ROWS``) rows at a time (so they stay in cache for every block of the
  result).

      out[i, j] += sum_{lo <= n < hi} a[n, i] b[n, j]      a (N, I), b (N, J) C-contiguous, out (I, J) C-contiguous

  Blocks: 4 rows of out x 4 lane vectors (64 columns), then 4 rows x one vector for the columns left in whole
  vectors, then element by element for the last J mod 16 columns; rows of out left over after the blocks of 4
  go one at a time.
* ``ab_rows``: out[lo:hi] = a[lo:hi] b for a product with few output columns (a multiple of 8; 40, the model's
  width, in one panel of two 16-lane vectors and one 8-lane vector): y = x W into the residual stream and
  dx = dy W^T out of the wider products. 4 rows of out at a time, every output of the panel in a register,
  b's rows (k) streamed from cache. ``ab_panels`` is the same loop, and with ``wide`` it takes panels of 40 while
  they last (the MLP's 40 -> 160 products, mlp.py).

Plain twin: none; these re-express the products of ``mesa_ref.ops.dense`` (x @ W, x^T dy, dy W^T), which the op
wrappers (``mesa_fast/ops/dense.py``) call instead of BLAS at the shapes ``runtime.tuning`` names (ATB_*, NARROW_*).

Arithmetic: fused multiply-adds (``lanevec.vfma``) along the summed index, in index order (within a block of ROWS
rows for ``atb_rows``, those sums then added to out in row order): another order of the same sums than BLAS's,
float32 rounding only.
"""
from __future__ import annotations

from numba import njit

from ...runtime.tuning import GEMM_ROWS as ROWS     # rows of a and b per pass over the blocks of out
from .lanevec import WIDE, vadd, vfma, vload, vsplat, vstore, vzeros, wload, wsplat, wzeros

L = WIDE


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


@njit(cache=True, nogil=True)
def _ab_panel(a, b, K, I, n, rows, j, width, out):
    """out[n:n+rows, j:j+width] = a[n:n+rows, :] b[:, j:j+width] for width 40, 32, 16 or 8 (two 16-lane vectors and
    an 8-lane one, two, one, or one 8-lane vector per row) and rows 4 or 1."""
    if rows == 4 and width == 40:
        c00 = wzeros(out)
        c01 = wzeros(out)
        c02 = vzeros(out)
        c10 = wzeros(out)
        c11 = wzeros(out)
        c12 = vzeros(out)
        c20 = wzeros(out)
        c21 = wzeros(out)
        c22 = vzeros(out)
        c30 = wzeros(out)
        c31 = wzeros(out)
        c32 = vzeros(out)
        for k in range(K):
            w0 = wload(b, k * I + j)
            w1 = wload(b, k * I + j + L)
            w2 = vload(b, k * I + j + 2 * L)
            x = a[n * K + k]
            s = wsplat(out, x)
            c00 = vfma(s, w0, c00)
            c01 = vfma(s, w1, c01)
            c02 = vfma(vsplat(out, x), w2, c02)
            x = a[(n + 1) * K + k]
            s = wsplat(out, x)
            c10 = vfma(s, w0, c10)
            c11 = vfma(s, w1, c11)
            c12 = vfma(vsplat(out, x), w2, c12)
            x = a[(n + 2) * K + k]
            s = wsplat(out, x)
            c20 = vfma(s, w0, c20)
            c21 = vfma(s, w1, c21)
            c22 = vfma(vsplat(out, x), w2, c22)
            x = a[(n + 3) * K + k]
            s = wsplat(out, x)
            c30 = vfma(s, w0, c30)
            c31 = vfma(s, w1, c31)
            c32 = vfma(vsplat(out, x), w2, c32)
        o = n * I + j
        vstore(out, o, c00)
        vstore(out, o + L, c01)
        vstore(out, o + 2 * L, c02)
        vstore(out, o + I, c10)
        vstore(out, o + I + L, c11)
        vstore(out, o + I + 2 * L, c12)
        vstore(out, o + 2 * I, c20)
        vstore(out, o + 2 * I + L, c21)
        vstore(out, o + 2 * I + 2 * L, c22)
        vstore(out, o + 3 * I, c30)
        vstore(out, o + 3 * I + L, c31)
        vstore(out, o + 3 * I + 2 * L, c32)
    elif rows == 4 and width == 32:
        c00 = wzeros(out)
        c01 = wzeros(out)
        c10 = wzeros(out)
        c11 = wzeros(out)
        c20 = wzeros(out)
        c21 = wzeros(out)
        c30 = wzeros(out)
        c31 = wzeros(out)
        for k in range(K):
            w0 = wload(b, k * I + j)
            w1 = wload(b, k * I + j + L)
            s = wsplat(out, a[n * K + k])
            c00 = vfma(s, w0, c00)
            c01 = vfma(s, w1, c01)
            s = wsplat(out, a[(n + 1) * K + k])
            c10 = vfma(s, w0, c10)
            c11 = vfma(s, w1, c11)
            s = wsplat(out, a[(n + 2) * K + k])
            c20 = vfma(s, w0, c20)
            c21 = vfma(s, w1, c21)
            s = wsplat(out, a[(n + 3) * K + k])
            c30 = vfma(s, w0, c30)
            c31 = vfma(s, w1, c31)
        o = n * I + j
        vstore(out, o, c00)
        vstore(out, o + L, c01)
        vstore(out, o + I, c10)
        vstore(out, o + I + L, c11)
        vstore(out, o + 2 * I, c20)
        vstore(out, o + 2 * I + L, c21)
        vstore(out, o + 3 * I, c30)
        vstore(out, o + 3 * I + L, c31)
    elif rows == 4 and width == 16:
        c0 = wzeros(out)
        c1 = wzeros(out)
        c2 = wzeros(out)
        c3 = wzeros(out)
        for k in range(K):
            w0 = wload(b, k * I + j)
            c0 = vfma(wsplat(out, a[n * K + k]), w0, c0)
            c1 = vfma(wsplat(out, a[(n + 1) * K + k]), w0, c1)
            c2 = vfma(wsplat(out, a[(n + 2) * K + k]), w0, c2)
            c3 = vfma(wsplat(out, a[(n + 3) * K + k]), w0, c3)
        o = n * I + j
        vstore(out, o, c0)
        vstore(out, o + I, c1)
        vstore(out, o + 2 * I, c2)
        vstore(out, o + 3 * I, c3)
    elif rows == 4:
        h0 = vzeros(out)
        h1 = vzeros(out)
        h2 = vzeros(out)
        h3 = vzeros(out)
        for k in range(K):
            w0 = vload(b, k * I + j)
            h0 = vfma(vsplat(out, a[n * K + k]), w0, h0)
            h1 = vfma(vsplat(out, a[(n + 1) * K + k]), w0, h1)
            h2 = vfma(vsplat(out, a[(n + 2) * K + k]), w0, h2)
            h3 = vfma(vsplat(out, a[(n + 3) * K + k]), w0, h3)
        o = n * I + j
        vstore(out, o, h0)
        vstore(out, o + I, h1)
        vstore(out, o + 2 * I, h2)
        vstore(out, o + 3 * I, h3)
    else:
        for jj in range(j, j + width, 8):
            h = vzeros(out)
            for k in range(K):
                h = vfma(vsplat(out, a[n * K + k]), vload(b, k * I + jj), h)
            vstore(out, n * I + jj, h)


@njit(cache=True, nogil=True)
def ab_rows(a, b, K, I, lo, hi, out):
    """out[lo:hi] = a[lo:hi] b for a (N*K flat), b (K*I flat, I a multiple of 8), out (N*I flat): for a narrow
    product (the dense backward's dx = dy W^T with x a few dozen columns wide, where OpenBLAS runs well below
    the core's multiply-add rate). 4 rows of out at a time; their columns in panels of 32 (two 16-lane vectors),
    16 and 8 (an 8-lane vector), or all 40 in one (the model's width), each panel summed over k in registers
    (fused multiply-adds, in k order)."""
    ab_panels(a, b, K, I, lo, hi, out, False)


@njit(cache=True, nogil=True)
def ab_panels(a, b, K, I, lo, hi, out, wide):
    """``ab_rows`` with the columns in panels of 40 while they last when ``wide`` (the MLP's wide products,
    mlp.py), and otherwise only when I is 40; then panels of 32, 16 and 8. The panels change which
    outputs share a pass over k, not any output's sum."""
    n = lo
    while n < hi:
        rows = 4 if n + 4 <= hi else 1
        j = 0
        if wide or I == 40:
            while j + 40 <= I:
                _ab_panel(a, b, K, I, n, rows, j, 40, out)
                j += 40
        while j + 32 <= I:
            _ab_panel(a, b, K, I, n, rows, j, 32, out)
            j += 32
        if j + 16 <= I:
            _ab_panel(a, b, K, I, n, rows, j, 16, out)
            j += 16
        if j + 8 <= I:
            _ab_panel(a, b, K, I, n, rows, j, 8, out)
        n += rows
