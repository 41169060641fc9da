"""The MLP sub-block as one op, y = gelu(x W1 + b1) W2 + b2 [L1] + [L5]: the reference (the composition of dense_gelu
and dense) by finite differences, the fused fast op (mesa_fast/ops/mlp.py, kernels/simd/mlp.py) against the
reference in float64 and float32, and its NaN/inf errors and overflow against the reference's."""
import numpy as np
import pytest

from mesa_fast import ops as F
from mesa_fast.ops import mlp as fast_mlp
from mesa_fast.runtime import tuning
from mesa_ref import ops as R
from mesa_ref.gradcheck import numerical_gradient, rel_error
from op_agreement import check_fast_against_reference

BAD = [np.nan, np.inf, -np.inf]
NAMES = ("dx", "dW1", "db1", "dW2", "db2")


def _inputs(rng, shape, M, E, dtype, bias=True):
    D = shape[-1]
    x = rng.standard_normal(shape).astype(dtype)
    W1 = (rng.standard_normal((D, M)) / np.sqrt(D)).astype(dtype)
    W2 = (rng.standard_normal((M, E)) / np.sqrt(M)).astype(dtype)
    b1 = rng.standard_normal(M).astype(dtype) if bias else None
    b2 = rng.standard_normal(E).astype(dtype) if bias else None
    return x, W1, b1, W2, b2


