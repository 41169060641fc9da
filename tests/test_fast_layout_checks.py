"""Head-layout ops (views in mesa_fast, copies in mesa_ref), the output-side NaN/inf checks of the fast ops,
``all_finite`` on strided views, and the process-wide settings (C heap, BLAS threads) that mesa_fast makes only
when asked (the heap) or only while a dense op runs (the BLAS threads)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from mesa_fast import ops as F
from mesa_fast.runtime import tuning
from mesa_ref import ops as R
from mesa_ref.ops._common import all_finite

B, T, H, d = 3, 7, 3, 5

# the fast ops compute before they find a NaN/inf (output-side checks), so NumPy warns before the ValueError
pytestmark = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:overflow:RuntimeWarning")


def _qkv(rng, dtype=np.float64):
    return rng.standard_normal((B, T, 3 * H * d)).astype(dtype)


# ------------------------------------------------------------------------------------- layout ops
def test_split_and_merge_agree_with_reference_and_fast_split_is_a_view():
    rng = np.random.default_rng(0)
    qkv = _qkv(rng)
    fast, ref = F.split_qkv(qkv, H), R.split_qkv(qkv, H)
    for f, r in zip(fast, ref):
        assert f.shape == (B, H, T, d)
        np.testing.assert_array_equal(f, r)
        assert np.shares_memory(f, qkv)                  # fast: no copy
        assert r.flags.c_contiguous and not np.shares_memory(r, qkv)
    # q[b, h, t, i] is column h*d + i of the first third, k of the second, v of the third
    np.testing.assert_array_equal(ref[1][2, 1, 4], qkv[2, 4, H * d + d:H * d + 2 * d])
    np.testing.assert_array_equal(R.merge_qkv(*ref), qkv)
    np.testing.assert_array_equal(F.merge_qkv(*ref), qkv)   # unrelated arrays: the reference's copy
    x = rng.standard_normal((B, T, H * d))
    np.testing.assert_array_equal(F.split_heads(x, H), R.split_heads(x, H))
    assert np.shares_memory(F.split_heads(x, H), x)
    np.testing.assert_array_equal(R.merge_heads(R.split_heads(x, H)), x)
    for ns in (F, R):
        with pytest.raises(ValueError, match="qkv: width 45 is not a multiple of 6"):
            ns.split_qkv(qkv, 2)
        with pytest.raises(ValueError, match="rank-3"):
            ns.split_heads(x[0], H)


@pytest.mark.parametrize("kind", ["linear_attention", "softmax_attention"])
def test_attention_backward_output_merges_without_copy(kind):
    rng = np.random.default_rng(1)
    qkv = _qkv(rng)
    out, cache = getattr(F, kind + "_forward")(*F.split_qkv(qkv, H))
    dq, dk, dv = getattr(F, kind + "_backward")(rng.standard_normal(out.shape), cache)
    merged = F.merge_qkv(dq, dk, dv)
    assert merged.shape == qkv.shape and np.shares_memory(merged, dq)        # a reshape of one buffer
    np.testing.assert_array_equal(merged, R.merge_qkv(*(np.array(g) for g in (dq, dk, dv))))
    # a slice of the buffer's views is not the whole buffer: copied, still right
    sub = [g[:, :2] for g in (dq, dk, dv)]
    np.testing.assert_array_equal(F.merge_qkv(*sub), R.merge_qkv(*(np.array(g) for g in sub)))


@pytest.mark.parametrize("dims", [(B, T, H, d), (4, 9, 4, 12), (5, 6, 4, 8)], ids=["d5", "d12", "d8-N20"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["linear_attention", "softmax_attention"])
def test_attention_on_split_views_equals_contiguous(kind, dtype, dims):
    """Views of a fused QKV buffer, as the model passes them: widths below 8 (element-wise gathers), 12 (two
    8 x 8 register transposes that overlap, 16 sequences: one full 16-lane group) and 8 with 20 sequences (one
    full lane group, one partial)."""
    b_, t_, h_, d_ = dims
    rng = np.random.default_rng(2)
    qkv = rng.standard_normal((b_, t_, 3 * h_ * d_)).astype(dtype)
    views = F.split_qkv(qkv, h_)
    dout = F.split_heads(rng.standard_normal((b_, t_, h_ * d_)).astype(dtype), h_)
    fwd, bwd = getattr(F, kind + "_forward"), getattr(F, kind + "_backward")
    out, cache = fwd(*views)
    grads = bwd(dout, cache)
    cont = [np.ascontiguousarray(a) for a in views]
    out_c, cache_c = fwd(*cont)
    np.testing.assert_array_equal(out, out_c)
    for g, gc in zip(grads, bwd(np.ascontiguousarray(dout), cache_c)):
        np.testing.assert_array_equal(g, gc)
    t_out, t_cache = getattr(R, kind + "_forward")(*(a.astype(np.float64) for a in views))
    t_grads = getattr(R, kind + "_backward")(np.asarray(dout, np.float64), t_cache)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got, want in zip((out,) + tuple(grads), (t_out,) + tuple(t_grads)):
        assert np.abs(got - want).max() <= tol * np.abs(want).max()


# ------------------------------------------------------------------------------- NaN / inf checks
BAD = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("arg", ["q", "k", "v"])
@pytest.mark.parametrize("kind", ["linear_attention", "softmax_attention"])
def test_attention_finds_every_non_finite_input(kind, arg, bad):
    """The fast forwards find NaN/inf as their kernels load q, k, v; at any position, even next to zeros
    (inf * 0) or at the last step, the reference's ValueError naming the argument follows."""
    rng = np.random.default_rng(3)
    for trial in range(12):
        views = [np.array(a, np.float32) for a in R.split_qkv(_qkv(rng, np.float32), H)]
        b, h, t, i = (int(rng.integers(n)) for n in (B, H, T, d))
        if trial % 3 == 0:
            t = T - 1
        if trial % 4 == 1:
            for a in views:
                a[b, h] = 0.0                           # zeros around it
        a = views["qkv".index(arg)]
        a[b, h, t, i] = bad
        for ns in (F, R):
            with pytest.raises(ValueError, match=f"^{arg}: contains non-finite values"):
                getattr(ns, kind + "_forward")(*views)


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("kind", ["linear_attention", "softmax_attention"])
def test_attention_backward_finds_every_non_finite_dout(kind, bad):
    """The fast backwards find NaN/inf in dout as their kernels read it (a strided view, as the model passes it)."""
    rng = np.random.default_rng(8)
    views = F.split_qkv(_qkv(rng, np.float32), H)
    _, cache = getattr(F, kind + "_forward")(*views)
    for trial in range(8):
        merged = rng.standard_normal((B, T, H * d)).astype(np.float32)
        merged[int(rng.integers(B)), int(rng.integers(T)), int(rng.integers(H * d))] = bad
        with pytest.raises(ValueError, match="^dout: contains non-finite values"):
            getattr(F, kind + "_backward")(F.split_heads(merged, H), cache)


