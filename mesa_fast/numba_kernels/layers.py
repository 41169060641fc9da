"""Op-level wrappers for the Numba attention / element-wise kernels: the ``mesa_ref.ops`` signatures.

Each function takes the same arguments as its ``mesa_ref.ops`` namesake, validates them with the
same ``mesa_ref.ops._common`` checks (so the same ``ValueError``s), and returns the same kinds of
outputs: NumPy in -> NumPy out of the same dtype. The caches are this
module's own NamedTuples (the model only hands them back to the matching backward); a cache from
the reference (which is what a CuPy call returns) is passed on to the reference backward.

CuPy arrays (GPU) go to the reference implementation, which is written against an array module
and runs on CuPy as it is. NumPy arrays always run the Numba kernels, whatever
``mesa_fast.set_backend`` says: these ops have no CUDA twin, so copying NumPy input to the GPU
would buy nothing.

Ops here: dense [L1] (BLAS, threads run by ``dense.py``), the MLP's dense + GELU [L1] + [L5] fused block by
block of rows, the whole MLP sub-block likewise (``mlp.py``), causal linear attention [L2] and softmax attention [L3] (``attention.py``), LayerNorm [L4] and
GELU [L5] (``elementwise.py``), clipping [L6] (``attention.py``); the head layout ops split_qkv / split_heads
(views) and merge_qkv.
Attention outputs come back as (B, H, T, w) arrays laid out in memory as (B, T, H, w), and attention
gradients as views of one buffer in the fused QKV layout, so the model's merges cost no copy.

NaN/inf checks. Shape, dtype and argument checks run before any work, as in the reference. The check for
NaN/inf is made where it costs least, and a failure always ends in the reference's own check of the
offending input, so the message is the reference's: the attention and clipping kernels look at their inputs
as they load them; dense checks its output y when y is smaller than x, and dW = x^T dy instead of dy in the
backward (argued in its docstring: a NaN or inf in the input always leaves one in what is checked). The
outputs computed before such a ValueError are dropped.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from mesa_ref.ops import activations as _ref_act
from mesa_ref.ops import attention_linear as _ref_lin
from mesa_ref.ops import attention_softmax as _ref_sm
from mesa_ref.ops import dense as _ref_dense
from mesa_ref.ops import dense_gelu as _ref_dg
from mesa_ref.ops import heads as _ref_heads
from mesa_ref.ops import layernorm as _ref_ln
from mesa_ref.ops import layernorm_dense as _ref_lnd
from mesa_ref.ops import loss as _ref_loss
from mesa_ref.ops import mlp as _ref_mlp
from mesa_ref.ops import mlp_block as _ref_block
from mesa_ref.ops._common import (all_finite, array_module, check_dout, check_float_array, check_qkv,
                                  check_same_dtype)

from . import dense as _dense
from . import kernels as _kernels
from ._pool import map_chunks

_K = None
_E = None


def _k():
    """The attention kernel module, imported on first use, so that ``import mesa_fast`` does not define its Numba
    dispatchers (Numba itself is imported with mesa_fast, by the thread pool; the kernels compile, or load from
    Numba's cache, on their first call either way)."""
    global _K
    if _K is None:
        from . import attention
        _K = attention
    return _K


def _e():
    """The GELU / LayerNorm / MSE kernel module, imported on first use (as ``_k``)."""
    global _E
    if _E is None:
        from . import elementwise
        _E = elementwise
    return _E


def _numpy(*arrays) -> bool:
    return array_module(*arrays) is np


# --------------------------------------------------------------------------------------------
# [L2] causal linear attention
# --------------------------------------------------------------------------------------------

class LinearAttentionFastCache(NamedTuple):
    q: np.ndarray   # (B, H, T, d)
    k: np.ndarray   # (B, H, T, d)
    v: np.ndarray   # (B, H, T, dv)   (no T x T score matrix: the backward re-runs the recurrence)


def linear_attention_forward(q, k, v):
    """[L2] out_t = sum_{t'<=t} v_{t'} (k_{t'} . q_t).  q, k (B,H,T,d), v (B,H,T,dv) -> (out (B,H,T,dv), cache).

    NaN/inf in q, k, v are found by the kernel as it loads them (no separate pass over three strided views);
    then the reference's check runs on the inputs one by one, so the ValueError names the argument with the
    reference's words, and nothing is returned."""
    if not _numpy(q, k, v):
        return _ref_lin.linear_attention_forward(q, k, v)
    check_qkv(q, k, v, finite=False)
    out, finite = _kernels("linear").linear_forward(q, k, v)
    if not finite:
        check_qkv(q, k, v)
    return out, LinearAttentionFastCache(q, k, v)


def linear_attention_backward(dout, cache):
    """Returns (dq (B,H,T,d), dk (B,H,T,d), dv (B,H,T,dv)).  NaN/inf in dout: found by the kernel as it reads
    dout, then reported by the reference's check (same message)."""
    if not isinstance(cache, LinearAttentionFastCache):
        return _ref_lin.linear_attention_backward(dout, cache)
    q, k, v = cache
    check_dout(dout, v.shape, v.dtype, finite=False)
    if not _numpy(dout):
        raise ValueError("dout: lives on a different device/array module than the forward's inputs")
    grads, finite = _kernels("linear").linear_backward(q, k, v, dout)
    if not finite:
        check_dout(dout, v.shape, v.dtype)
    return grads


# --------------------------------------------------------------------------------------------
# [L3] causal softmax attention
# --------------------------------------------------------------------------------------------
# The cache keeps the attention maps as the kernels lay them out (the SIMD kernels: one (T, T, 16) block per
# group of 16 sequences, flat; the plain kernels: the reference's (B, H, T, T) map), so the backward reads them
# with no transposition; ``cache.P`` makes the reference's map when an analysis asks for it (e.g. the copy-layer
# experiment).

class SoftmaxAttentionFastCache(NamedTuple):
    q: np.ndarray        # (B, H, T, d)
    k: np.ndarray        # (B, H, T, d)
    v: np.ndarray        # (B, H, T, dv)
    lanes: np.ndarray    # the attention maps as the kernels lay them out (``softmax_forward`` of attention / plain)
    scale: float

    @property
    def P(self):
        """(B, H, T, T) attention weights, rows sum to 1, zero above the diagonal (the reference cache's P)."""
        B, H, T, _ = self.q.shape
        if self.lanes.ndim == 4:         # the plain kernels' map is already the reference's
            return self.lanes.copy()
        return _k().lanes_to_map(self.lanes, B, H, T)


def softmax_attention_forward(q, k, v, *, scale=None):
    """[L3] out = softmax(mask(q k^T * scale)) v.  q, k (B,H,T,d), v (B,H,T,dv) -> (out (B,H,T,dv), cache)."""
    if not _numpy(q, k, v):
        return _ref_sm.softmax_attention_forward(q, k, v, scale=scale)
    _, _, T, d, _ = check_qkv(q, k, v, finite=False)
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a positive finite float, got {scale!r}")
    out, lanes, finite = _kernels("softmax").softmax_forward(q, k, v, scale)
    if not finite:                      # found by the kernel as it loaded q, k, v; the reference's message
        check_qkv(q, k, v)
    return out, SoftmaxAttentionFastCache(q, k, v, lanes, float(scale))


def softmax_attention_backward(dout, cache):
    """Returns (dq (B,H,T,d), dk (B,H,T,d), dv (B,H,T,dv)).  A reference cache goes to the reference backward."""
    if not isinstance(cache, SoftmaxAttentionFastCache):
        return _ref_sm.softmax_attention_backward(dout, cache)
    q, k, v, lanes, scale = cache
    check_dout(dout, v.shape, v.dtype, finite=False)
    if not _numpy(dout):
        raise ValueError("dout: lives on a different device/array module than the forward's inputs")
    grads, finite = _kernels("softmax").softmax_backward(q, k, v, lanes, scale, dout)
    if not finite:
        check_dout(dout, v.shape, v.dtype)
    return grads


# --------------------------------------------------------------------------------------------
# [L1] dense layer (BLAS products, threads run here: see numba_kernels/dense.py)
# --------------------------------------------------------------------------------------------

class DenseFastCache(NamedTuple):
    x2: np.ndarray   # (N, Din) the input, rows flattened, C-contiguous
    W: np.ndarray    # (Din, Dout)
    has_bias: bool
    x_shape: tuple   # the input's shape (..., Din)


def dense_forward(x, W, b=None):
    """[L1] y = x W + b.  x (..., Din), W (Din, Dout), b (Dout,) or None -> (y (..., Dout), cache).

    NaN/inf checks: on x, W and b when x is the smaller array, else on y alone. A non-finite x[n, j] makes every
    y[n, k] non-finite, a non-finite W[j, k] or b[k] the whole column y[:, k] (IEEE: inf * 0 is NaN, and no sum
    with a NaN or inf in it is finite), so a finite y proves finite inputs. x or y is checked range by range by
    the thread that just multiplied it (``dense.forward``), W and b (small) before the product. When a check
    fails the inputs are checked one by one, so the ValueError names the argument as the reference's does;
    finite inputs whose product overflows come back as they are, also as in the reference. (Checks outside the
    product ranges would be an extra pass over memory per call; docs/performance.md has the measurement.)"""
    if not _numpy(x, W, b):
        return _ref_dense.dense_forward(x, W, b)
    _ref_dense.check_dense_inputs(x, W, b, finite=False)   # the reference's checks (same ValueErrors)
    y_size = (x.size // x.shape[-1] if x.shape[-1] else 0) * W.shape[1]
    check = "y" if 0 < y_size < x.size else "x"
    if check == "x" and not (all_finite(W) and (b is None or all_finite(b))):
        _ref_dense.check_dense_inputs(x, W, b)             # raises, with the reference's message
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))                  # (N, Din)
    y, finite = _dense.forward(x2, W, b, check)                              # (N, Dout)
    if not finite:
        _ref_dense.check_dense_inputs(x, W, b)
    return y.reshape(x.shape[:-1] + (W.shape[1],)), DenseFastCache(x2, W, b is not None, tuple(x.shape))


