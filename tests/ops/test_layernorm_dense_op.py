"""A LayerNorm and the dense layer it feeds as one op, y = layernorm(x) W + c [L4] + [L1]: the reference (the
composition of layernorm and dense) by finite differences and against its parts, the fused fast op
(mesa_fast/kernels/simd/layernorm_dense.py) against the fast composition and against the reference in float64 and
float32, and its NaN/inf and argument errors against the reference's."""
import numpy as np
import pytest

from mesa_fast import ops as F
from mesa_fast.ops import layernorm_dense as fast_layernorm_dense
from mesa_fast.runtime import tuning
from mesa_ref import ops as R
from mesa_ref.gradcheck import numerical_gradient, rel_error
from op_agreement import assert_within_ulps, check_fast_against_reference, raises_same, rel, ulps_apart

BAD = [np.nan, np.inf, -np.inf]
NAMES = ("dx", "dw", "db", "dW", "dc")


def _inputs(rng, shape, O, dtype, bias=True):
    D = shape[-1]
    x = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.3 * rng.standard_normal(D)).astype(dtype)
    b = (0.3 * rng.standard_normal(D)).astype(dtype)
    W = (rng.standard_normal((D, O)) / np.sqrt(D)).astype(dtype)
    c = rng.standard_normal(O).astype(dtype) if bias else None
    return x, w, b, W, c


def _composed(ns, inputs, dy):
    """The two ops one after the other in namespace ns: (y, grads)."""
    x, w, b, W, c = inputs
    a, c1 = ns.layernorm_forward(x, w, b)
    y, c2 = ns.dense_forward(a, W, c)
    da, dW, dc = ns.dense_backward(dy, c2)
    dx, dw, db = ns.layernorm_backward(da, c1)
    return y, (dx, dw, db, dW, dc)


def test_reference_is_the_composition():
    rng = np.random.default_rng(0)
    inputs = _inputs(rng, (2, 5, 6), 7, np.float64)
    dy = rng.standard_normal((2, 5, 7))
    y, cache = R.layernorm_dense_forward(*inputs)
    y2, grads2 = _composed(R, inputs, dy)
    np.testing.assert_array_equal(y, y2)
    for a, b in zip(R.layernorm_dense_backward(dy, cache), grads2):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ns", [R, F], ids=["ref", "fast"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradients_by_finite_differences(ns, bias):
    """Every input's gradient against float64 central differences."""
    rng = np.random.default_rng(2)
    inputs = list(_inputs(rng, (2, 3, 5), 4, np.float64, bias))
    y, cache = ns.layernorm_dense_forward(*inputs)
    if ns is F:
        assert isinstance(cache, fast_layernorm_dense.LayerNormDenseFastCache)
    dy = rng.standard_normal(y.shape)
    grads = ns.layernorm_dense_backward(dy, cache)
    for name, arr, grad in zip(NAMES, inputs, grads):
        if arr is None:
            assert grad is None, name
            continue
        num = numerical_gradient(lambda: ns.layernorm_dense_forward(*inputs)[0], arr, dy)
        assert rel_error(grad, num) < 1e-7, name


CASES = {"qkv": ((8, 50, 40), 240, False), "readout": ((8, 50, 40), 10, True), "lm": ((2, 70, 64), 192, False),
         "odd": ((3, 7, 5), 3, True), "blocks+tail": ((3, 200, 8), 24, True),
         "blocks+tail-own-dW": ((3, 200, 8), 64, True), "one-row": ((1, 1, 8), 8, True)}


def _own_dw(O):
    """The outputs for which the fused backward makes dW itself from recomputed rows (a multiple of 16, at least
    64), so the forward keeps no normalised input: both kinds are among the cases."""
    return O % 16 == 0 and O >= 64