@pytest.mark.parametrize("split", [False, True], ids=["one-range", "split"])
@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
def test_clip_finds_every_non_finite_input(bad, split, monkeypatch):
    """The fast clip kernels check x (forward) and dy (backward) in the pass that clips, in every range when
    the pass is split over the thread pool (CLIP_MIN_CHUNK = 5)."""
    if split:
        monkeypatch.setattr(tuning, "CLIP_MIN_CHUNK", 5)
    rng = np.random.default_rng(9)
    for trial in range(8):
        x = (2 * rng.standard_normal((5, 9, 7))).astype(np.float32)
        _, cache = F.clip_forward(x, c=1.5)
        idx = tuple(int(rng.integers(n)) for n in x.shape)
        x[idx] = bad
        for ns in (F, R):
            with pytest.raises(ValueError, match="^x: contains non-finite values"):
                ns.clip_forward(x.transpose(1, 0, 2), c=1.5)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        dy[idx] = bad
        with pytest.raises(ValueError, match="^dout: contains non-finite values"):
            F.clip_backward(dy, cache)


def test_linear_attention_overflow_passes_as_in_reference():
    """Finite inputs whose result overflows raise nothing, in either namespace."""
    q = np.full((1, 1, 2, 2), 1e20, np.float32)
    with np.errstate(all="ignore"):
        out_f, _ = F.linear_attention_forward(q, q, q)
        out_r, _ = R.linear_attention_forward(q, q, q)
    assert not np.isfinite(out_f).any() and not np.isfinite(out_r).any()