def test_reference_is_the_composition_of_dense_gelu_and_dense():
    x, W1, b1, W2, b2 = _inputs(np.random.default_rng(0), (2, 5, 6), 10, 3, np.float64)
    y, cache = R.mlp_forward(x, W1, b1, W2, b2)
    g, c1 = R.dense_gelu_forward(x, W1, b1)
    y2, c2 = R.dense_forward(g, W2, b2)
    np.testing.assert_array_equal(y, y2)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    dg, dW2, db2 = R.dense_backward(dy, c2)
    dx, dW1, db1 = R.dense_gelu_backward(dg, c1)
    for a, b in zip(R.mlp_backward(dy, cache), (dx, dW1, db1, dW2, db2)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ns", [R, F], ids=["ref", "fast"])
@pytest.mark.parametrize("shape, M, E", [((2, 3, 8), 16, 8), ((2, 3, 4), 5, 3)], ids=["fused", "composed"])
def test_gradients_by_finite_differences(ns, shape, M, E):
    """Every input's gradient against float64 central differences; for the fast op both the fused kernels
    (widths multiples of 8) and the composition (other widths)."""
    rng = np.random.default_rng(2)
    inputs = list(_inputs(rng, shape, M, E, np.float64))
    y, cache = ns.mlp_forward(*inputs)
    if ns is F:
        fused = isinstance(cache, fast_mlp.MLPFastCache)
        assert fused == (shape[-1] % 8 == 0)
    dy = rng.standard_normal(y.shape)
    grads = ns.mlp_backward(dy, cache)
    for name, arr, grad in zip(NAMES, inputs, grads):
        num = numerical_gradient(lambda: ns.mlp_forward(*inputs)[0], arr, dy)
        assert rel_error(grad, num) < 1e-7, name


CASES = {"model": ((8, 50, 40), 160, 40, True), "lm": ((2, 70, 64), 256, 64, True), "odd-rows": ((3, 7, 16), 24, 8, True),
         "nobias": ((5, 9, 8), 32, 16, False), "one-row": ((1, 1, 8), 8, 8, True), "composed": ((3, 7, 5), 19, 7, True)}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("split", [False, True], ids=["one-range", "split"])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_matches_reference(case, split, dtype, monkeypatch):
    """The fused op against the float64 reference: the model's and the language model's MLP shapes, rows not a
    multiple of 4 or of the 128-row block, no biases, one row, and widths that are not multiples of 8 (the
    composition); "split": rows in ranges of at least 3 on the thread pool. float64 to 1e-12, float32 to 1e-5
    (relative to the largest entry)."""
    if split:
        monkeypatch.setattr(tuning, "DENSE_MIN_ROWS", 3)
    shape, M, E, bias = CASES[case]
    rng = np.random.default_rng(3)
    inputs = _inputs(rng, shape, M, E, dtype, bias)
    cache = check_fast_against_reference(F.mlp_forward, F.mlp_backward, R.mlp_forward, R.mlp_backward, inputs, rng,
                                         NAMES)
    assert isinstance(cache, fast_mlp.MLPFastCache) == (case != "composed")


def test_fast_backward_is_repeatable_with_split_rows(monkeypatch):
    """dW1, dW2 sum the ranges' partial products in range order: bit for bit the same on every call."""
    monkeypatch.setattr(tuning, "DENSE_MIN_ROWS", 64)
    inputs = _inputs(np.random.default_rng(4), (6, 50, 40), 160, 40, np.float32)
    y, cache = F.mlp_forward(*inputs)
    dy = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    first = F.mlp_backward(dy, cache)
    for _ in range(3):
        for a, b in zip(first, F.mlp_backward(dy, cache)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("arg", range(5), ids=["x", "W1", "b1", "W2", "b2"])
def test_non_finite_input_raises_the_reference_error(arg, bad):
    rng = np.random.default_rng(6)
    for trial in range(3):
        inputs = list(_inputs(rng, (3, 11, 8), 24, 16, np.float32))
        pos = tuple(int(rng.integers(n)) for n in inputs[arg].shape)
        inputs[arg] = inputs[arg].copy()
        inputs[arg][pos] = bad
        messages = []
        for ns in (F, R):
            with np.errstate(all="ignore"), pytest.raises(ValueError) as e:
                ns.mlp_forward(*inputs)
            messages.append(str(e.value))
        assert messages[0] == messages[1] and "non-finite" in messages[0], messages


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
def test_non_finite_dout_raises_the_reference_error(bad):
    rng = np.random.default_rng(7)
    inputs = _inputs(rng, (3, 11, 8), 24, 16, np.float32)
    for trial in range(3):
        dy = rng.standard_normal((3, 11, 16)).astype(np.float32)
        dy[tuple(int(rng.integers(n)) for n in dy.shape)] = bad
        for ns in (F, R):
            _, c = ns.mlp_forward(*inputs)
            with np.errstate(all="ignore"), pytest.raises(ValueError, match="^dout: contains non-finite values"):
                ns.mlp_backward(dy, c)


def test_bad_dout_shape_and_dtype_raise_the_reference_error():
    inputs = _inputs(np.random.default_rng(8), (3, 11, 8), 24, 16, np.float64)
    _, fc = F.mlp_forward(*inputs)
    _, rc = R.mlp_forward(*inputs)
    for bad in (np.ones((3, 11, 8)), np.ones((3, 11, 16), np.float32), np.ones((3, 16))):
        messages = []
        for ns, c in ((F, fc), (R, rc)):
            with pytest.raises(ValueError) as e:
                ns.mlp_backward(bad, c)
            messages.append(str(e.value))
        assert messages[0] == messages[1], messages


def test_overflow_as_in_reference():
    """A finite x W1 + b1 that overflows: the reference's gelu raises on z, and so does the fused op. A finite g whose
    product with W2 overflows comes back as inf in both."""
    x = np.full((2, 3, 8), 1e30, np.float32)
    W1 = np.full((8, 8), 1e30, np.float32)
    for ns in (F, R):
        with np.errstate(all="ignore"), pytest.raises(ValueError, match="^x: contains non-finite values"):
            ns.mlp_forward(x, W1, None, W1, None)
    x = np.ones((2, 3, 8), np.float32)
    W1 = np.ones((8, 8), np.float32)
    W2 = np.full((8, 8), 3e37, np.float32)
    with np.errstate(all="ignore"):
        yf, _ = F.mlp_forward(x, W1, None, W2, None)
        yr, _ = R.mlp_forward(x, W1, None, W2, None)
    assert np.isinf(yr).all() and np.array_equal(yf, yr)