def dense_backward(dy, cache, *, input_grad=True):
    """Returns (dx (..., Din), dW (Din, Dout), db (Dout,) or None); dx is None with ``input_grad=False``."""
    if not isinstance(cache, DenseFastCache):
        return _ref_dense.dense_backward(dy, cache, input_grad=input_grad)
    x2, W, has_bias, x_shape = cache
    check_dout(dy, x_shape[:-1] + (W.shape[1],), x2.dtype, finite=False)
    if not _numpy(dy):
        raise ValueError("dout: lives on a different device/array module than the forward's input")
    dy2 = np.ascontiguousarray(dy.reshape(-1, dy.shape[-1]))                # (N, Dout)
    dx, dW, db = _dense.backward(dy2, x2, W, has_bias, input_grad)
    # NaN/inf in dy is found in dW = x^T dy (Din x Dout, small): a non-finite dy[n, k] makes the whole column
    # dW[:, k] non-finite (x[n, j] * inf is inf or NaN, and no sum with a NaN or inf in it is finite). Only
    # then is dy itself checked, for the reference's message; a finite dy whose dW overflows passes, as there.
    if dW.size == 0 or not all_finite(dW):
        check_dout(dy, x_shape[:-1] + (W.shape[1],), x2.dtype)
    return (dx.reshape(x_shape) if input_grad else None), dW, db


# --------------------------------------------------------------------------------------------
# [L1] + [L5] the MLP's first layer, dense and GELU fused (numba_kernels/dense.py)
# --------------------------------------------------------------------------------------------

class DenseGeluFastCache(NamedTuple):
    x2: np.ndarray   # (N, Din) the input, rows flattened, C-contiguous
    W: np.ndarray    # (Din, M)
    has_bias: bool
    x_shape: tuple   # the input's shape (..., Din)
    z: np.ndarray    # (N, M) x W + b
    t: np.ndarray    # (N, M) tanh(sqrt(2/pi) (z + 0.044715 z^3))


def dense_gelu_forward(x, W, b=None):
    """[L1] + [L5] g = gelu(x W + b).  x (..., Din), W (Din, M), b (M,) or None -> (g (..., M), cache).

    One pass: each block of rows gets its GELU right after its product, while z is in cache (``dense.forward_gelu``).
    NaN/inf: W and b (small) are checked first; a non-finite x[n, j] makes every z[n, k] non-finite (as in
    ``dense_forward``), which the GELU kernel sees; then x is checked for the reference's message, and a finite x
    whose product overflows raises gelu_forward's ValueError on z, as the reference composition does."""
    if not _numpy(x, W, b):
        return _ref_dg.dense_gelu_forward(x, W, b)
    _ref_dense.check_dense_inputs(x, W, b, finite=False)
    if not (all_finite(W) and (b is None or all_finite(b))):
        _ref_dense.check_dense_inputs(x, W, b)
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))                  # (N, Din)
    g, z, t, finite = _dense.forward_gelu(x2, W, b, _e().bias_gelu_fwd)
    shape = x.shape[:-1] + (W.shape[1],)
    if not finite and z.size:
        _ref_dense.check_dense_inputs(x, W, b)
        check_float_array("x", z)
    return g.reshape(shape), DenseGeluFastCache(x2, W, b is not None, tuple(x.shape), z, t)