def _each_bad_input_is_named(op, x, W, bias, x_pos, k, bad):
    """``bad`` at x[x_pos], then W[j, k] (j = x_pos[-1]), then b[k]: the fast and the reference ``op`` each raise
    naming that argument."""
    for i, (name, pos) in enumerate((("x", x_pos), ("W", (x_pos[-1], k)), ("b", k))):
        args = [x.copy(), W.copy(), bias.copy()]
        args[i][pos] = bad
        for ns in (F, R):
            with pytest.raises(ValueError, match=f"^{name}: contains non-finite values"):
                getattr(ns, op)(*args)


def _bad_dout_is_named(op, x, W, bias, dout):
    """``op``_backward of the fast and the reference ``op``_forward(x, W, bias) each raise naming dout."""
    for ns in (F, R):
        _, c = getattr(ns, op + "_forward")(x, W, bias)
        with pytest.raises(ValueError, match="^dout: contains non-finite values"):
            getattr(ns, op + "_backward")(dout, c)


@pytest.mark.parametrize("split", [False, True], ids=["one-range", "split"])
@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("shape", [(3, 11, 8, 5), (3, 11, 5, 8), (3, 11, 64, 5), (3, 11, 64, 40), (3, 11, 40, 130)],
                         ids=["check-y", "check-x", "gemm", "gemm-y", "gemm-dx"])
def test_dense_finds_every_non_finite_input(shape, bad, split, monkeypatch):
    """dense_forward checks y when y is the smaller array (8 -> 5) and x, W, b when x is (5 -> 8); dense_backward
    finds NaN/inf in dy through dW (for 64 -> 5 and 64 -> 40 computed by gemm.atb_rows; y for 64 -> 40 and dx for
    40 -> 130 by gemm.ab_rows). Positions drawn at random, with zero rows and columns around them; "split":
    the 33 rows multiplied (and checked) in several ranges on the thread pool (DENSE_MIN_ROWS = 4). When x and W are
    both bad, the message names x, as the reference's does."""
    if split:
        monkeypatch.setattr(tuning, "DENSE_MIN_ROWS", 4)
    rng = np.random.default_rng(4)
    b0, t0, din, dout = shape
    for trial in range(10):
        x = rng.standard_normal((b0, t0, din)).astype(np.float32)
        W = rng.standard_normal((din, dout)).astype(np.float32)
        bias = rng.standard_normal(dout).astype(np.float32)
        n, j, k = int(rng.integers(b0)), int(rng.integers(din)), int(rng.integers(dout))
        if trial % 2:
            x[n] = 0.0
            W[:, k] = 0.0
        _each_bad_input_is_named("dense_forward", x, W, bias, (n, int(rng.integers(t0)), j), k, bad)
        both = [x.copy(), W.copy(), bias]
        both[0][int(rng.integers(b0)), int(rng.integers(t0)), int(rng.integers(din))] = bad
        both[1][int(rng.integers(din)), int(rng.integers(dout))] = bad
        for ns in (F, R):
            with pytest.raises(ValueError, match="^x: contains non-finite values"):
                ns.dense_forward(*both)
        dy = rng.standard_normal((b0, t0, dout)).astype(np.float32)
        dy[n, int(rng.integers(t0)), k] = bad
        _bad_dout_is_named("dense", x, W, bias, dy)


