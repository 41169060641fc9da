"""Every reference op's backward against float64 central finite differences, plus closed-form checks."""
import numpy as np
import pytest

from mesa_ref import ops
from mesa_ref.gradcheck import numerical_gradient, rel_error

TOL = 1e-6


def _check_grads(fwd, bwd, inputs, rng, names):
    """Check bwd(dout, cache) against central differences of <fwd(*inputs), dout> for each input."""
    out, cache = fwd(*inputs)
    dout = rng.standard_normal(np.shape(out))
    grads = bwd(dout, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    for name, x, g in zip(names, inputs, grads):
        num = numerical_gradient(lambda: fwd(*inputs)[0], x, dout)
        err = rel_error(g, num)
        assert err < TOL, f"{name}: rel error {err:.2e}"


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4)], ids=lambda s: "x" + "-".join(map(str, s)))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_dense_grads(rng, shape, bias):
    x = rng.standard_normal(shape)
    W = rng.standard_normal((shape[-1], 3))
    b = rng.standard_normal(3) if bias else None
    if bias:
        _check_grads(ops.dense_forward, ops.dense_backward, (x, W, b), rng, ["dx", "dW", "db"])
    else:
        _check_grads(lambda x, W: ops.dense_forward(x, W), ops.dense_backward, (x, W), rng, ["dx", "dW"])
        assert ops.dense_backward(np.ones((*shape[:-1], 3)), ops.dense_forward(x, W)[1])[2] is None


@pytest.mark.parametrize("B,H,T,d,dv", [(2, 3, 7, 4, 4), (1, 2, 5, 3, 2), (1, 1, 1, 2, 2)],
                         ids=lambda *a: None)
def test_linear_attention_grads_and_definition(rng, B, H, T, d, dv):
    q, k = rng.standard_normal((2, B, H, T, d))
    v = rng.standard_normal((B, H, T, dv))
    out, _ = ops.linear_attention_forward(q, k, v)
    # [L2] by its definition, one position at a time
    for t in range(T):
        ref = np.einsum("bhs,bhsv->bhv", np.einsum("bhsd,bhd->bhs", k[:, :, :t + 1], q[:, :, t]), v[:, :, :t + 1])
        np.testing.assert_allclose(out[:, :, t], ref, rtol=1e-12, atol=1e-12)
    _check_grads(ops.linear_attention_forward, ops.linear_attention_backward, (q, k, v), rng, ["dq", "dk", "dv"])


@pytest.mark.parametrize("B,H,T,d,dv", [(2, 2, 6, 3, 3), (1, 3, 5, 4, 2)])
def test_softmax_attention_grads_and_definition(rng, B, H, T, d, dv):
    q, k = rng.standard_normal((2, B, H, T, d))
    v = rng.standard_normal((B, H, T, dv))
    out, cache = ops.softmax_attention_forward(q, k, v)
    P = cache.P
    np.testing.assert_allclose(P.sum(-1), 1.0, rtol=1e-12)
    assert np.all(np.triu(P[0, 0], 1) == 0), "attention must be causal"
    t = T - 1
    s = np.einsum("bhsd,bhd->bhs", k, q[:, :, t]) / np.sqrt(d)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    np.testing.assert_allclose(out[:, :, t], np.einsum("bhs,bhsv->bhv", w, v), rtol=1e-12)
    _check_grads(ops.softmax_attention_forward, ops.softmax_attention_backward, (q, k, v), rng, ["dq", "dk", "dv"])


def test_softmax_attention_stable_for_large_scores(rng):
    q, k, v = 300 * rng.standard_normal((3, 1, 1, 4, 2))
    out, cache = ops.softmax_attention_forward(q, k, v)
    assert np.isfinite(out).all() and np.isfinite(cache.P).all()