def dense_gelu_backward(dg, cache, *, input_grad=True):
    """Returns (dx (..., Din) or None with ``input_grad=False``, dW (Din, M), db (M,) or None).  Block by block of
    rows: dz = dg gelu'(z), then its products, while dz is in cache (``dense.backward_gelu``). NaN/inf in dg: found
    by the GELU kernel, then reported by the reference's check (same message)."""
    if not isinstance(cache, DenseGeluFastCache):
        return _ref_dg.dense_gelu_backward(dg, cache, input_grad=input_grad)
    x2, W, has_bias, x_shape, z, t = cache
    check_dout(dg, x_shape[:-1] + (W.shape[1],), z.dtype, finite=False)
    if not _numpy(dg):
        raise ValueError("dout: lives on a different device/array module than the forward's input")
    dg2 = np.ascontiguousarray(dg.reshape(-1, dg.shape[-1]))
    dx, dW, db, finite = _dense.backward_gelu(dg2, x2, W, z, t, has_bias, input_grad, _e().gelu_bwd_rows)
    if not finite:
        check_dout(dg, x_shape[:-1] + (W.shape[1],), z.dtype)
    return (dx.reshape(x_shape) if input_grad else None), dW, db


# --------------------------------------------------------------------------------------------
# [L1] + [L5] the whole MLP sub-block, row block by row block (numba_kernels/mlp.py)
# --------------------------------------------------------------------------------------------

class MLPFastCache(NamedTuple):
    x2: np.ndarray          # (N, D) the input, rows flattened, C-contiguous
    W1: np.ndarray          # (D, M)
    b1: object              # (M,) or None
    W2: np.ndarray          # (M, E)
    b2: object              # (E,) or None
    x_shape: tuple          # the input's shape (..., D)
    z: np.ndarray           # (N, M) x W1 + b1
    t: np.ndarray           # (N, M) tanh(sqrt(2/pi) (z + 0.044715 z^3)); gelu(z) = 0.5 z (1 + t)


def _float_numpy(arrays) -> bool:
    """Whether the arrays are all NumPy arrays of one float dtype, float32 or float64 (the fused ops' first
    condition)."""
    if not all(isinstance(a, np.ndarray) for a in arrays):
        return False
    dt = arrays[0].dtype
    return dt in (np.float32, np.float64) and all(a.dtype == dt for a in arrays)


def _ln_params_fusable(x, w, b, eps) -> bool:
    """The LayerNorm's part of a fused op's conditions (x at least 1-D): w and b NumPy arrays of x's dtype and shape
    (D,), finite, and eps > 0."""
    D = x.shape[-1]
    for a in (w, b):
        if not isinstance(a, np.ndarray) or a.dtype != x.dtype or a.shape != (D,) or not all_finite(a):
            return False
    return isinstance(eps, (int, float, np.floating)) and eps > 0


def _mlp_fusable(x, W1, b1, W2, b2) -> bool:
    """Whether the fused kernels take these inputs: NumPy arrays of one float dtype with the shapes the reference
    accepts, D, M and E multiples of 8 (whole lane vectors in the products), finite weights and biases. Anything
    else goes through the composition of this module's dense_gelu and dense ops, whose checks raise the
    reference's ValueErrors."""
    arrays = [a for a in (x, W1, b1, W2, b2) if a is not None]
    if not _float_numpy(arrays):
        return False
    if x.ndim < 1 or W1.ndim != 2 or W2.ndim != 2 or x.shape[-1] != W1.shape[0] or W2.shape[0] != W1.shape[1]:
        return False
    D, M, E = W1.shape[0], W1.shape[1], W2.shape[1]
    if D % 8 or M % 8 or E % 8 or D == 0 or M == 0 or E == 0 or x.size == 0:
        return False
    if (b1 is not None and b1.shape != (M,)) or (b2 is not None and b2.shape != (E,)):
        return False
    return all(all_finite(a) for a in arrays[1:])


def _mlp_composed_forward(x, W1, b1, W2, b2):
    g, c1 = dense_gelu_forward(x, W1, b1)
    y, c2 = dense_forward(g, W2, b2)
    return y, _ref_mlp.MLPCache(c1, c2)


def mlp_forward(x, W1, b1, W2, b2):
    """[L1] + [L5] y = gelu(x W1 + b1) W2 + b2.  x (..., D), W1 (D, M), b1 (M,) or None, W2 (M, E), b2 (E,) or None
    -> (y (..., E), cache).

    Fused (``mlp.mlp_fwd_rows``, rows shared out to the thread pool) where ``_mlp_fusable``; otherwise, and
    whenever the fused pass meets a NaN or inf in z = x W1 + b1 (a NaN or inf in x puts one there), the
    composition of ``dense_gelu_forward`` and ``dense_forward`` runs instead, so errors and overflow come out as
    the reference's. Finite g whose product with W2 overflows passes, as there."""
    if not _numpy(x, W1, b1, W2, b2):
        return _ref_mlp.mlp_forward(x, W1, b1, W2, b2)
    if not _mlp_fusable(x, W1, b1, W2, b2):
        return _mlp_composed_forward(x, W1, b1, W2, b2)
    from . import mlp as _m
    dt = x.dtype
    D, M, E = W1.shape[0], W1.shape[1], W2.shape[1]
    x2 = np.ascontiguousarray(x.reshape(-1, D))
    N = x2.shape[0]
    z = np.empty((N, M), dt)
    t = np.empty((N, M), dt)
    y = np.empty((N, E), dt)
    b1f = b1 if b1 is not None else np.zeros(M, dt)
    b2f = b2 if b2 is not None else np.zeros(E, dt)
    W1f, W2f = np.ascontiguousarray(W1).reshape(-1), np.ascontiguousarray(W2).reshape(-1)
    with _dense.one_blas_thread():
        ok = map_chunks(lambda lo, hi: _m.mlp_fwd_rows(x2.reshape(-1), W1f, b1f, W2f, b2f, D, M, E, lo, hi,
                                                       z.reshape(-1), t.reshape(-1), y.reshape(-1)),
                        N, min_chunk=_dense.MIN_ROWS)
    if not all(ok):
        return _mlp_composed_forward(x, W1, b1, W2, b2)
    return y.reshape(x.shape[:-1] + (E,)), MLPFastCache(x2, W1, b1, W2, b2, tuple(x.shape), z, t)


