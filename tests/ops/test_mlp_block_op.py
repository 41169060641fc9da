"""The pre-LayerNorm MLP sub-block with its residual as one op, y = x + mlp(layernorm(x)) [L4] + [L1] + [L5]: the
reference (the composition of layernorm, mlp and the addition) by finite differences and against its parts, the
fused fast op (mesa_fast/kernels/simd/mlp_block.py: ln_mlp_fwd_rows / ln_mlp_bwd_rows) bit for bit against the fast
composition and against the reference in float64 and float32, and its NaN/inf and argument errors against the
reference's."""
import numpy as np
import pytest

from mesa_fast import ops as F
from mesa_fast.ops import mlp_block as fast_mlp_block
from mesa_fast.runtime import tuning
from mesa_ref import ops as R
from mesa_ref.gradcheck import numerical_gradient, rel_error
from op_agreement import check_fast_against_reference, raises_same

BAD = [np.nan, np.inf, -np.inf]
NAMES = ("dx", "dw", "db", "dW1", "db1", "dW2", "db2")


def _inputs(rng, shape, M, dtype, bias=True):
    D = shape[-1]
    x = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.3 * rng.standard_normal(D)).astype(dtype)
    b = (0.3 * rng.standard_normal(D)).astype(dtype)
    W1 = (rng.standard_normal((D, M)) / np.sqrt(D)).astype(dtype)
    W2 = (rng.standard_normal((M, D)) / np.sqrt(M)).astype(dtype)
    b1 = rng.standard_normal(M).astype(dtype) if bias else None
    b2 = rng.standard_normal(D).astype(dtype) if bias else None
    return x, w, b, W1, b1, W2, b2


def _composed(ns, inputs, dy):
    """The three ops one after the other in namespace ns: (y, grads)."""
    x, w, b, W1, b1, W2, b2 = inputs
    m, c1 = ns.layernorm_forward(x, w, b)
    delta, c2 = ns.mlp_forward(m, W1, b1, W2, b2)
    dm, dW1, db1, dW2, db2 = ns.mlp_backward(dy, c2)
    dxl, dw, db = ns.layernorm_backward(dm, c1)
    return x + delta, (dy + dxl, dw, db, dW1, db1, dW2, db2)


def test_reference_is_the_composition():
    rng = np.random.default_rng(0)
    inputs = _inputs(rng, (2, 5, 6), 10, np.float64)
    dy = rng.standard_normal((2, 5, 6))
    y, cache = R.mlp_block_forward(*inputs)
    y2, grads2 = _composed(R, inputs, dy)
    np.testing.assert_array_equal(y, y2)
    for a, b in zip(R.mlp_block_backward(dy, cache), grads2):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ns", [R, F], ids=["ref", "fast"])
@pytest.mark.parametrize("shape, M", [((2, 3, 8), 16), ((2, 3, 4), 5)], ids=["fused", "composed"])
def test_gradients_by_finite_differences(ns, shape, M):
    """Every input's gradient against float64 central differences; for the fast op both the fused kernels
    (widths multiples of 8) and the composition (other widths)."""
    rng = np.random.default_rng(2)
    inputs = list(_inputs(rng, shape, M, np.float64))
    y, cache = ns.mlp_block_forward(*inputs)
    if ns is F:
        assert isinstance(cache, fast_mlp_block.MLPBlockFastCache) == (shape[-1] % 8 == 0)
    dy = rng.standard_normal(y.shape)
    grads = ns.mlp_block_backward(dy, cache)
    for name, arr, grad in zip(NAMES, inputs, grads):
        num = numerical_gradient(lambda: ns.mlp_block_forward(*inputs)[0], arr, dy)
        assert rel_error(grad, num) < 1e-7, name


CASES = {"model": ((8, 50, 40), 160, True), "lm": ((2, 70, 64), 256, True), "odd-rows": ((3, 7, 16), 24, True),
         "blocks+tail": ((3, 100, 8), 16, True), "nobias": ((5, 9, 8), 32, False), "one-row": ((1, 1, 8), 8, True),
         "composed": ((3, 7, 5), 19, True)}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_is_the_fast_composition_bit_for_bit(case, dtype):
    """On one range of rows the fused op computes what this namespace's layernorm, mlp and addition compute, bit for
    bit: the LayerNorm sees the rows in the same groups, the products and sums run in the same order (the model's
    numbers do not move when it switches to the fused op). Rows: fewer than one 128-row block, several blocks
    with a tail, not a multiple of 16."""
    shape, M, bias = CASES[case]
    rng = np.random.default_rng(3)
    inputs = _inputs(rng, shape, M, dtype, bias)
    dy = rng.standard_normal(shape).astype(dtype)
    y, cache = F.mlp_block_forward(*inputs)
    assert isinstance(cache, fast_mlp_block.MLPBlockFastCache) == (case != "composed")
    grads = F.mlp_block_backward(dy, cache)
    y2, grads2 = _composed(F, inputs, dy)
    np.testing.assert_array_equal(y, y2)
    for name, a, b in zip(NAMES, grads, grads2):
        if b is None:
            assert a is None, name
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("split", [False, True], ids=["one-range", "split"])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_matches_reference(case, split, dtype, monkeypatch):
    """The fast op against the float64 reference; "split": rows in ranges of at least 3 on the thread pool (ranges
    that do not start at a multiple of 16). float64 to 1e-12, float32 to 1e-5 (relative to the largest entry)."""
    if split:
        monkeypatch.setattr(tuning, "DENSE_MIN_ROWS", 3)
    shape, M, bias = CASES[case]
    rng = np.random.default_rng(4)
    inputs = _inputs(rng, shape, M, dtype, bias)
    check_fast_against_reference(F.mlp_block_forward, F.mlp_block_backward, R.mlp_block_forward, R.mlp_block_backward,
                                 inputs, rng, NAMES)