def test_dense_overflow_passes_as_in_reference():
    x = np.full((2, 3, 6), 1e30, np.float32)
    W = np.full((6, 2), 1e30, np.float32)
    for ns in (F, R):
        with np.errstate(all="ignore"):
            y, c = ns.dense_forward(x, W)
        assert np.isinf(y).all()
        with np.errstate(all="ignore"):
            dx, dW, _ = ns.dense_backward(np.full(y.shape, 1e30, np.float32), c)
        assert np.isinf(dW).all()


VIEWS = [lambda a: a.transpose(0, 2, 1, 3), lambda a: a.transpose(3, 1, 0, 2), lambda a: a[:, ::2],
         lambda a: a.transpose(3, 1, 0, 2)[::-1], lambda a: a[..., 1], lambda a: a]


def test_all_finite_on_views():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((4, 6, 3, 5))
    for view in VIEWS:
        assert all_finite(view(base))
        for bad in BAD:
            copy = base.copy()
            v = view(copy)
            v[tuple(int(rng.integers(n)) for n in v.shape)] = bad
            assert not all_finite(v)
    # entries outside a strided view do not count
    copy = base.copy()
    copy[:, 1] = np.nan
    assert all_finite(copy[:, ::2]) and not all_finite(copy[:, 1::2])
    assert all_finite(np.empty((0, 3)))


# ------------------------------------------------------------------------------------- heap setting
def _run(code, **env):
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, check=True).stdout


