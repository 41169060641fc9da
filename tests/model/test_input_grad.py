"""``input_grad=False``: the dense backward and the model's ``loss_and_grads`` skip only the gradient with
respect to the input; every parameter gradient is the full backward's."""
import numpy as np
import pytest

from mesa_fast import ops as F
from mesa_ref import ops as R

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