def test_fast_backward_is_repeatable_with_split_rows(monkeypatch):
    """The ranges' partial sums are added in range order: bit for bit the same on every call."""
    monkeypatch.setattr(tuning, "DENSE_MIN_ROWS", 64)
    inputs = _inputs(np.random.default_rng(5), (6, 50, 40), 160, np.float32)
    y, cache = F.mlp_block_forward(*inputs)
    dy = np.random.default_rng(6).standard_normal(y.shape).astype(np.float32)
    first = F.mlp_block_backward(dy, cache)
    for _ in range(3):
        for a, b in zip(first, F.mlp_block_backward(dy, cache)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("arg", range(7), ids=["x", "w", "b", "W1", "b1", "W2", "b2"])
def test_non_finite_input_raises_the_reference_error(arg, bad):
    rng = np.random.default_rng(7)
    for trial in range(3):
        inputs = list(_inputs(rng, (3, 11, 8), 24, np.float32))
        pos = tuple(int(rng.integers(n)) for n in inputs[arg].shape)
        inputs[arg] = inputs[arg].copy()
        inputs[arg][pos] = bad
        msg = raises_same(lambda: F.mlp_block_forward(*inputs), lambda: R.mlp_block_forward(*inputs))
        assert "non-finite" in msg, msg


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
def test_non_finite_dout_raises_the_reference_error(bad):
    rng = np.random.default_rng(8)
    inputs = _inputs(rng, (3, 11, 8), 24, np.float32)
    for trial in range(3):
        dy = rng.standard_normal((3, 11, 8)).astype(np.float32)
        dy[tuple(int(rng.integers(n)) for n in dy.shape)] = bad
        for ns in (F, R):
            _, c = ns.mlp_block_forward(*inputs)
            with np.errstate(all="ignore"), pytest.raises(ValueError, match="^dout: contains non-finite values"):
                ns.mlp_block_backward(dy, c)


def test_overflow_in_the_layernorm_gradient_raises_the_reference_error():
    """A finite dy whose gradient through the MLP is finite but overflows in dm = dz W1^T: the reference's MLP
    backward passes and its LayerNorm backward raises on dm; so does the fused op (it checks dm's column sums)."""
    rng = np.random.default_rng(9)
    x, w, b, W1, b1, W2, b2 = _inputs(rng, (2, 5, 8), 16, np.float32)
    W1 = (W1 * np.float32(1e9)).astype(np.float32)
    W2 = np.full_like(W2, 1e30)
    inputs = (x, w, b, W1, b1, W2, b2)
    dy = np.ones((2, 5, 8), np.float32)
    with np.errstate(all="ignore"):
        _, rc = R.mlp_block_forward(*inputs)
        _, fc = F.mlp_block_forward(*inputs)
        assert isinstance(fc, fast_mlp_block.MLPBlockFastCache)
        dm = R.mlp_backward(dy, rc.mlp)[0]               # the MLP's own backward is fine ...
        assert not np.isfinite(dm).all()                 # ... and hands the LayerNorm an inf
        msg = raises_same(lambda: F.mlp_block_backward(dy, fc), lambda: R.mlp_block_backward(dy, rc))
    assert msg.startswith("dout: contains non-finite values"), msg


def test_bad_arguments_raise_the_reference_error():
    rng = np.random.default_rng(10)
    x, w, b, W1, b1, W2, b2 = _inputs(rng, (3, 11, 8), 24, np.float64)
    cases = [
        (x, w[:4], b, W1, b1, W2, b2),                       # LayerNorm weight of the wrong width
        (x, w, b.astype(np.float32), W1, b1, W2, b2),        # dtypes differ
        (x, w, b, W1[:4], b1, W2, b2),                       # W1 does not take the width
        (x, w, b, W1, b1, W2[:, :4], b2[:4]),               # the MLP does not map back to the width
    ]
    for args in cases:
        raises_same(lambda: F.mlp_block_forward(*args), lambda: R.mlp_block_forward(*args))
    for eps in (0.0, -1.0):
        raises_same(lambda: F.mlp_block_forward(x, w, b, W1, b1, W2, b2, eps=eps),
                    lambda: R.mlp_block_forward(x, w, b, W1, b1, W2, b2, eps=eps))
    _, fc = F.mlp_block_forward(x, w, b, W1, b1, W2, b2)
    _, rc = R.mlp_block_forward(x, w, b, W1, b1, W2, b2)
    for bad in (np.ones((3, 11, 24)), np.ones((3, 11, 8), np.float32), np.ones((3, 8))):
        raises_same(lambda: F.mlp_block_backward(bad, fc), lambda: R.mlp_block_backward(bad, rc))