_HEAP_CODE = r'''
import ctypes
calls = []
class SpyCDLL(ctypes.CDLL):                        # records every lookup of mallopt in any C library
    def __getattr__(self, name):
        if name == "mallopt":
            calls.append(name)
        return super().__getattr__(name)
ctypes.CDLL = SpyCDLL
import numpy as np
import mesa_fast
from mesa_fast.runtime import heap as _heap
state = [_heap.applied, len(calls)]                                     # after the import
y, cache = mesa_fast.ops.dense_forward(np.ones((3000, 4)), np.ones((4, 3)))
mesa_fast.ops.dense_backward(np.ones_like(y), cache)
state += [_heap.applied, len(calls)]                                    # after a dense op
state += [mesa_fast.keep_freed_memory(), _heap.applied, len(calls)]     # the explicit call
state += [mesa_fast.keep_freed_memory(), len(calls)]                    # once only
print(*state)
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_heap_setting_is_explicit_applies_once_and_can_be_switched_off():
    """Importing mesa_fast and running an op leave the C allocator alone; keep_freed_memory() applies the
    setting once; MESA_FAST_KEEP_HEAP=0 makes it a no-op; another value is a ValueError at the call."""
    assert _run(_HEAP_CODE).split() == "False 0 False 0 True True 1 True 1".split()
    assert _run(_HEAP_CODE, MESA_FAST_KEEP_HEAP="0").split() == "False 0 False 0 False False 0 False 0".split()
    r = subprocess.run([sys.executable, "-c", _HEAP_CODE], capture_output=True, text=True,
                       env=dict(os.environ, MESA_FAST_KEEP_HEAP="yes"))
    assert r.returncode != 0 and "ValueError: MESA_FAST_KEEP_HEAP: expected 0" in r.stderr, r.stderr[-2000:]


# ------------------------------------------------------------------------------------- input_grad=False
@pytest.mark.parametrize("ns", [F, R], ids=["fast", "ref"])
def test_dense_backward_without_input_grad(ns):
    rng = np.random.default_rng(6)
    x, W, b = rng.standard_normal((4, 9, 6)), rng.standard_normal((6, 5)), rng.standard_normal(5)
    _, c = ns.dense_forward(x, W, b)
    dy = rng.standard_normal((4, 9, 5))
    dx, dW, db = ns.dense_backward(dy, c)
    none, dW2, db2 = ns.dense_backward(dy, c, input_grad=False)
    assert none is None
    np.testing.assert_array_equal(dW2, dW)
    np.testing.assert_array_equal(db2, db)


@pytest.mark.parametrize("ns", [F, R], ids=["fast", "ref"])
@pytest.mark.parametrize("case", ["default", "layernorm", "embed"])
def test_loss_and_grads_skips_only_the_input_gradient(ns, case):
    """loss_and_grads runs backward with input_grad=False; its parameter gradients equal the full backward's."""
    from mesa_ref.config import ModelConfig
    from mesa_ref.model import Transformer
    cfg = {"default": ModelConfig(width=12, input_dim=3, output_dim=3, heads=2, key_size=4),
           "layernorm": ModelConfig(width=12, input_dim=3, output_dim=3, heads=2, key_size=4, layernorm=True),
           "embed": ModelConfig(input="embed", width=8, input_dim=3, output_dim=3, heads=2, key_size=4)}[case]
    model = Transformer(cfg, ops=ns)
    params = model.init(1, dtype=np.float64)
    for k in params:
        params[k] = params[k] + 0.3 * np.random.default_rng(2).standard_normal(params[k].shape)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, cfg.width if cfg.input == "constructed" else cfg.input_dim))
    y = rng.standard_normal((2, 5, 3))
    _, grads = model.loss_and_grads(params, x, y)
    pred, cache = model.forward(params, x)
    full, dx = model.backward(ns.mse_backward(1.0, ns.mse_forward(pred, y)[1]), cache)
    assert dx is not None
    for k in full:
        np.testing.assert_allclose(grads[k], full[k], rtol=1e-12, atol=0)
    none = model.backward(ns.mse_backward(1.0, ns.mse_forward(pred, y)[1]), cache, input_grad=False)[1]
    assert none is None


def test_map_chunks_covers_every_item_once_in_order(monkeypatch):
    """The shared-out ranges (``runtime.pool.map_chunks``): contiguous, in order, each item once, at least
    ``min_chunk // 2`` long and never growing, whatever the thread count; a pool thread's exception reaches the
    caller."""
    import numba

    from mesa_fast.runtime import pool as _pool
    for threads in sorted({1, numba.get_num_threads()}):
        numba.set_num_threads(threads)
        try:
            for n, min_chunk in [(1, 1), (7, 1), (64, 1), (12800, 1024), (2047, 1024), (3000, 1024), (5, 10)]:
                ranges = _pool.map_chunks(lambda lo, hi: (lo, hi), n, min_chunk=min_chunk)
                assert ranges[0][0] == 0 and ranges[-1][1] == n
                assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
                sizes = [hi - lo for lo, hi in ranges]
                assert min(sizes) >= 1
                if len(ranges) > 1:
                    assert min(sizes) >= min_chunk // 2
                    assert all(a >= b for a, b in zip(sizes, sizes[1:]))
                    assert ranges == [(a, b) for a, b in zip(_pool.chunk_bounds(n, threads, min_chunk),
                                                             _pool.chunk_bounds(n, threads, min_chunk)[1:])]
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)

    def fail_late(lo, hi):
        if hi == 64:
            raise RuntimeError("last range")
        return lo
    with pytest.raises(RuntimeError, match="last range"):
        _pool.map_chunks(fail_late, 64)


def test_split_products_are_repeatable():
    """dW sums the ranges' partial products in range order, so the result is bitwise the same on every call,
    whichever thread took which range."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12800, 40)).astype(np.float32)
    dy = rng.standard_normal((12800, 240)).astype(np.float32)
    W = rng.standard_normal((40, 240)).astype(np.float32)
    _, cache = F.dense_forward(x, W)
    first = F.dense_backward(dy, cache)
    for _ in range(5):
        again = F.dense_backward(dy, cache)
        for a, b in zip(first[:2], again[:2]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", ["readout-view", "odd-3d", "1d", "0d", "transposed"])
def test_mse_matches_reference(case, dtype):
    """The one-pass MSE kernel against the reference: the model's readout (a strided view of the residual
    stream), odd sizes, rank 1 and 0, a transposed target. The sum of squares is taken in float64 (tolerance:
    float32 rounding of the reference's own float32 sum)."""
    rng = np.random.default_rng(8)
    if case == "readout-view":
        pred, target = rng.standard_normal((7, 13, 40))[..., :10], rng.standard_normal((7, 13, 10))
    elif case == "odd-3d":
        pred, target = rng.standard_normal((3, 5, 7)), rng.standard_normal((3, 5, 7))
    elif case == "1d":
        pred, target = rng.standard_normal(9), rng.standard_normal(9)
    elif case == "0d":
        pred, target = np.array(1.5), np.array(-0.25)
    else:
        pred, target = rng.standard_normal((6, 4)), rng.standard_normal((4, 6)).T
    pred, target = pred.astype(dtype), target.astype(dtype)
    L_f, c_f = F.mse_forward(pred, target)
    L_r, c_r = R.mse_forward(pred, target)
    assert type(L_f) is type(L_r)
    np.testing.assert_allclose(L_f, L_r, rtol=1e-12 if dtype == np.float64 else 2e-6)
    np.testing.assert_array_equal(c_f.diff, c_r.diff)
    assert c_f.N == c_r.N
    np.testing.assert_array_equal(F.mse_backward(1.0, c_f), R.mse_backward(1.0, c_r))


def test_mse_gradient_matches_finite_differences():
    rng = np.random.default_rng(9)
    pred, target = rng.standard_normal((4, 5, 3)), rng.standard_normal((4, 5, 3))
    g = F.mse_backward(1.0, F.mse_forward(pred, target)[1])
    eps = 1e-6
    for idx in [(0, 0, 0), (3, 4, 2), (1, 2, 1)]:
        up, dn = pred.copy(), pred.copy()
        up[idx] += eps
        dn[idx] -= eps
        fd = (F.mse_forward(up, target)[0] - F.mse_forward(dn, target)[0]) / (2 * eps)
        assert abs(fd - g[idx]) <= 1e-8 * max(1.0, abs(g[idx]))


@pytest.mark.parametrize("arg", ["pred", "target"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_mse_finds_every_non_finite_input(arg, bad):
    rng = np.random.default_rng(10)
    for trial in range(4):
        pred, target = rng.standard_normal((5, 6, 40))[..., :3], rng.standard_normal((5, 6, 3))
        a = pred if arg == "pred" else target
        a[tuple(int(rng.integers(n)) for n in a.shape)] = bad
        if trial == 0:
            (target if arg == "pred" else pred)[...] = bad     # the other one non-finite too: inf - inf
        with pytest.raises(ValueError) as ref_err:
            R.mse_forward(pred, target)
        with pytest.raises(ValueError) as fast_err:
            F.mse_forward(pred, target)
        assert str(fast_err.value) == str(ref_err.value)


def test_mse_overflow_passes_as_in_reference():
    pred = np.full((2, 3), 3e38, np.float32)
    target = np.full((2, 3), -3e38, np.float32)
    with np.errstate(over="ignore"):
        L_f, _ = F.mse_forward(pred, target)
        L_r, _ = R.mse_forward(pred, target)
    assert np.isinf(L_f) and np.isinf(L_r)


_BLAS_HELPERS = r'''
from threadpoolctl import threadpool_info
def blas():
    """{library path: thread count} of every BLAS library loaded now."""
    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
