"""The fast one-pass MSE against the reference (views, odd sizes, ranks 0-3) and finite differences."""
import numpy as np
import pytest

from mesa_fast import ops as F
from mesa_ref import ops as R

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