def _mlp_composed_caches(cache: MLPFastCache):
    """The composition's caches (DenseGeluFastCache, DenseFastCache) rebuilt from a fused forward's: g = 0.5 z
    (1 + t) as the forward computed it."""
    x2, W1, b1, W2, b2, x_shape, z, t = cache
    g = (z.dtype.type(0.5) * z) * (z.dtype.type(1.0) + t)
    c1 = DenseGeluFastCache(x2, W1, b1 is not None, x_shape, z, t)
    c2 = DenseFastCache(g, W2, b2 is not None, x_shape[:-1] + (W1.shape[1],))
    return c1, c2


def mlp_backward(dy, cache):
    """Returns (dx (..., D), dW1 (D, M), db1 (M,) or None, dW2 (M, E), db2 (E,) or None).  Fused
    (``mlp.mlp_bwd_rows``: dg = dy W2^T never leaves the cache) for a fused forward's cache and a well-formed
    NumPy dy; the composition of ``dense_backward`` and ``dense_gelu_backward`` for anything else, and when the
    fused pass meets a NaN or inf in dg (a NaN or inf in dy puts one there), so errors and overflow come out as
    the reference's."""
    if not isinstance(cache, MLPFastCache):
        if isinstance(cache, _ref_mlp.MLPCache):
            dg, dW2, db2 = dense_backward(dy, cache.fc2)
            dx, dW1, db1 = dense_gelu_backward(dg, cache.fc1)
            return dx, dW1, db1, dW2, db2
        return _ref_mlp.mlp_backward(dy, cache)
    x2, W1, b1, W2, b2, x_shape, z, t = cache
    D, M, E = W1.shape[0], W1.shape[1], W2.shape[1]
    if not (isinstance(dy, np.ndarray) and dy.dtype == z.dtype and tuple(dy.shape) == x_shape[:-1] + (E,)):
        c1, c2 = _mlp_composed_caches(cache)
        return mlp_backward(dy, _ref_mlp.MLPCache(c1, c2))
    from . import mlp as _m
    dt = z.dtype
    dy2 = np.ascontiguousarray(dy.reshape(-1, E))
    N = dy2.shape[0]
    dx = np.empty((N, D), dt)
    W1t = np.ascontiguousarray(W1.T).reshape(-1)
    W2t = np.ascontiguousarray(W2.T).reshape(-1)

    def rows(lo, hi):
        dW1 = np.zeros(D * M, dt)
        dW2t = np.zeros(E * M, dt)
        db1 = np.zeros(M)
        db2 = np.zeros(E)
        ok = _m.mlp_bwd_rows(dy2.reshape(-1), x2.reshape(-1), z.reshape(-1), t.reshape(-1), W1t, W2t, D, M, E,
                             lo, hi, dx.reshape(-1), dW1, dW2t, db1, db2)
        return dW1, dW2t, db1, db2, ok

    with _dense.one_blas_thread():
        parts = map_chunks(rows, N, min_chunk=_dense.MIN_ROWS)
    if not all(p[4] for p in parts):
        c1, c2 = _mlp_composed_caches(cache)
        return mlp_backward(dy, _ref_mlp.MLPCache(c1, c2))
    dW1, dW2t, db1, db2, _ = parts[0]
    for p in parts[1:]:                     # partial sums in range order: the same result on every run
        dW1 += p[0]
        dW2t += p[1]
        db1 += p[2]
        db2 += p[3]
    return (dx.reshape(x_shape), dW1.reshape(D, M), (db1.astype(dt) if b1 is not None else None),
            np.ascontiguousarray(dW2t.reshape(E, M).T), (db2.astype(dt) if b2 is not None else None))


# --------------------------------------------------------------------------------------------
# [L4] LayerNorm (the reference's cache type: xhat, rstd, w keep their meaning)
# --------------------------------------------------------------------------------------------

LN_MIN_ROWS = 256          # LayerNorm rows per thread below which a call runs on the calling thread alone


def layernorm_forward(x, w, b, *, eps=1e-5):
    """[L4] y = (x - mean(x)) / sqrt(var(x) + eps) * w + b over the last axis.  Rows shared out to the thread pool;
    NaN/inf in x: found by the kernel in its row sums (a NaN or inf entry makes its row's sum NaN or inf), then
    reported by the reference's check (same message)."""
    if not _numpy(x, w, b):
        return _ref_ln.layernorm_forward(x, w, b, eps=eps)
    _ref_ln.check_layernorm_inputs(x, w, b, eps, finite=False)   # the reference's checks (same ValueErrors) ...
    if not (all_finite(w) and all_finite(b)):
        _ref_ln.check_layernorm_inputs(x, w, b, eps)               # ... NaN/inf in w, b (small): the reference's
    D = x.shape[-1]
    xf, wf, bf = _k().flat(x), _k().flat(w), _k().flat(b)
    M = xf.size // D if D else 0
    y = np.empty(xf.shape, x.dtype)
    xhat = np.empty(xf.shape, x.dtype)
    rstd = np.empty(M, x.dtype)
    e = x.dtype.type(eps)
    ok = map_chunks(lambda lo, hi: _e().layernorm_fwd(xf[lo * D:hi * D], wf, bf, e, D, y[lo * D:hi * D],
                                                      xhat[lo * D:hi * D], rstd[lo:hi]), M, min_chunk=LN_MIN_ROWS)
    if not all(ok):
        _ref_ln.check_layernorm_inputs(x, w, b, eps)
    return y.reshape(x.shape), _ref_ln.LayerNormCache(xhat.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)), w)


