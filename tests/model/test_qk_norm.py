"""``ModelConfig.qk_norm``: every layer's queries and keys scaled to unit L2 norm per head before the attention op,
except a ``pos_enc_kq`` first layer. Whole-model gradients against float64 central finite differences, the fast
model against the reference, what the option changes and leaves alone, and its place in the config record."""
import numpy as np
import pytest

from mesa_fast import ops as F
from mesa_fast.model import Transformer as FastTransformer
from mesa_ref import ops as R
from mesa_ref.config import ModelConfig
from mesa_ref.gradcheck import numerical_gradient, rel_error
from mesa_ref.model import Transformer
from op_agreement import rel

# each with qk_norm=True
CASES = {
    "linear-constructed-clip": dict(layers=("linear", "linear"), clip=3.0),
    "softmax-constructed": dict(layers=("softmax",), clip=None),
    "mesa-constructed": dict(layers=("mesa",), clip=None),
    "mesa-chunk-embed": dict(layers=("mesa", "mesa"), clip=None, input="embed", width=6, output_dim=2,
                                   mesa_chunk=2),
    "hybrid-first-embed": dict(layers=("softmax", "mesa"), clip=None, input="embed", width=6, output_dim=2,
                               pos_enc_kq=True),
    "linear-mlp-ln-embed": dict(layers=("linear", "softmax"), mlp=True, mlp_factor=1, layernorm=True, clip=None,
                                input="embed", width=5, output_dim=2),
}


def _setup(name, rng):
    kw = dict(heads=2, key_size=3, input_dim=2, width=8, output_dim=2, init_std=0.4, qk_norm=True)
    kw.update(CASES[name])
    cfg = ModelConfig(**kw)
    model = Transformer(cfg)
    params = model.init(seed=3, dtype=np.float64)
    B, T = 2, 5
    x = rng.standard_normal((B, T, cfg.width if cfg.input == "constructed" else cfg.input_dim))
    y = rng.standard_normal((B, T, cfg.output_dim))
    return model, params, x, y


@pytest.mark.parametrize("name", list(CASES))
def test_param_grads_match_finite_differences(name, rng):
    model, params, x, y = _setup(name, rng)
    _, grads = model.loss_and_grads(params, x, y)
    assert set(grads) == set(params)
    for key, p in params.items():
        num = numerical_gradient(lambda: model.loss(params, x, y), p)
        err = rel_error(grads[key], num)
        assert err < 1e-6, f"{name} {key}: rel error {err:.2e}"


@pytest.mark.parametrize("name", list(CASES))
def test_input_grads_match_finite_differences(name, rng):
    model, params, x, y = _setup(name, rng)
    out, cache = model.forward(params, x)
    dout = rng.standard_normal(out.shape)
    _, dx = model.backward(dout, cache)
    num = numerical_gradient(lambda: model.forward(params, x)[0], x, dout)
    assert rel_error(dx, num) < 1e-6


def test_forward_changes_and_normalises_every_layer_but_a_hybrid_first(rng):
    model, params, x, _ = _setup("hybrid-first-embed", rng)
    plain = Transformer(model.config.replace(qk_norm=False))
    out, cache = model.forward(params, x)
    out0, cache0 = plain.forward(params, x)
    assert np.abs(out - out0).max() > 1e-3 * np.abs(out0).max()
    # the hybrid first layer is the plain model's; layer 1 has unit-norm queries and keys
    assert "qn" not in cache.layers[0] and "kn" not in cache.layers[0]
    np.testing.assert_array_equal(cache.residuals[1], cache0.residuals[1])
    assert isinstance(cache.layers[1]["qn"], R.L2NormCache) and isinstance(cache.layers[1]["kn"], R.L2NormCache)
    for name in ("qn", "kn"):
        y, _ = R.l2_normalize_forward(cache.layers[1][name].x)
        np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1.0, atol=1e-12)
    assert not any(n in lc for lc in cache0.layers for n in ("qn", "kn"))
    # without pos_enc_kq the first layer is normalised too
    _, cache = Transformer(model.config.replace(pos_enc_kq=False)).forward(
        dict(params, **{"l0.wq": params["l0.wq"][:6], "l0.wk": params["l0.wk"][:6]}), x)
    assert "qn" in cache.layers[0] and "kn" in cache.layers[0]


@pytest.mark.parametrize("name", ["linear-constructed-clip", "softmax-constructed", "mesa-constructed"])
def test_output_ignores_the_scale_of_queries_and_keys(name, rng):
    """Only the direction of each head's q and k reaches the attention op: scaling W_Q and W_K by positive factors
    leaves the output as it was (and, without qk_norm, changes it)."""
    model, params, x, _ = _setup(name, rng)
    scaled = dict(params, **{"l0.wq": 3.7 * params["l0.wq"], "l0.wk": 0.21 * params["l0.wk"]})
    np.testing.assert_allclose(model.forward(scaled, x)[0], model.forward(params, x)[0], rtol=1e-10, atol=1e-12)
    plain = Transformer(model.config.replace(qk_norm=False))
    assert np.abs(plain.forward(scaled, x)[0] - plain.forward(params, x)[0]).max() > 1e-6