'''
# SciPy's BLAS, which the thread limiter loads when it is made: loaded first, so that every "before" lists it
_SCIPY_BLAS = "import scipy.linalg.cython_blas\n"


def _run_blas2(code, preload=True):
    """Run ``code`` (after _BLAS_HELPERS) in a process where the BLAS libraries start with 2 threads."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", (_SCIPY_BLAS if preload else "") + _BLAS_HELPERS + code],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:] + r.stdout[-2000:]


def test_import_and_ops_leave_blas_threads_as_they_were():
    """threadpoolctl's view of the BLAS thread counts is the same before ``import mesa_fast``, after it, and
    after a dense op forward and backward."""
    _run_blas2(r'''
import numpy as np
before = blas()
assert before and set(before.values()) == {2}, before
import mesa_fast
after_import = blas()
rng = np.random.default_rng(0)
y, cache = mesa_fast.ops.dense_forward(rng.standard_normal((3000, 8)), rng.standard_normal((8, 5)))
mesa_fast.ops.dense_backward(np.ones_like(y), cache)
after_op = blas()
assert before == after_import == after_op, (before, after_import, after_op)
print("ok")
''')


def test_dense_products_run_blas_single_threaded_then_restore():
    """In a process where the BLAS has 2 threads, the fast dense op runs its products with 1 (the pool supplies
    the parallelism) and puts 2 back afterwards, also after nested and concurrent uses."""
    _run_blas2(r'''