def layernorm_backward(dy, cache):
    """Returns (dx (..., D), dw (D,), db (D,)).  Rows shared out to the thread pool, each range's dw, db partial sums
    (float64) added in range order, so the result does not depend on the threads. NaN/inf in dy is found in db (a
    non-finite dy[m, j] leaves db[j] non-finite), then reported by the reference's check of dy (same message)."""
    xhat, rstd, w = cache
    if not _numpy(xhat):
        return _ref_ln.layernorm_backward(dy, cache)
    check_dout(dy, xhat.shape, xhat.dtype, finite=False)
    if not _numpy(dy):
        raise ValueError("dout: lives on a different device/array module than the forward's input")
    D = xhat.shape[-1]
    dyf, xf, rf, wf = _k().flat(dy), _k().flat(xhat), _k().flat(rstd), _k().flat(w)
    M = rf.size
    dx = np.empty(xf.shape, xhat.dtype)

    def rows(lo, hi):
        sw, sb = np.zeros(D), np.zeros(D)
        _e().layernorm_bwd(dyf[lo * D:hi * D], xf[lo * D:hi * D], rf[lo:hi], wf, D, dx[lo * D:hi * D], sw, sb)
        return sw, sb

    parts = map_chunks(rows, M, min_chunk=LN_MIN_ROWS)
    sw, sb = parts[0]
    for pw, pb in parts[1:]:
        sw += pw
        sb += pb
    dw, db = sw.astype(xhat.dtype), sb.astype(xhat.dtype)
    if not all_finite(db):
        check_dout(dy, xhat.shape, xhat.dtype)
    return dx.reshape(xhat.shape), dw, db


# --------------------------------------------------------------------------------------------
# [L4] + [L1] a LayerNorm and the dense layer it feeds, row block by row block (numba_kernels/lndense.py)
# --------------------------------------------------------------------------------------------

class LayerNormDenseFastCache(NamedTuple):
    x2: np.ndarray          # (N, D) the input, rows flattened, C-contiguous
    w: np.ndarray           # (D,) LayerNorm weight, C-contiguous
    b: np.ndarray           # (D,) LayerNorm bias, C-contiguous
    eps: float
    a2: object              # (N, D) layernorm(x), the dense layer's input (for dW = a^T dy), or None where the
                            # backward makes dW block by block (``_own_dw``)
    W: np.ndarray           # (D, O)
    has_c: bool             # whether the dense layer has a bias
    x_shape: tuple          # the input's shape (..., D)


def _ln_dense_fusable(x, w, b, W, c, eps) -> bool:
    """Whether the fused kernels take these inputs: NumPy arrays of one float dtype with the shapes the reference
    accepts (no empty axis), finite parameters, eps > 0. Anything else goes through the composition of this
    module's layernorm and dense ops, whose checks raise the reference's ValueErrors."""
    arrays = [a for a in (x, W, c) if a is not None]
    if not _float_numpy(arrays):
        return False
    if x.ndim < 1 or x.size == 0 or W.ndim != 2 or W.shape[0] != x.shape[-1] or W.shape[1] == 0:
        return False
    if c is not None and c.shape != (W.shape[1],):
        return False
    return _ln_params_fusable(x, w, b, eps) and all(all_finite(a) for a in arrays[1:])


def _own_dw(O) -> bool:
    """Whether the fused backward makes dW = a^T dy itself, block by block from the recomputed a (``gemm.atb_rows``,
    while a and dy are in cache; then the forward does not keep a): for outputs a multiple of 16 and at least 64
    wide (the QKV product), where that measured faster than one BLAS product over the stored a
    (benchmarks/notes.md); otherwise (the readout) BLAS, as the dense op."""
    return O % 16 == 0 and O >= 64


def _ln_dense_composed_forward(x, w, b, W, c, eps):
    a, c1 = layernorm_forward(x, w, b, eps=eps)
    y, c2 = dense_forward(a, W, c)
    return y, _ref_lnd.LayerNormDenseCache(c1, c2)


def layernorm_dense_forward(x, w, b, W, c=None, *, eps=1e-5):
    """[L4] + [L1] y = layernorm(x) W + c -> (y (..., O), cache).

    Fused (``lndense.ln_dense_fwd_rows``, rows shared out to the thread pool) where ``_ln_dense_fusable``: each
    block of rows is normalised right before its product, and the LayerNorm's own cache is not written (nor the
    normalised rows, where the backward makes dW from recomputed ones: ``_own_dw``).
    Otherwise, and whenever the fused pass meets a NaN or inf in x, the composition of ``layernorm_forward`` and
    ``dense_forward`` runs instead, so errors come out as the reference's; finite inputs whose product overflows
    come back as they are, as there."""
    if not _numpy(x, w, b, W, c):
        return _ref_lnd.layernorm_dense_forward(x, w, b, W, c, eps=eps)
    if not _ln_dense_fusable(x, w, b, W, c, eps):
        return _ln_dense_composed_forward(x, w, b, W, c, eps)
    from . import lndense as _l
    dt = x.dtype
    D, O = W.shape
    x2 = np.ascontiguousarray(x.reshape(-1, D))
    N = x2.shape[0]
    keep_a = not _own_dw(O)
    a2 = np.empty((N, D) if keep_a else (0, D), dt)
    y2 = np.empty((N, O), dt)
    wf, bf, Wc = np.ascontiguousarray(w), np.ascontiguousarray(b), np.ascontiguousarray(W)
    cf = c if c is not None else np.zeros(O, dt)
    e = dt.type(eps)
    with _dense.one_blas_thread():
        ok = map_chunks(lambda lo, hi: _l.ln_dense_fwd_rows(x2.reshape(-1), wf, bf, e, keep_a, a2.reshape(-1), a2, Wc,
                                                            cf, c is not None, y2, D, lo, hi),
                        N, min_chunk=_dense.MIN_ROWS)
    if not all(ok):
        return _ln_dense_composed_forward(x, w, b, W, c, eps)
    return (y2.reshape(x.shape[:-1] + (O,)),
            LayerNormDenseFastCache(x2, wf, bf, eps, a2 if keep_a else None, Wc, c is not None, tuple(x.shape)))


def _ln_dense_composed_cache(cache: LayerNormDenseFastCache):
    """The composition's cache rebuilt from a fused forward's: the LayerNorm run again on x (the same values)."""
    x2, w, b, eps, a2, W, has_c, x_shape = cache
    a, c1 = layernorm_forward(x2.reshape(x_shape), w, b, eps=eps)
    if a2 is None:
        a2 = np.ascontiguousarray(a.reshape(x2.shape))
    return _ref_lnd.LayerNormDenseCache(c1, DenseFastCache(a2, W, has_c, x_shape))


