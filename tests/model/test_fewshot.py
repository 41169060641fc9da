"""[T5]/[P5] few-shot evaluation: the hand-written EOS/prompt gradients against float64 central
differences, the token-construction transpose, the [A3] few-shot baseline, and tuning."""
import numpy as np
import pytest

from mesa_ref.config import ModelConfig
from mesa_ref.data import constructed_tokens, fewshot_regression
from mesa_lab.experiments.icl import lsq_errors, tune_lsq_lam
from mesa_ref.fewshot import (constructed_tokens_backward, fewshot_errors, fewshot_forward, input_gradients,
                              tune_tokens)
from mesa_ref.gradcheck import numerical_gradient, rel_error
from mesa_ref.model import Transformer

N_ITEM = 3


def _model(layers=("linear", "linear"), **kw):
    cfg = ModelConfig(layers=layers, heads=2, width=4 * N_ITEM, key_size=3, input_dim=N_ITEM, output_dim=N_ITEM,
                      init_std=0.4, **kw)
    m = Transformer(cfg)
    return m, m.init(3, dtype=np.float64)


def test_constructed_tokens_backward_is_the_transpose(rng):
    z = rng.standard_normal((2, 5, N_ITEM))
    G = rng.standard_normal((2, 5, 4 * N_ITEM))
    lhs = float((constructed_tokens(z) * G).sum())
    rhs = float((z * constructed_tokens_backward(G)).sum())
    assert abs(lhs - rhs) < 1e-12 * max(1.0, abs(lhs))


@pytest.mark.parametrize("layers,kw", [
    (("linear", "linear"), dict(clip=None)),
    (("softmax", "mesa"), dict(clip=None, mlp=True, layernorm=True)),
    (("linear", "linear"), dict()),                                  # the default family, clip 1.5
])
def test_eos_and_prompt_gradients_match_finite_differences(rng, layers, kw):
    model, params = _model(layers, **kw)
    d = fewshot_regression(rng, 3, 4, N_ITEM)
    eos = rng.uniform(-1, 1, N_ITEM)
    prompt = rng.uniform(-1, 1, (2, N_ITEM))
    loss, g_eos, g_prompt = input_gradients(model, params, d.xs, d.ys, eos, prompt)

    def f():
        return input_gradients(model, params, d.xs, d.ys, eos, prompt)[0]

    assert loss == pytest.approx(f())
    num_eos = numerical_gradient(f, eos)
    num_prompt = numerical_gradient(f, prompt)
    assert np.abs(num_eos).max() > 1e-6 and np.abs(num_prompt).max() > 1e-6   # not trivially zero
    assert rel_error(g_eos, num_eos) < 1e-6
    assert rel_error(g_prompt, num_prompt) < 1e-6


def test_eos_only_gradient_and_no_prompt(rng):
    model, params = _model()
    d = fewshot_regression(rng, 2, 5, N_ITEM)
    eos = rng.uniform(-1, 1, N_ITEM)
    _, g_eos, g_prompt = input_gradients(model, params, d.xs, d.ys, eos)
    assert g_prompt is None
    num = numerical_gradient(lambda: input_gradients(model, params, d.xs, d.ys, eos)[0], eos)
    assert rel_error(g_eos, num) < 1e-6


def test_predictions_are_read_at_the_x_positions(rng):
    model, params = _model()
    d = fewshot_regression(rng, 2, 4, N_ITEM)
    eos = rng.uniform(-1, 1, N_ITEM)
    pred, _, lay = fewshot_forward(model, params, d.xs, d.ys, eos=eos)
    out, _ = model.forward(params, constructed_tokens(lay.seq))
    assert np.array_equal(lay.read_pos, 3 * np.arange(4))
    np.testing.assert_array_equal(pred, out[:, lay.read_pos])
    # causality: the prediction of y_i does not depend on y_i itself
    ys2 = d.ys.copy()
    ys2[:, 2] += 1.0
    pred2, _, _ = fewshot_forward(model, params, d.xs, ys2, eos=eos)
    np.testing.assert_allclose(pred2[:, :3], pred[:, :3], atol=1e-12)
    err = fewshot_errors(model, params, d.xs, d.ys, eos=eos)
    np.testing.assert_allclose(err, 0.5 * ((pred - d.ys) ** 2).sum(-1).mean(0))


def test_rejects_a_non_constructed_model():
    m = Transformer(ModelConfig(input="embed", input_dim=3, output_dim=3, width=8, key_size=2, heads=2))
    p = m.init(0)
    with pytest.raises(ValueError, match="model"):
        fewshot_forward(m, p, np.zeros((1, 2, 3), np.float32), np.zeros((1, 2, 3), np.float32))


def test_lsq_errors_match_an_independent_solve(rng):
    d = fewshot_regression(rng, 4, 6, N_ITEM)
    lam = 0.05
    got = lsq_errors(d.xs, d.ys, lam)
    want = np.zeros(6)
    for b in range(4):
        for i in range(6):
            X, Y = d.xs[b, :i], d.ys[b, :i]                          # (i, n) rows = examples
            W = np.linalg.solve(X.T @ X + lam * np.eye(N_ITEM), X.T @ Y).T if i else np.zeros((N_ITEM, N_ITEM))
            want[i] += 0.5 * np.sum((W @ d.xs[b, i] - d.ys[b, i]) ** 2) / 4
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # noiseless y = W x: with more than n examples and tiny lam the fit is exact
    exact = lsq_errors(d.xs, d.ys, 1e-10)
    assert exact[N_ITEM:].max() < 1e-6 * exact[0]
    assert tune_lsq_lam(d.xs, d.ys) <= 1e-4


def test_tuning_lowers_the_loss(rng):
    model, params = _model(clip=None)
    eos0 = np.full(N_ITEM, 2.0)
    res = tune_tokens(model, params, steps=60, batch=16, N=4, eos=eos0, eos_lr=0.05, seed=0)
    assert len(res.losses) == 60 and not np.shares_memory(res.eos, eos0)
    d = fewshot_regression(rng, 64, 4, N_ITEM)
    before = fewshot_errors(model, params, d.xs, d.ys, eos=eos0).mean()
    after = fewshot_errors(model, params, d.xs, d.ys, eos=res.eos).mean()
    assert after < before
    with pytest.raises(ValueError, match="nothing to tune"):
        tune_tokens(model, params, steps=1, batch=2, N=2)
