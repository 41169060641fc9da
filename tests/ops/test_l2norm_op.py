"""l2_normalize (the per-head normalisation of ``ModelConfig.unit_norm``): unit norms, the backward against
float64 central finite differences, float32 against float64, the zero vector, bad input; and the fast op
(``mesa_fast/ops/l2norm.py``) against the reference, float64 and float32, odd sizes, strided views, the same errors."""
import numpy as np
import pytest

from mesa_fast import ops as F
from mesa_ref import ops
from mesa_ref.gradcheck import numerical_gradient, rel_error
from op_agreement import check_fast_against_reference, raises_same


@pytest.mark.parametrize("shape", [(3, 2, 7, 5), (4, 1), (9,), (2, 3, 1)], ids=lambda s: "x" + "-".join(map(str, s)))
def test_forward_has_unit_norms_and_the_direction_of_x(rng, shape):
    x = rng.standard_normal(shape)
    y, cache = ops.l2_normalize_forward(x)
    assert y.shape == x.shape and y.dtype == np.float64 and isinstance(cache, ops.L2NormCache)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(y * np.linalg.norm(x, axis=-1, keepdims=True), x, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(3, 2, 7, 5), (5, 3), (2, 1, 4, 2)], ids=lambda s: "x" + "-".join(map(str, s)))
@pytest.mark.parametrize("scale", [1.0, 1e-3, 40.0])
def test_backward_matches_finite_differences(rng, shape, scale):
    x = scale * rng.standard_normal(shape)
    y, cache = ops.l2_normalize_forward(x)
    dy = rng.standard_normal(y.shape)
    dx = ops.l2_normalize_backward(dy, cache)
    num = numerical_gradient(lambda: ops.l2_normalize_forward(x)[0], x, dy, h=1e-6 * scale)
    assert rel_error(dx, num) < 1e-6
    # dx is orthogonal to x (the output does not change along x), up to the eps term
    np.testing.assert_allclose((dx * x).sum(-1), 0, atol=1e-12 * np.abs(dy).max())


def test_size_one_axis_is_the_sign(rng):
    """d = 1: y = sign(x) (up to eps), a locally constant function, so the gradient is (all but) zero."""
    x = rng.standard_normal((4, 3, 1))
    dy = rng.standard_normal(x.shape)
    y, cache = ops.l2_normalize_forward(x)
    np.testing.assert_allclose(y, np.sign(x), rtol=1e-14)
    dx = ops.l2_normalize_backward(dy, cache)
    # exactly dy eps / (n (eps + n)); rounding leaves O(1e-16 |dy| / n)
    assert np.all(np.abs(dx) <= 1e-14 * np.abs(dy) * (1 / np.abs(x) + 1 / x ** 2))


def test_float32_agrees_with_float64(rng):
    x = rng.standard_normal((3, 2, 7, 5))
    dy = rng.standard_normal(x.shape)
    y64, c64 = ops.l2_normalize_forward(x)
    y32, c32 = ops.l2_normalize_forward(x.astype(np.float32))
    dx64 = ops.l2_normalize_backward(dy, c64)
    dx32 = ops.l2_normalize_backward(dy.astype(np.float32), c32)
    assert y32.dtype == dx32.dtype == np.float32
    assert rel_error(y32, y64) < 1e-6 and rel_error(dx32, dx64) < 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_vector_gives_finite_output_and_gradient(rng, dtype):
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    x[0, 1] = 0
    x[1, 2] = 0
    dy = rng.standard_normal(x.shape).astype(dtype)
    with np.errstate(all="raise"):
        y, cache = ops.l2_normalize_forward(x)
        dx = ops.l2_normalize_backward(dy, cache)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    assert (y[0, 1] == 0).all() and (y[1, 2] == 0).all()
    # at x = 0 the gradient is the exact derivative there, dy / eps
    np.testing.assert_allclose(dx[0, 1], dy[0, 1] / 1e-16, rtol=1e-6)
    # the other rows are those of the same op on them alone
    np.testing.assert_allclose(dx[0, 0], ops.l2_normalize_backward(dy[0, 0], ops.l2_normalize_forward(x[0, 0])[1]),
                               rtol=1e-6)


def test_zero_vector_gradient_is_the_derivative_there():
    """With an eps large enough for finite differences to resolve, the gradient at x = 0 (dy / eps) is checked."""
    x = np.zeros((2, 3))
    x[1] = [0.3, -0.2, 0.5]
    dy = np.array([[1.0, -2.0, 0.5], [0.7, 0.1, -1.0]])
    f = lambda: ops.l2_normalize_forward(x, eps=0.5)[0]   # noqa: E731
    _, cache = ops.l2_normalize_forward(x, eps=0.5)
    dx = ops.l2_normalize_backward(dy, cache)
    np.testing.assert_allclose(dx[0], dy[0] / 0.5)
    assert rel_error(dx, numerical_gradient(f, x, dy)) < 1e-5