def layernorm_dense_backward(dy, cache):
    """Returns (dx (..., D), dw, db (D,), dW (D, O), dc (O,) or None).  Fused (``lndense.ln_dense_bwd_rows``: da =
    dy W^T never leaves the cache; dW = a^T dy block by block there (``_own_dw``), or one product per range of rows
    over the stored a, as the dense op's) for a fused
    forward's cache and a well-formed NumPy dy; the composition of ``dense_backward`` and ``layernorm_backward``
    for anything else, and when the LayerNorm's sums find a NaN or inf in da (a NaN or inf in dy puts one there),
    so errors come out as the reference's."""
    if not isinstance(cache, LayerNormDenseFastCache):
        if isinstance(cache, _ref_lnd.LayerNormDenseCache):
            da, dW, dc = dense_backward(dy, cache.dense)
            dx, dw, db = layernorm_backward(da, cache.ln)
            return dx, dw, db, dW, dc
        return _ref_lnd.layernorm_dense_backward(dy, cache)
    x2, w, b, eps, a2, W, has_c, x_shape = cache
    D, O = W.shape
    dt = x2.dtype
    if not (isinstance(dy, np.ndarray) and dy.dtype == dt and tuple(dy.shape) == x_shape[:-1] + (O,)):
        return layernorm_dense_backward(dy, _ln_dense_composed_cache(cache))
    from . import lndense as _l
    dy2 = np.ascontiguousarray(dy.reshape(-1, O))
    N = dy2.shape[0]
    dx = np.empty(N * D, dt)
    Wt = np.ascontiguousarray(W.T)
    Wtf = _dense._narrow(W.T, dt)
    narrow = Wtf is not None
    if not narrow:
        Wtf = Wt.reshape(-1)
    e = dt.type(eps)

    own = a2 is None

    def rows(lo, hi):
        sw, sb = np.zeros(D), np.zeros(D)
        dWp = np.zeros(D * O if own else 0, dt)
        _l.ln_dense_bwd_rows(dy2, dy2.reshape(-1), x2.reshape(-1), w, b, e, Wt, Wtf, narrow, own, dWp, dx, D, lo, hi,
                             sw, sb)
        return sw, sb, (dWp.reshape(D, O) if own else _dense.xt_dy(a2, dy2, lo, hi))

    with _dense.one_blas_thread():
        parts = map_chunks(rows, N, min_chunk=_dense.MIN_ROWS)
    sw, sb, dW = parts[0]
    dW = np.array(dW, order="C")
    for p in parts[1:]:                     # partial sums in range order: the same result on every run
        sw += p[0]
        sb += p[1]
        dW += p[2]
    if not all_finite(sb):                  # sb: column sums of da = dy W^T
        return layernorm_dense_backward(dy, _ln_dense_composed_cache(cache))
    dc = dy2.sum(axis=0) if has_c else None
    return dx.reshape(x_shape), sw.astype(dt), sb.astype(dt), dW, dc


# --------------------------------------------------------------------------------------------
# [L4] + [L1] + [L5] the pre-LayerNorm MLP sub-block with its residual, row block by row block
# (numba_kernels/mlp.py: ln_mlp_fwd_rows / ln_mlp_bwd_rows)
# --------------------------------------------------------------------------------------------

class MLPBlockFastCache(NamedTuple):
    x2: np.ndarray          # (N, D) the input (the residual stream), rows flattened, C-contiguous
    w: np.ndarray           # (D,) LayerNorm weight, C-contiguous
    b: np.ndarray           # (D,) LayerNorm bias, C-contiguous
    eps: float
    W1: np.ndarray          # (D, M)
    b1: object              # (M,) or None
    W2: np.ndarray          # (M, D)
    b2: object              # (D,) or None
    x_shape: tuple          # the input's shape (..., D)
    z: np.ndarray           # (N, M) layernorm(x) W1 + b1
    t: np.ndarray           # (N, M) tanh(sqrt(2/pi) (z + 0.044715 z^3))


def _block_fusable(x, w, b, W1, b1, W2, b2, eps) -> bool:
    """Whether the fused kernels take these inputs: the MLP's conditions (``_mlp_fusable``), an MLP that maps back
    to the width D, finite LayerNorm parameters of shape (D,) and x's dtype, eps > 0. Anything else goes through
    the composition of this module's layernorm and mlp ops, whose checks raise the reference's ValueErrors."""
    return (_mlp_fusable(x, W1, b1, W2, b2) and W2.shape[1] == x.shape[-1]
            and _ln_params_fusable(x, w, b, eps))


def _block_composed_forward(x, w, b, W1, b1, W2, b2, eps):
    m, c1 = layernorm_forward(x, w, b, eps=eps)
    delta, c2 = mlp_forward(m, W1, b1, W2, b2)
    _ref_block.check_residual_width(x, W2)
    return x + delta, _ref_block.MLPBlockCache(c1, c2)


def mlp_block_forward(x, w, b, W1, b1, W2, b2, *, eps=1e-5):
    """[L4] + [L1] + [L5] y = x + gelu(layernorm(x) W1 + b1) W2 + b2 -> (y (..., D), cache).

    Fused (``mlp.ln_mlp_fwd_rows``, rows shared out to the thread pool) where ``_block_fusable``: the normalised
    input and the MLP's output stay in cache, block by block. Otherwise, and whenever the fused pass meets a NaN or
    inf in x or in z = layernorm(x) W1 + b1, the composition of ``layernorm_forward``, ``mlp_forward`` and the
    addition runs instead, so errors and overflow come out as the reference's."""
    if not _numpy(x, w, b, W1, b1, W2, b2):
        return _ref_block.mlp_block_forward(x, w, b, W1, b1, W2, b2, eps=eps)
    if not _block_fusable(x, w, b, W1, b1, W2, b2, eps):
        return _block_composed_forward(x, w, b, W1, b1, W2, b2, eps)
    from . import mlp as _m
    dt = x.dtype
    D, M = W1.shape
    x2 = np.ascontiguousarray(x.reshape(-1, D))
    N = x2.shape[0]
    z = np.empty((N, M), dt)
    t = np.empty((N, M), dt)
    y = np.empty((N, D), dt)
    wf, bf = np.ascontiguousarray(w), np.ascontiguousarray(b)
    b1f = b1 if b1 is not None else np.zeros(M, dt)
    b2f = b2 if b2 is not None else np.zeros(D, dt)
    W1f, W2f = np.ascontiguousarray(W1).reshape(-1), np.ascontiguousarray(W2).reshape(-1)
    e = dt.type(eps)
    ok = map_chunks(lambda lo, hi: _m.ln_mlp_fwd_rows(x2.reshape(-1), wf, bf, e, W1f, b1f, W2f, b2f, D, M, lo, hi,
                                                      z.reshape(-1), t.reshape(-1), y.reshape(-1)),
                    N, min_chunk=_dense.MIN_ROWS)
    if not all(ok):
        return _block_composed_forward(x, w, b, W1, b1, W2, b2, eps)
    return y.reshape(x.shape), MLPBlockFastCache(x2, wf, bf, eps, W1, b1, W2, b2, tuple(x.shape), z, t)