import threading
import numpy as np
from mesa_fast import ops as F
from mesa_fast.ops import dense
from mesa_fast.runtime.blas import one_blas_thread
start = blas()
assert start and set(start.values()) == {2}, start
seen = []
orig = dense.map_chunks
def spy(fn, n, *a, **kw):
    seen.append(set(blas().values()))
    return orig(fn, n, *a, **kw)
dense.map_chunks = spy
rng = np.random.default_rng(0)
x, W = rng.standard_normal((3000, 8)), rng.standard_normal((8, 5))
y, cache = F.dense_forward(x, W)
F.dense_backward(rng.standard_normal(y.shape), cache)
assert seen == [{1}, {1}] and blas() == start, (seen, blas())
with one_blas_thread():
    with one_blas_thread():
        assert set(blas().values()) == {1}
    assert set(blas().values()) == {1}
assert blas() == start
dense.map_chunks = orig
ts = [threading.Thread(target=lambda: [F.dense_forward(x, W) for _ in range(20)]) for _ in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
assert blas() == start, blas()
print("ok")
''')


def test_numba_blas_products_run_single_threaded_too():
    """The fused LayerNorm + dense op multiplies inside Numba (np.dot, SciPy's BLAS: another library than NumPy's).
    With a dense op run first (so the thread limiter exists before the fused op loads that library), every BLAS
    library loaded, that one included, has 1 thread while an op runs and 2 again afterwards."""
    _run_blas2(r'''
import numpy as np
from mesa_fast import ops as F
from mesa_fast.runtime.blas import one_blas_thread
rng = np.random.default_rng(0)
y, cache = F.dense_forward(rng.standard_normal((3000, 8)), rng.standard_normal((8, 5)))
x = rng.standard_normal((3000, 40))
w, b, W = np.ones(40), np.zeros(40), rng.standard_normal((40, 24))
y, cache = F.layernorm_dense_forward(x, w, b, W)
F.layernorm_dense_backward(np.ones_like(y), cache)
libs = blas()
assert len(libs) >= 2 and set(libs.values()) == {2}, libs
with one_blas_thread():
    assert set(blas().values()) == {1}, blas()
assert blas() == libs, blas()
print("ok")
''', preload=False)


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
def test_layernorm_and_gelu_find_every_non_finite_input(bad, monkeypatch):
    """The NaN/inf checks made inside the LayerNorm and GELU passes (row sums, the GELU kernels, the bias sums of the
    LayerNorm backward), rows and elements split over the pool: the reference's message for x, w, b and dout."""
    monkeypatch.setattr(tuning, "LAYERNORM_MIN_ROWS", 2)
    monkeypatch.setattr(tuning, "GELU_MIN_CHUNK", 3)
    rng = np.random.default_rng(11)
    for trial in range(6):
        x = rng.standard_normal((3, 7, 19)).astype(np.float32)
        w, b = np.ones(19, np.float32), np.zeros(19, np.float32)
        pos = tuple(int(rng.integers(n)) for n in x.shape)
        for name in ("x", "w", "b"):
            args = [x.copy(), w.copy(), b.copy()]
            target = args[("x", "w", "b").index(name)]
            target[pos if name == "x" else pos[-1]] = bad
            for ns in (F, R):
                with pytest.raises(ValueError, match=f"^{name}: contains non-finite values"):
                    ns.layernorm_forward(*args)
        xb = x.copy()
        xb[pos] = bad
        for ns in (F, R):
            with pytest.raises(ValueError, match="^x: contains non-finite values"):
                ns.gelu_forward(xb)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        dy[pos] = bad
        for op in ("layernorm", "gelu"):
            fwd_args = (x, w, b) if op == "layernorm" else (x,)
            for ns in (F, R):
                _, c = getattr(ns, op + "_forward")(*fwd_args)
                with pytest.raises(ValueError, match="^dout: contains non-finite values"):
                    getattr(ns, op + "_backward")(dy, c)


@pytest.mark.parametrize("split", [False, True], ids=["one-range", "split"])
@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
def test_dense_gelu_finds_every_non_finite_input(bad, split, monkeypatch):
    """dense_gelu_forward finds NaN/inf in x through z = x W + b (every z of the row), in W and b up front, and in dg in
    the GELU backward; the reference composition's messages. "split": rows in ranges and blocks of 2 and 3."""
    if split:
        monkeypatch.setattr(tuning, "DENSE_MIN_ROWS", 3)
        monkeypatch.setattr(tuning, "DENSE_GELU_SUB_ROWS", 2)
    rng = np.random.default_rng(12)
    for trial in range(6):
        x = rng.standard_normal((3, 11, 5)).astype(np.float32)
        W = rng.standard_normal((5, 18)).astype(np.float32)
        bias = rng.standard_normal(18).astype(np.float32)
        n, t, j, k = (int(rng.integers(m)) for m in (3, 11, 5, 18))
        if trial % 2:
            W[:, k] = 0.0
        _each_bad_input_is_named("dense_gelu_forward", x, W, bias, (n, t, j), k, bad)
        dg = rng.standard_normal((3, 11, 18)).astype(np.float32)
        dg[n, t, k] = bad
        _bad_dout_is_named("dense_gelu", x, W, bias, dg)


def test_dense_gelu_overflow_raises_as_in_reference():
    """A finite x W + b that overflows: the reference composition's gelu_forward raises on z; so does the fused op."""
    x = np.full((2, 3, 6), 1e30, np.float32)
    W = np.full((6, 2), 1e30, np.float32)
    for ns in (F, R):
        with np.errstate(all="ignore"), pytest.raises(ValueError, match="^x: contains non-finite values"):
            ns.dense_gelu_forward(x, W)


def test_softmax_attention_full_group_with_a_tiny_map():
    """A full group of 16 sequences whose (T, T) map has fewer than 8 entries (T = 2): P moves element by element,
    not by 8 x 8 transposes; against the reference."""
    rng = np.random.default_rng(13)
    q, k, v, dout = (rng.standard_normal((4, 4, 2, 3)) for _ in range(4))
    out, c = F.softmax_attention_forward(q, k, v)
    tout, tc = R.softmax_attention_forward(q, k, v)
    np.testing.assert_allclose(out, tout, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c.P, tc.P, rtol=1e-12, atol=1e-14)
    for g, t in zip(F.softmax_attention_backward(dout, c), R.softmax_attention_backward(dout, tc)):
        np.testing.assert_allclose(g, t, rtol=1e-11, atol=1e-13)


def test_batch_shards_run_blas_single_threaded_then_restore():
    """In a process where the BLAS has 2 threads, a training step split into shards (``batch_map``) runs with the
    BLAS at 1 thread inside every shard, and 2 come back afterwards."""
    _run_blas2(r'''
import numba
import numpy as np
from mesa_fast import ops as F
if numba.get_num_threads() < 2:
    print("ok"); raise SystemExit
start = blas()
seen = F.batch_map(lambda lo, hi: set(blas().values()), np.zeros((100, 16, 3)))   # 2 shards of 800 positions
assert [s for _, _, s in seen] == [{1}, {1}] and blas() == start, (seen, blas(), start)
print("ok")
''')