# Allowed distance from the fast composition, in ulps of each array's largest entry. Both sides sum the same
# products, but the fused op's run through the BLAS that Numba's np.dot calls (SciPy's bundled OpenBLAS) and the
# composition's through NumPy's (another build, which may pick other kernels for the CPU it finds), and dW of the
# QKV product is summed block by block by our own kernel: the orders differ, so the roundings may too. Observed on
# this project's machines: up to 1 ulp for y, dx and dW of the products of width <= 64, up to 6 for dW over all
# rows. A wrong block, row or LayerNorm statistic is off by O(1) of the output, millions of ulps.
ULPS = 16


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", ["qkv", "readout", "lm"])
def test_fast_is_the_fast_composition_to_rounding(case, dtype):
    """On one range of rows the fused op computes what this namespace's layernorm and dense compute, to the rounding
    of another summation order (``ULPS``), at the model's shapes (the query/key/value product and the readout at
    width 40, the language model's product at width 64): the LayerNorm sees the rows in the same groups and the
    products sum the same terms. Not bit for bit: two BLAS builds are involved (see ``ULPS``).
    test_fast_matches_reference covers other shapes against the float64 reference."""
    shape, O, bias = CASES[case]
    rng = np.random.default_rng(3)
    inputs = _inputs(rng, shape, O, dtype, bias)
    dy = rng.standard_normal(shape[:-1] + (O,)).astype(dtype)
    y, cache = F.layernorm_dense_forward(*inputs)
    assert isinstance(cache, fast_layernorm_dense.LayerNormDenseFastCache)
    assert (cache.a2 is None) == _own_dw(O)
    grads = F.layernorm_dense_backward(dy, cache)
    y2, grads2 = _composed(F, inputs, dy)
    assert_within_ulps(y, y2, ULPS, "y")
    for name, a, b in zip(NAMES, grads, grads2):
        if b is None:
            assert a is None, name
        else:
            assert_within_ulps(a, b, ULPS, name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("split", [False, True], ids=["one-range", "split"])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_matches_reference(case, split, dtype, monkeypatch):
    """The fast op against the float64 reference; "split": rows in ranges of at least 3 on the thread pool (ranges
    that do not start at a multiple of 16). float64 to 1e-12, float32 to 1e-5 (relative to the largest entry)."""
    if split:
        monkeypatch.setattr(tuning, "DENSE_MIN_ROWS", 3)
    shape, O, bias = CASES[case]
    rng = np.random.default_rng(4)
    inputs = _inputs(rng, shape, O, dtype, bias)
    cache = check_fast_against_reference(F.layernorm_dense_forward, F.layernorm_dense_backward,
                                         R.layernorm_dense_forward, R.layernorm_dense_backward, inputs, rng, NAMES)
    assert isinstance(cache, fast_layernorm_dense.LayerNormDenseFastCache)


def test_fast_backward_is_repeatable_with_split_rows(monkeypatch):
    """The ranges' partial sums are added in range order: bit for bit the same on every call."""
    monkeypatch.setattr(tuning, "DENSE_MIN_ROWS", 64)
    inputs = _inputs(np.random.default_rng(5), (6, 50, 40), 240, np.float32, False)
    y, cache = F.layernorm_dense_forward(*inputs)
    dy = np.random.default_rng(6).standard_normal(y.shape).astype(np.float32)
    first = F.layernorm_dense_backward(dy, cache)
    for _ in range(3):
        for a, b in zip(first, F.layernorm_dense_backward(dy, cache)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("arg", range(5), ids=["x", "w", "b", "W", "c"])
def test_non_finite_input_raises_the_reference_error(arg, bad):
    rng = np.random.default_rng(7)
    for trial in range(3):
        inputs = list(_inputs(rng, (3, 11, 8), 24, np.float32))
        pos = tuple(int(rng.integers(n)) for n in inputs[arg].shape)
        inputs[arg] = inputs[arg].copy()
        inputs[arg][pos] = bad
        msg = raises_same(lambda: F.layernorm_dense_forward(*inputs), lambda: R.layernorm_dense_forward(*inputs))
        assert "non-finite" in msg, msg


@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("O", [24, 40], ids=["blas", "narrow"])
def test_non_finite_dout_raises_the_reference_error(bad, O):
    rng = np.random.default_rng(8)
    inputs = _inputs(rng, (3, 11, 40), O, np.float32)
    for trial in range(3):
        dy = rng.standard_normal((3, 11, O)).astype(np.float32)
        dy[tuple(int(rng.integers(n)) for n in dy.shape)] = bad
        for ns in (F, R):
            _, c = ns.layernorm_dense_forward(*inputs)
            with np.errstate(all="ignore"), pytest.raises(ValueError, match="^dout: contains non-finite values"):
                ns.layernorm_dense_backward(dy, c)


def test_overflow_in_the_layernorm_gradient_raises_the_reference_error():
    """A finite dy whose da = dy W^T overflows: the reference's dense backward passes and its LayerNorm backward
    raises on da; so does the fused op (it checks da's column sums)."""
    rng = np.random.default_rng(9)
    x, w, b, W, c = _inputs(rng, (2, 5, 8), 16, np.float32)
    W = np.full_like(W, 1e30)
    inputs = (x, w, b, W, c)
    dy = np.full((2, 5, 16), 1e10, np.float32)
    with np.errstate(all="ignore"):
        _, rc = R.layernorm_dense_forward(*inputs)
        _, fc = F.layernorm_dense_forward(*inputs)
        assert isinstance(fc, fast_layernorm_dense.LayerNormDenseFastCache)
        da = R.dense_backward(dy, rc.dense)[0]           # the dense backward is fine ...
        assert not np.isfinite(da).all()                 # ... and hands the LayerNorm an inf
        msg = raises_same(lambda: F.layernorm_dense_backward(dy, fc), lambda: R.layernorm_dense_backward(dy, rc))
    assert msg.startswith("dout: contains non-finite values"), msg


def test_bad_arguments_raise_the_reference_error():
    rng = np.random.default_rng(10)
    x, w, b, W, c = _inputs(rng, (3, 11, 8), 24, np.float64)
    cases = [
        (x, w[:4], b, W, c),                       # LayerNorm weight of the wrong width
        (x, w, b.astype(np.float32), W, c),        # dtypes differ
        (x, w, b, W[:4], c),                       # W does not take the width
        (x, w, b, W, c[:5]),                       # the bias does not fit W
    ]
    for args in cases:
        raises_same(lambda: F.layernorm_dense_forward(*args), lambda: R.layernorm_dense_forward(*args))
    for eps in (0.0, -1.0):
        raises_same(lambda: F.layernorm_dense_forward(x, w, b, W, c, eps=eps),
                    lambda: R.layernorm_dense_forward(x, w, b, W, c, eps=eps))
    _, fc = F.layernorm_dense_forward(x, w, b, W, c)
    _, rc = R.layernorm_dense_forward(x, w, b, W, c)
    for bad in (np.ones((3, 11, 8)), np.ones((3, 11, 24), np.float32), np.ones((3, 24))):
        raises_same(lambda: F.layernorm_dense_backward(bad, fc), lambda: R.layernorm_dense_backward(bad, rc))