def _block_composed_cache(cache: MLPBlockFastCache):
    """The composition's cache rebuilt from a fused forward's: the LayerNorm run again on x (the same values)."""
    x2, w, b, eps, W1, b1, W2, b2, x_shape, z, t = cache
    m, c1 = layernorm_forward(x2.reshape(x_shape), w, b, eps=eps)
    m2 = np.ascontiguousarray(m.reshape(x2.shape))
    return _ref_block.MLPBlockCache(c1, MLPFastCache(m2, W1, b1, W2, b2, x_shape, z, t))


def mlp_block_backward(dy, cache):
    """Returns (dx (..., D), dw, db (D,), dW1 (D, M), db1 (M,) or None, dW2 (M, D), db2 (D,) or None).  Fused
    (``mlp.ln_mlp_bwd_rows``) for a fused forward's cache and a well-formed NumPy dy; the composition of
    ``mlp_backward``, ``layernorm_backward`` and the addition for anything else, and when the fused pass meets a
    NaN or inf in dy W2^T or in the LayerNorm's input gradient, so errors come out as the reference's."""
    if not isinstance(cache, MLPBlockFastCache):
        if isinstance(cache, _ref_block.MLPBlockCache):
            dm, dW1, db1, dW2, db2 = mlp_backward(dy, cache.mlp)
            dx, dw, db = layernorm_backward(dm, cache.ln)
            return dy + dx, dw, db, dW1, db1, dW2, db2
        return _ref_block.mlp_block_backward(dy, cache)
    x2, w, b, eps, W1, b1, W2, b2, x_shape, z, t = cache
    D, M = W1.shape
    dt = z.dtype
    if not (isinstance(dy, np.ndarray) and dy.dtype == dt and tuple(dy.shape) == x_shape):
        return mlp_block_backward(dy, _block_composed_cache(cache))
    from . import mlp as _m
    dy2 = np.ascontiguousarray(dy.reshape(-1, D))
    N = dy2.shape[0]
    dx = np.empty((N, D), dt)
    W1t = np.ascontiguousarray(W1.T).reshape(-1)
    W2t = np.ascontiguousarray(W2.T).reshape(-1)
    e = dt.type(eps)

    def rows(lo, hi):
        dW1 = np.zeros(D * M, dt)
        dW2t = np.zeros(D * M, dt)
        db1, db2, sw, sb = np.zeros(M), np.zeros(D), np.zeros(D), np.zeros(D)
        ok = _m.ln_mlp_bwd_rows(dy2.reshape(-1), x2.reshape(-1), w, b, e, z.reshape(-1), t.reshape(-1), W1t, W2t,
                                D, M, lo, hi, dx.reshape(-1), dW1, dW2t, db1, db2, sw, sb)
        return dW1, dW2t, db1, db2, sw, sb, ok

    parts = map_chunks(rows, N, min_chunk=_dense.MIN_ROWS)
    dW1, dW2t, db1, db2, sw, sb, _ = parts[0]
    for p in parts[1:]:                     # partial sums in range order: the same result on every run
        dW1 += p[0]
        dW2t += p[1]
        db1 += p[2]
        db2 += p[3]
        sw += p[4]
        sb += p[5]
    if not (all(p[6] for p in parts) and all_finite(sb)):     # sb: column sums of the LayerNorm's input gradient
        return mlp_block_backward(dy, _block_composed_cache(cache))
    return (dx.reshape(x_shape), sw.astype(dt), sb.astype(dt), dW1.reshape(D, M),
            (db1.astype(dt) if b1 is not None else None), np.ascontiguousarray(dW2t.reshape(D, M).T),
            (db2.astype(dt) if b2 is not None else None))


# --------------------------------------------------------------------------------------------
# [L5] GELU (tanh approximation)
# --------------------------------------------------------------------------------------------

class GeluFastCache(NamedTuple):
    x: np.ndarray   # (...) the input
    t: np.ndarray   # (...) tanh(sqrt(2/pi) (x + 0.044715 x^3)), kept so the backward needs no tanh


GELU_MIN_CHUNK = 1 << 15     # elements per thread below which GELU runs on the calling thread alone


def gelu_forward(x):
    """[L5] gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).  Ranges shared out to the thread pool; NaN/inf
    in x: found by the kernel, then reported by the reference's check (same message)."""
    if not _numpy(x):
        return _ref_act.gelu_forward(x)
    check_float_array("x", x, finite=False)
    xf = _k().flat(x)
    y = np.empty(xf.shape, x.dtype)
    t = np.empty(xf.shape, x.dtype)
    if not _elementwise_split(_e().gelu_fwd, xf.size, GELU_MIN_CHUNK, xf, y, t):
        check_float_array("x", x)
    return y.reshape(x.shape), GeluFastCache(x, t.reshape(x.shape))


def gelu_backward(dy, cache):
    """Returns dx (...).  NaN/inf in dy: found by the kernel, reported by the reference's check."""
    if not isinstance(cache, GeluFastCache):
        return _ref_act.gelu_backward(dy, cache)
    x, t = cache
    check_dout(dy, x.shape, x.dtype, finite=False)
    if not _numpy(dy):
        raise ValueError("dout: lives on a different device/array module than the forward's input")
    dx = np.empty(x.size, x.dtype)
    if not _elementwise_split(_e().gelu_bwd, dx.size, GELU_MIN_CHUNK, _k().flat(dy), _k().flat(x), _k().flat(t), dx):
        check_dout(dy, x.shape, x.dtype)
    return dx.reshape(x.shape)


# --------------------------------------------------------------------------------------------
# [L6] activation clipping
# --------------------------------------------------------------------------------------------

class ClipFastCache(NamedTuple):
    inside: np.ndarray   # (...) uint8, 1 where -c < x < c (the gradient passes)


CLIP_MIN_CHUNK = 1 << 16     # elements per thread below which clipping runs on the calling thread alone