def test_bad_input_raises(rng):
    x = rng.standard_normal((2, 3))
    for bad, match in [(x.astype(np.int64), "dtype"), (np.float64(1.0), "x"), (np.array(1.0), "rank"),
                       ([1.0, 2.0], "x"), (np.array([[1.0, np.nan]]), "non-finite")]:
        with pytest.raises(ValueError, match=match):
            ops.l2_normalize_forward(bad)
    for eps in (0.0, -1e-16, float("nan"), float("inf"), True, None):
        with pytest.raises(ValueError, match="eps"):
            ops.l2_normalize_forward(x, eps=eps)
    _, cache = ops.l2_normalize_forward(x)
    for bad in (x[:, :2], x.astype(np.float32), np.full_like(x, np.inf)):
        with pytest.raises(ValueError, match="dout"):
            ops.l2_normalize_backward(bad, cache)


# ---------------------------------------------------------------------------------- the fast op (mesa_fast)
def _heads_view(rng, dtype, B=3, H=2, T=7, d=5):
    """q, k, v as the model hands them over: strided views of one fused (B, T, 3 H d) buffer."""
    qkv = rng.standard_normal((B, T, 3 * H * d)).astype(dtype)
    return F.split_qkv(qkv, H)


def test_fast_namespace_has_its_own_op_and_the_reference_cache():
    assert F.l2_normalize_forward.__module__ == F.l2_normalize_backward.__module__ == "mesa_fast.ops.l2norm"
    assert F.L2NormCache is ops.L2NormCache


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3, 2, 7, 5), (5, 3), (9,), (2, 3, 2), (2, 1, 3, 2, 7), (1, 4, 11, 20)],
                         ids=lambda s: "x" + "-".join(map(str, s)))
def test_fast_matches_the_reference(rng, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    cache = check_fast_against_reference(F.l2_normalize_forward, F.l2_normalize_backward,
                                         ops.l2_normalize_forward, ops.l2_normalize_backward, [x], rng, ["dx"])
    assert isinstance(cache, ops.L2NormCache) and cache.norm.shape == shape[:-1] + (1,)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_size_one_axis_is_the_sign(rng, dtype):
    """d = 1 (as the reference's test above): y = sign(x) and a gradient that is zero up to rounding, which no
    relative comparison can resolve, so it is bounded instead."""
    x = rng.standard_normal((4, 3, 1)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, cache = F.l2_normalize_forward(x)
    ax = np.abs(x.astype(np.float64))
    np.testing.assert_allclose(y, np.sign(x) * ax / (1e-16 + ax), rtol=4 * np.finfo(dtype).eps)
    dx = F.l2_normalize_backward(dy, cache)
    assert dx.dtype == dtype and np.all(np.abs(dx) <= 64 * np.finfo(dtype).eps * np.abs(dy) * (1 / ax + 1 / ax ** 2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_reads_strided_head_views_and_zero_rows(rng, dtype):
    for x in _heads_view(rng, dtype):
        assert not x.flags.c_contiguous
        x[0, 1, 2] = 0                                   # a zero row: y = 0, dx = dy / eps
        check_fast_against_reference(F.l2_normalize_forward, F.l2_normalize_backward,
                                     ops.l2_normalize_forward, ops.l2_normalize_backward, [x], rng, ["dx"])


def test_fast_and_reference_caches_are_interchangeable(rng):
    x = _heads_view(rng, np.float64)[1]
    dy = rng.standard_normal(x.shape)
    (yf, cf), (yr, cr) = F.l2_normalize_forward(x), ops.l2_normalize_forward(x)
    want = ops.l2_normalize_backward(dy, cr)
    for got in (F.l2_normalize_backward(dy, cr), ops.l2_normalize_backward(dy, cf), F.l2_normalize_backward(dy, cf)):
        assert rel_error(got, want) < 1e-12


def test_fast_bad_input_gives_the_reference_errors(rng):
    x = rng.standard_normal((2, 3, 4))
    for bad in (x.astype(np.int64), np.array(1.0), np.where(x > 1, np.nan, x), np.where(x > 1, -np.inf, x)):
        raises_same(lambda: F.l2_normalize_forward(bad), lambda: ops.l2_normalize_forward(bad))
    for eps in (0.0, float("nan"), True):
        raises_same(lambda: F.l2_normalize_forward(x, eps=eps), lambda: ops.l2_normalize_forward(x, eps=eps))
    _, cache = F.l2_normalize_forward(x)
    for bad in (x[:, :2], x.astype(np.float32), np.where(x > 1, np.nan, x), np.where(x > 1, np.inf, x)):
        raises_same(lambda: F.l2_normalize_backward(bad, cache), lambda: ops.l2_normalize_backward(bad, cache))


def test_fast_overflowing_row_gives_the_reference_result():
    """float32 values whose squares overflow: finite input, so no error; the fast op returns what the reference
    returns (norm inf, y = 0), not a half-computed array."""
    x = np.array([[3e19, 1.0, -2.0], [0.5, 0.25, 1.0]], np.float32)
    with np.errstate(over="ignore"):
        (yf, cf), (yr, cr) = F.l2_normalize_forward(x), ops.l2_normalize_forward(x)
    np.testing.assert_array_equal(yf, yr)
    np.testing.assert_array_equal(cf.norm, cr.norm)
    assert np.isinf(cf.norm[0, 0]) and np.isfinite(yf).all()
    dy = np.ones_like(x)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(F.l2_normalize_backward(dy, cf), ops.l2_normalize_backward(dy, cr))
