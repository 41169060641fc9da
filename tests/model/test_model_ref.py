"""Whole-model gradients of the reference Transformer against float64 central finite differences."""
import numpy as np
import pytest

from mesa_ref.config import ModelConfig
from mesa_ref.gradcheck import numerical_gradient, rel_error
from mesa_ref.model import Transformer

CASES = {
    "linear-constructed-clip": dict(layers=("linear", "linear"), clip=3.0),
    "softmax-constructed": dict(layers=("softmax",), clip=None),
    "mesa-constructed": dict(layers=("mesa",), clip=None),
    "mesa-gamma-checkpoint": dict(layers=("mesa",), clip=None, mesa_gamma=True, mesa_backward="checkpoint"),
    "hybrid-mlp-ln-embed-pos": dict(layers=("softmax", "mesa", "linear"), mlp=True, mlp_factor=2, layernorm=True,
                                    clip=None, input="embed", width=6, output_dim=3, pos_enc=True),
    "linear-mlp-clip-embed": dict(layers=("linear",), mlp=True, mlp_factor=1, clip=2.0, input="embed", width=5,
                                  output_dim=2),
    "tokens-softmax-ln": dict(layers=("softmax", "linear"), layernorm=True, clip=None, input="tokens", input_dim=5,
                              output_dim=5, width=6, pos_enc=True),
    # the authors' hybrid first layer (position in its queries and keys only) and dense maps without biases
    "hybrid-first-embed-nobias": dict(layers=("softmax", "softmax"), clip=None, input="embed", width=6, output_dim=2,
                                      pos_enc_kq=True, io_bias=False),
    "hybrid-first-constructed": dict(layers=("linear", "mesa"), clip=2.0, pos_enc_kq=True),
    "tokens-hybrid-first-nobias": dict(layers=("softmax",), clip=None, input="tokens", input_dim=5, output_dim=5,
                                       width=6, pos_enc_kq=True, io_bias=False),
    # unit_norm: unit-norm q, k and/or v (every kind; not in a pos_enc_kq first layer)
    "unitnorm-qk-linear-constructed-clip": dict(layers=("linear", "linear"), clip=3.0, unit_norm=("q", "k")),
    "unitnorm-qk-softmax-constructed": dict(layers=("softmax",), clip=None, unit_norm=("q", "k")),
    "unitnorm-qv-mesa-constructed": dict(layers=("mesa",), clip=None, unit_norm=("q", "v")),
    "unitnorm-kv-linear-constructed": dict(layers=("linear",), clip=None, unit_norm=("v", "k")),
    "unitnorm-qkv-mesa-chunk-embed": dict(layers=("mesa", "mesa"), clip=None, input="embed", width=6, output_dim=2,
                                          mesa_chunk=2, unit_norm=("q", "k", "v")),
    "unitnorm-qv-hybrid-first-embed": dict(layers=("softmax", "mesa"), clip=None, input="embed", width=6,
                                           output_dim=2, pos_enc_kq=True, unit_norm=("q", "v")),
    "unitnorm-qk-mlp-ln-embed": dict(layers=("linear", "softmax"), mlp=True, mlp_factor=1, layernorm=True, clip=None,
                                     input="embed", width=5, output_dim=2, unit_norm=("q", "k")),
}


def _setup(name, rng):
    kw = dict(heads=2, key_size=3, input_dim=2, width=8, output_dim=2, init_std=0.4)
    kw.update(CASES[name])
    cfg = ModelConfig(**kw)
    model = Transformer(cfg)
    params = model.init(seed=3, dtype=np.float64)
    B, T = 2, 5
    if cfg.input == "tokens":
        x = rng.integers(0, cfg.input_dim, size=(B, T))
        y = rng.integers(0, cfg.output_dim, size=(B, T))
    else:
        x = rng.standard_normal((B, T, cfg.width if cfg.input == "constructed" else cfg.input_dim))
        y = rng.standard_normal((B, T, cfg.output_dim))
    return model, params, x, y


@pytest.mark.parametrize("name", list(CASES))
def test_model_param_grads_match_finite_differences(name, rng):
    model, params, x, y = _setup(name, rng)
    _, grads = model.loss_and_grads(params, x, y)
    assert set(grads) == set(params)
    for key, p in params.items():
        num = numerical_gradient(lambda: model.loss(params, x, y), p)
        err = rel_error(grads[key], num)
        assert err < 1e-6, f"{name} {key}: rel error {err:.2e}"


@pytest.mark.parametrize("name", [n for n in CASES if CASES[n].get("input") != "tokens"])
def test_model_input_grads_match_finite_differences(name, rng):
    model, params, x, y = _setup(name, rng)
    out, cache = model.forward(params, x)
    dout = rng.standard_normal(out.shape)
    _, dx = model.backward(dout, cache)
    num = numerical_gradient(lambda: model.forward(params, x)[0], x, dout)
    assert rel_error(dx, num) < 1e-6


