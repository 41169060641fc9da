"""The recurrent form of causal linear attention [L2] (mesa_ref/ops/attention_linear.py) against the T x T form,
forward and gradients in float64, and its hand-written backward against float64 central finite differences."""
import numpy as np
import pytest

from mesa_ref.gradcheck import numerical_gradient, rel_error
from mesa_ref.ops.attention_linear import (
    LinearAttentionRecurrentCache,
    linear_attention_backward,
    linear_attention_forward,
    linear_attention_recurrent_backward,
    linear_attention_recurrent_forward,
)

# (B, H, T, d, d_v): odd sizes, d != d_v both ways, a single token
SHAPES = [(3, 2, 17, 5, 7), (1, 3, 33, 7, 3), (2, 1, 1, 3, 2), (1, 1, 64, 4, 4)]


def _inputs(B, H, T, d, d_v, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, B, H, T, d))
    v, dout = rng.standard_normal((2, B, H, T, d_v))
    return tuple(x.astype(dtype) for x in (q, k, v, dout))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-H{}-T{}-d{}-dv{}".format(*s))
def test_recurrent_form_equals_the_TxT_form_float64(shape):
    q, k, v, dout = _inputs(*shape, seed=sum(shape))
    out_r, cache_r = linear_attention_recurrent_forward(q, k, v)
    out_a, cache_a = linear_attention_forward(q, k, v)
    assert out_r.shape == out_a.shape == shape[:3] + (shape[4],)
    assert rel_error(out_r, out_a) < 1e-12
    grads_r = linear_attention_recurrent_backward(dout, cache_r)
    grads_a = linear_attention_backward(dout, cache_a)
    for name, gr, ga in zip(("dq", "dk", "dv"), grads_r, grads_a):
        assert gr.shape == ga.shape, name
        assert rel_error(gr, ga) < 1e-12, (name, rel_error(gr, ga))


@pytest.mark.parametrize("shape", [(2, 2, 5, 3, 4), (1, 3, 6, 2, 1)], ids=lambda s: "B{}-H{}-T{}-d{}-dv{}".format(*s))
def test_recurrent_backward_matches_central_finite_differences(shape):
    q, k, v, dout = _inputs(*shape, seed=11)
    _, cache = linear_attention_recurrent_forward(q, k, v)
    grads = linear_attention_recurrent_backward(dout, cache)
    f = lambda: linear_attention_recurrent_forward(q, k, v)[0]  # noqa: E731
    for name, x, g in zip(("dq", "dk", "dv"), (q, k, v), grads):
        num = numerical_gradient(f, x, dout, h=1e-6)
        assert rel_error(g, num) < 1e-8, (name, rel_error(g, num))


def test_recurrent_form_runs_in_the_input_dtype_and_keeps_its_cache():
    q, k, v, dout = _inputs(2, 2, 9, 3, 5, seed=3, dtype=np.float32)
    before = [x.copy() for x in (q, k, v)]
    out, cache = linear_attention_recurrent_forward(q, k, v)
    assert isinstance(cache, LinearAttentionRecurrentCache) and out.dtype == np.float32
    grads = linear_attention_recurrent_backward(dout, cache)
    assert all(g.dtype == np.float32 for g in grads)
    for a, b in zip(before, cache):
        np.testing.assert_array_equal(a, b)
    ref = linear_attention_forward(*(x.astype(np.float64) for x in (q, k, v)))[0]
    assert rel_error(out, ref) < 1e-6


def test_recurrent_form_rejects_bad_inputs():
    q, k, v, dout = _inputs(1, 2, 4, 3, 2)
    with pytest.raises(ValueError, match="k"):
        linear_attention_recurrent_forward(q, k[:, :, :3], v)
    _, cache = linear_attention_recurrent_forward(q, k, v)
    with pytest.raises(ValueError, match="dout"):
        linear_attention_recurrent_backward(dout[..., :1], cache)
    with pytest.raises(ValueError, match="dout"):
        linear_attention_recurrent_backward(dout.astype(np.float32), cache)
    with pytest.raises(ValueError, match="cache"):
        linear_attention_recurrent_backward(dout, linear_attention_forward(q, k, v)[1])