def test_layernorm_grads(rng):
    x = rng.standard_normal((2, 3, 5))
    w = rng.standard_normal(5)
    b = rng.standard_normal(5)
    y, _ = ops.layernorm_forward(x, w, b)
    yh = (y - b) / w
    np.testing.assert_allclose(yh.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(yh.var(-1), 1, rtol=1e-4)   # eps=1e-5 shifts the variance slightly
    _check_grads(ops.layernorm_forward, ops.layernorm_backward, (x, w, b), rng, ["dx", "dw", "db"])


def test_gelu_grads_and_values(rng):
    x = rng.standard_normal((4, 7)) * 2
    y, _ = ops.gelu_forward(x)
    assert abs(ops.gelu_forward(np.array([0.0]))[0][0]) == 0
    # the tanh form is within 1e-3 of the exact erf form
    from scipy.special import erf
    np.testing.assert_allclose(y, 0.5 * x * (1 + erf(x / np.sqrt(2))), atol=2e-3)
    _check_grads(ops.gelu_forward, ops.gelu_backward, (x,), rng, ["dx"])


def test_clip_grads(rng):
    x = rng.standard_normal((5, 6)) * 2
    x[np.abs(np.abs(x) - 1.5) < 1e-3] = 0.3    # keep clear of the kink for finite differences
    y, cache = ops.clip_forward(x, c=1.5)
    assert np.abs(y).max() <= 1.5
    _check_grads(lambda x: ops.clip_forward(x, c=1.5), ops.clip_backward, (x,), rng, ["dx"])
    g = ops.clip_backward(np.ones_like(x), cache)
    assert np.all(g[np.abs(x) > 1.5] == 0) and np.all(g[np.abs(x) < 1.5] == 1)


def test_mse_and_cross_entropy_grads(rng):
    pred = rng.standard_normal((2, 4, 3))
    tgt = rng.standard_normal((2, 4, 3))
    L, _ = ops.mse_forward(pred, tgt)
    assert np.isclose(L, ((pred - tgt) ** 2).sum() / (2 * 8))
    _check_grads(lambda p: ops.mse_forward(p, tgt), ops.mse_backward, (pred,), rng, ["dpred"])
    logits = rng.standard_normal((2, 3, 5))
    targets = rng.integers(0, 5, size=(2, 3))
    L, _ = ops.cross_entropy_forward(logits, targets)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert np.isclose(L, -np.take_along_axis(lp, targets[..., None], -1).mean())
    _check_grads(lambda z: ops.cross_entropy_forward(z, targets), ops.cross_entropy_backward, (logits,), rng, ["dlogits"])


def test_positional_encoding():
    P = ops.sinusoidal_positional_encoding(7, 5)
    assert P.shape == (7, 5)
    np.testing.assert_allclose(P[:, 0], np.sin(np.arange(7)))
    np.testing.assert_allclose(P[:, 1], np.cos(np.arange(7)))
    np.testing.assert_allclose(P[3, 2], np.sin(3 / 10000 ** (2 / 5)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(rng, dtype):
    q, k, v = rng.standard_normal((3, 1, 2, 4, 3)).astype(dtype)
    for fwd, bwd in [(ops.linear_attention_forward, ops.linear_attention_backward),
                     (ops.softmax_attention_forward, ops.softmax_attention_backward)]:
        out, cache = fwd(q, k, v)
        assert out.dtype == dtype
        assert all(g.dtype == dtype for g in bwd(np.ones_like(out), cache))
    x = rng.standard_normal((2, 3)).astype(dtype)
    w, b = np.ones(3, dtype), np.zeros(3, dtype)
    assert ops.layernorm_forward(x, w, b)[0].dtype == dtype
    assert ops.gelu_forward(x)[0].dtype == dtype
    assert ops.clip_forward(x, c=1.0)[0].dtype == dtype


def test_bad_inputs_raise(rng):
    q = rng.standard_normal((1, 2, 4, 3))
    with pytest.raises(ValueError, match="k"):
        ops.linear_attention_forward(q, q[:, :, :3], q)
    with pytest.raises(ValueError, match="q"):
        ops.linear_attention_forward(q[0], q[0], q[0])
    bad = q.copy(); bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        ops.softmax_attention_forward(q, bad, q)
    with pytest.raises(ValueError, match="dtype"):
        ops.linear_attention_forward(q, q.astype(np.float32), q)
    with pytest.raises(ValueError, match="W"):
        ops.dense_forward(q, rng.standard_normal((4, 2)))
    with pytest.raises(ValueError, match="c"):
        ops.clip_forward(q, c=-1.0)
    with pytest.raises(ValueError, match="dout"):
        out, cache = ops.linear_attention_forward(q, q, q)
        ops.linear_attention_backward(out[..., :2], cache)
    with pytest.raises(ValueError, match="targets"):
        ops.cross_entropy_forward(rng.standard_normal((2, 5)), np.array([0, 7]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finiteness_check_is_exact_even_when_the_sum_overflows(dtype):
    """check_float_array: finite input near the dtype's limit (whose sum overflows) is accepted, and every NaN / inf
    (including +inf and -inf together, whose sum is NaN) must be caught."""
    from mesa_ref.ops._common import check_float_array
    big = np.full((4, 5), np.finfo(dtype).max / 2, dtype=dtype)
    with np.errstate(over="ignore"):
        assert not np.isfinite(big.sum())
    check_float_array("x", big)                                   # finite: accepted
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((3, 7), dtype=dtype)
        x[2, 5] = bad
        with pytest.raises(ValueError, match="x: contains non-finite"):
            check_float_array("x", x)
    x = np.ones(6, dtype=dtype)
    x[1], x[4] = np.inf, -np.inf
    with pytest.raises(ValueError, match="non-finite"):
        check_float_array("x", x)