def _elementwise_split(kernel, n, min_chunk, *arrays):
    """all(kernel(*(a[lo:hi] for a in arrays)) over ranges of 0..n-1 shared out to the thread pool) for 1-D
    arrays of length n (``_pool.map_chunks``, at least ``min_chunk`` elements per range; the kernels release the
    GIL)."""
    return all(map_chunks(lambda lo, hi: kernel(*(a[lo:hi] for a in arrays)), n, min_chunk=min_chunk))


def clip_forward(x, *, c):
    """[L6] y = clip(x, -c, c); the gradient is zero outside the open band (-c, c).  NaN/inf in x: found by the
    kernel in its one pass, then reported by the reference's check (same message)."""
    if not _numpy(x):
        return _ref_act.clip_forward(x, c=c)
    check_float_array("x", x, finite=False)
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise ValueError(f"c: expected a positive finite clipping bound, got {c!r}")
    xf = _k().flat(x)
    y = np.empty(xf.shape, x.dtype)
    inside = np.empty(xf.shape, np.uint8)
    cc = x.dtype.type(c)
    if not _elementwise_split(lambda a, b, m: _k().clip_fwd(a, cc, b, m), xf.size, CLIP_MIN_CHUNK, xf, y, inside):
        check_float_array("x", x)
    return y.reshape(x.shape), ClipFastCache(inside.reshape(x.shape))


def clip_backward(dy, cache):
    """Returns dx (...) = dy where -c < x < c, else 0.  NaN/inf in dy: found by the kernel, reported as the
    reference's check reports it."""
    if not isinstance(cache, ClipFastCache):
        return _ref_act.clip_backward(dy, cache)
    check_dout(dy, cache.inside.shape, dy.dtype, finite=False)
    if not _numpy(dy):
        raise ValueError("dy: lives on a different device/array module than the forward's input")
    dx = np.empty(dy.size, dy.dtype)
    if not _elementwise_split(_k().clip_bwd, dx.size, CLIP_MIN_CHUNK, _k().flat(dy), cache.inside.reshape(-1), dx):
        check_dout(dy, cache.inside.shape, dy.dtype)
    return dx.reshape(dy.shape)


# --------------------------------------------------------------------------------------------
# head layout (no arithmetic): views instead of copies
# --------------------------------------------------------------------------------------------
# The reference copies every split into C-contiguous (B, H, T, d) arrays for its batched matmuls. The
# Numba kernels read any strides (``attention._strided``), so here a split is a view of the model's
# buffer, and the attention backwards write dq, dk, dv into one buffer in the fused QKV layout, so the
# merge before the QKV product's backward is a reshape. Other kernels (the mesa-layer's) copy
# strided input themselves where they need contiguous rows.

def split_qkv(qkv, heads):
    """[B, T, 3*H*d] -> q, k, v, each [B, H, T, d]: strided views of ``qkv`` (NumPy) or the reference's copies."""
    if not _numpy(qkv):
        return _ref_heads.split_qkv(qkv, heads)
    x = _ref_heads.qkv_view(qkv, heads)                                     # [3,B,H,T,d] view
    return x[0], x[1], x[2]


def split_heads(x, heads):
    """[B, T, H*d] -> [B, H, T, d]: a strided view of ``x`` (NumPy) or the reference's copy."""
    if not _numpy(x):
        return _ref_heads.split_heads(x, heads)
    return _ref_heads.heads_view(x, heads)


def _same_view(a, b):
    return (a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def merge_qkv(dq, dk, dv):
    """3 x [B, H, T, d] -> [B, T, 3*H*d].  No copy when the three are the views ``attention.qkv_empty`` makes
    (what the fast attention backwards return); otherwise the reference's copy."""
    base = dq.base
    if (isinstance(dq, np.ndarray) and isinstance(base, np.ndarray) and dk.base is base and dv.base is base
            and dq.ndim == 4 and base.flags.c_contiguous):
        B, H, T, d = dq.shape
        if base.size == 3 * dq.size:
            full = base.reshape(B, T, 3, H, d)
            if all(_same_view(g, full[:, :, j].transpose(0, 2, 1, 3)) for j, g in enumerate((dq, dk, dv))):
                return full.reshape(B, T, 3 * H * d)
    return _ref_heads.merge_qkv(dq, dk, dv)


# --------------------------------------------------------------------------------------------
# MSE loss (the reference's cache type, so the reference's mse_backward serves both)
# --------------------------------------------------------------------------------------------

def mse_forward(pred, target):
    """L = sum ||pred - target||^2 / (2 N), N = prod(leading dims): the reference's op in one kernel pass
    (``elementwise.mse_fwd``), the sum of squares accumulated in float64. NaN/inf in pred or target: found in
    diff by the kernel, then reported by the reference's checks (same messages); a finite pred and target
    whose difference overflows pass, as in the reference."""
    if not _numpy(pred, target) or not getattr(pred, "size", 0):
        return _ref_loss.mse_forward(pred, target)                  # CuPy, or nothing to sum
    check_float_array("pred", pred, finite=False)
    check_float_array("target", target, finite=False)
    check_same_dtype(pred=pred, target=target)
    if pred.shape != target.shape:
        raise ValueError(f"target: expected shape {tuple(pred.shape)} (pred's), got {tuple(target.shape)}")
    n = pred.shape[-1] if pred.ndim else 1
    p2, t2 = pred.reshape(-1, n), target.reshape(-1, n)          # views where the leading dims merge
    diff = np.empty(p2.shape, pred.dtype)
    total, finite = _e().mse_fwd(p2, t2, diff)
    if not finite:
        check_float_array("pred", pred)
        check_float_array("target", target)
    N = int(np.prod(pred.shape[:-1])) if pred.ndim > 1 else 1
    return pred.dtype.type(total / (2 * N)), _ref_loss.MSECache(diff.reshape(pred.shape), N)


# the op names this module provides (mesa_fast.ops imports exactly these, overriding the reference's)
FAST_OPS = ("dense_forward", "dense_backward", "dense_gelu_forward", "dense_gelu_backward", "mlp_forward",
            "mlp_backward", "mlp_block_forward", "mlp_block_backward",
            "linear_attention_forward", "linear_attention_backward", "softmax_attention_forward",
            "softmax_attention_backward", "layernorm_forward", "layernorm_backward", "layernorm_dense_forward",
            "layernorm_dense_backward",
            "gelu_forward", "gelu_backward", "clip_forward", "clip_backward", "split_qkv", "split_heads", "merge_qkv",
            "mse_forward")
__all__ = list(FAST_OPS)
