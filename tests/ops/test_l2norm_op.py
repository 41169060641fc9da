"""l2_normalize (the per-head normalisation of ``ModelConfig.unit_norm``): unit norms, the backward against
float64 central finite differences, float32 against float64, the zero vector, bad input; and the fast namespace
hands out the reference's own functions."""
import numpy as np
import pytest

from mesa_fast import ops as F
from mesa_ref import ops
from mesa_ref.gradcheck import numerical_gradient, rel_error


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


def test_fast_namespace_uses_the_reference_op():
    for name in ("l2_normalize_forward", "l2_normalize_backward", "L2NormCache"):
        assert getattr(F, name) is getattr(ops, name) and name in ops.__all__