def test_default_config_is_authors_model():
    cfg = ModelConfig()
    assert cfg.layers == ("linear", "linear") and cfg.heads == 4 and cfg.width == 40 and cfg.key_size == 20
    assert cfg.clip == 1.5 and not cfg.mlp and not cfg.layernorm and cfg.init_std == 2e-4
    params = Transformer(cfg).init(0)
    assert params["l0.wq"].shape == (40, 80) and params["l1.wo"].shape == (80, 40)
    assert abs(np.std(params["l0.wq"]) - 2e-4) < 2e-5


def test_residual_stream_and_readout(rng):
    model, params, x, y = _setup("linear-constructed-clip", rng)
    out, cache = model.forward(params, x)
    assert len(cache.residuals) == 3
    np.testing.assert_array_equal(cache.residuals[0], x)
    np.testing.assert_array_equal(out, cache.residuals[-1][..., :2])


def test_causality(rng):
    """Changing a later input leaves earlier outputs unchanged, for every layer kind."""
    model, params, x, y = _setup("hybrid-mlp-ln-embed-pos", rng)
    out1, _ = model.forward(params, x)
    x2 = x.copy(); x2[:, 3:] += 1.0
    out2, _ = model.forward(params, x2)
    np.testing.assert_allclose(out1[:, :3], out2[:, :3], rtol=1e-12, atol=1e-12)
    assert not np.allclose(out1[:, 3:], out2[:, 3:])


def test_bad_config_and_input_raise(rng):
    with pytest.raises(ValueError, match="layers"):
        ModelConfig(layers=("linear", "rnn"))
    with pytest.raises(ValueError, match="width"):
        ModelConfig(width=30)
    model, params, x, y = _setup("linear-constructed-clip", rng)
    with pytest.raises(ValueError, match="x"):
        model.forward(params, x[..., :5])
    with pytest.raises(ValueError, match="x"):
        model.forward(params, x.astype(np.float32))


def test_config_roundtrip():
    cfg = ModelConfig(layers=("mesa", "softmax"), mesa_gamma=True)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"nope": 1})


def test_optional_fields_leave_the_record_as_it_was():
    # a config that does not use them has the same dict (so the same job key) as before they existed
    cfg = ModelConfig(layers=("softmax",), input="embed", width=8)
    assert "pos_enc_kq" not in cfg.to_dict() and "io_bias" not in cfg.to_dict()
    hyb = cfg.replace(pos_enc_kq=True, io_bias=False)
    d = hyb.to_dict()
    assert d["pos_enc_kq"] is True and d["io_bias"] is False
    assert ModelConfig.from_dict(d) == hyb and ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_hybrid_first_layer_shapes_and_position_only_in_queries_and_keys(rng):
    cfg = ModelConfig(layers=("softmax", "softmax"), clip=None, input="embed", width=6, heads=2, key_size=3,
                      input_dim=2, output_dim=2, pos_enc_kq=True, io_bias=False, init_std=0.4)
    model = Transformer(cfg)
    params = model.init(seed=1, dtype=np.float64)
    assert params["l0.wq"].shape == (12, 6) and params["l0.wk"].shape == (12, 6) and params["l0.wv"].shape == (6, 6)
    assert params["l1.wq"].shape == (6, 6) and "embed.b" not in params and "out.b" not in params
    x = rng.standard_normal((2, 5, 2))
    _, cache = model.forward(params, x)
    # no position in the residual stream: the input stream is the embedding alone
    np.testing.assert_allclose(cache.residuals[0], x @ params["embed.w"], rtol=1e-14)
    # position does reach the first layer's attention: one layer without position is blind to the order of the
    # tokens before the last, so its last output is the same when they are permuted; with position it is not
    one = cfg.replace(layers=("softmax",))
    p1 = Transformer(one).init(seed=2, dtype=np.float64)
    flat = cfg.replace(layers=("softmax",), pos_enc_kq=False)
    p_flat = dict(p1, **{"l0.wq": p1["l0.wq"][:6], "l0.wk": p1["l0.wk"][:6]})
    xs = rng.standard_normal((1, 5, 2))
    xp_ = xs[:, [2, 0, 3, 1, 4]]                               # the first four permuted, the last kept
    y_flat, y_flat_p = (Transformer(flat).forward(p_flat, z)[0][:, -1] for z in (xs, xp_))
    np.testing.assert_allclose(y_flat, y_flat_p, rtol=1e-12)
    y_hyb, y_hyb_p = (Transformer(one).forward(p1, z)[0][:, -1] for z in (xs, xp_))
    assert np.abs(y_hyb - y_hyb_p).max() > 1e-6


def test_hybrid_first_layer_refuses_layernorm():
    with pytest.raises(ValueError, match="pos_enc_kq"):
        ModelConfig(layers=("softmax",), layernorm=True, input="embed", width=8, pos_enc_kq=True)
