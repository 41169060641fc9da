"""The fast ops' NaN/inf checks, made while they compute (output-side): every non-finite input or dout is
named as the reference names it, and an overflow passes (or raises) as it does in the reference."""
import numpy as np
import pytest

from mesa_fast import ops as F
from mesa_fast.runtime import tuning
from mesa_ref import ops as R
from mesa_ref.ops._common import all_finite

pytestmark = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:overflow:RuntimeWarning")

B, T, H, d = 3, 7, 3, 5
BAD = [np.nan, np.inf, -np.inf]


def _qkv(rng, dtype=np.float64):
    return rng.standard_normal((B, T, 3 * H * d)).astype(dtype)


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