# ------------------------------------------------------------------------------- fast model against the reference
FAST_CASES = {
    "linear": ModelConfig(layers=("linear", "linear"), input="embed", input_dim=3, output_dim=3, width=13, heads=3,
                          key_size=5, qk_norm=True),
    "softmax": ModelConfig(layers=("softmax",), input="embed", input_dim=3, output_dim=3, width=11, heads=3,
                           key_size=7, mlp=True, layernorm=True, clip=None, qk_norm=True),
    "mesa": ModelConfig(layers=("mesa",), input="embed", input_dim=5, output_dim=5, width=9, heads=2, key_size=5,
                        mesa_gamma=True, qk_norm=True),
    "hybrid-first": ModelConfig(layers=("softmax", "mesa"), input="embed", input_dim=5, output_dim=5, width=7,
                                heads=3, key_size=3, clip=None, pos_enc_kq=True, qk_norm=True),
}


def _scaled_params(model, dtype):
    """Weights of order 1/sqrt(fan-in), so that every path matters."""
    p = model.init(3, dtype=dtype)
    for k, v in p.items():
        if v.ndim == 2:
            p[k] = (v * dtype(1.0 / (model.config.init_std * np.sqrt(v.shape[0])))).astype(dtype)
    return p


def _batch(cfg, rng, dtype, B=3, T=7):
    return (rng.standard_normal((B, T, cfg.input_dim)).astype(dtype),
            rng.standard_normal((B, T, cfg.output_dim)).astype(dtype))


def _skip_without_fast_mesa(cfg):
    if "mesa" in cfg.layers and F.mesa_forward is R.mesa_forward:
        pytest.skip("mesa_fast.ops.mesa_forward is the reference's (no fast mesa kernel registered)")


@pytest.mark.parametrize("case", list(FAST_CASES))
def test_fast_float64_matches_reference(case):
    cfg = FAST_CASES[case]
    _skip_without_fast_mesa(cfg)
    rng = np.random.default_rng(2)
    fast, ref = FastTransformer(cfg), Transformer(cfg)
    p = _scaled_params(ref, np.float64)
    x, y = _batch(cfg, rng, np.float64)
    out_f, _ = fast.forward(p, x)
    out_r, _ = ref.forward(p, x)
    assert rel(out_f, out_r) <= 1e-10
    L_f, g_f = fast.loss_and_grads(p, x, y)
    L_r, g_r = ref.loss_and_grads(p, x, y)
    assert abs(L_f - L_r) <= 1e-10 * abs(L_r)
    assert set(g_f) == set(g_r) == set(p)
    for k in g_r:
        assert g_f[k].dtype == np.float64
        assert rel(g_f[k], g_r[k]) <= 1e-10, (k, rel(g_f[k], g_r[k]))


@pytest.mark.parametrize("case", list(FAST_CASES))
def test_fast_float32_as_accurate_as_reference(case):
    """Float32 through both, the float64 reference as truth: the fast model's error is at most a small multiple of
    the reference's own float32 error (plus 1e-5 relative)."""
    cfg = FAST_CASES[case]
    _skip_without_fast_mesa(cfg)
    rng = np.random.default_rng(4)
    fast, ref = FastTransformer(cfg), Transformer(cfg)
    p32 = _scaled_params(ref, np.float32)
    p64 = {k: v.astype(np.float64) for k, v in p32.items()}
    x32, y32 = _batch(cfg, rng, np.float32)
    L_t, g_t = ref.loss_and_grads(p64, x32.astype(np.float64), y32.astype(np.float64))
    L_f, g_f = fast.loss_and_grads(p32, x32, y32)
    L_r, g_r = ref.loss_and_grads(p32, x32, y32)
    assert abs(L_f - L_t) <= 4 * abs(L_r - L_t) + 1e-5 * abs(L_t)
    for k in g_t:
        assert g_f[k].dtype == np.float32
        e_f, e_r = rel(g_f[k], g_t[k]), rel(g_r[k], g_t[k])
        assert e_f <= 4 * e_r + 1e-5, (k, e_f, e_r)


# ------------------------------------------------------------------------------- config record
def test_config_record_leaves_qk_norm_out_at_its_default():
    assert "qk_norm" not in ModelConfig().to_dict()
    assert "qk_norm" not in ModelConfig(layers=("softmax",), input="embed", width=8, pos_enc_kq=True).to_dict()
    cfg = ModelConfig(qk_norm=True)
    d = cfg.to_dict()
    assert d["qk_norm"] is True
    assert ModelConfig.from_dict(d) == cfg and ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()
    assert ModelConfig.from_dict(cfg.replace(qk_norm=False).to_dict()) == ModelConfig()


@pytest.mark.parametrize("bad", [1, 0, "yes", None, np.bool_(True)])
def test_qk_norm_must_be_a_bool(bad):
    with pytest.raises(ValueError, match="qk_norm"):
        ModelConfig(qk_norm=bad)
