"""``ModelConfig.unit_norm``: the named ones of each head's q, k, v scaled to unit L2 norm before the attention op, in
every layer but a ``pos_enc_kq`` first one: what the option changes and leaves alone, and its place in the config
record.  Its gradients are checked with the other models' (tests/model/test_model_ref.py, "unitnorm-*" cases) and
the fast model against the reference in tests/fast/test_fast_ops.py ("unitnorm-*")."""
import numpy as np
import pytest

from mesa_ref import ops as R
from mesa_ref.config import ModelConfig
from mesa_ref.model import Transformer

SMALL = dict(heads=2, key_size=3, input_dim=2, width=8, output_dim=2, init_std=0.4)
CASES = {
    "linear-constructed-clip": dict(layers=("linear", "linear"), clip=3.0),
    "softmax-constructed": dict(layers=("softmax",), clip=None),
    "mesa-constructed": dict(layers=("mesa",), clip=None),
    "hybrid-first-embed": dict(layers=("softmax", "mesa"), clip=None, input="embed", width=6, output_dim=2,
                               pos_enc_kq=True),
}
PROJ = {"q": "wq", "k": "wk", "v": "wv"}


def _setup(name, rng, unit_norm=("q", "k")):
    """(model, float64 params, x) of a small model with ``unit_norm``."""
    model = Transformer(ModelConfig(**{**SMALL, **CASES[name]}, unit_norm=unit_norm))
    c = model.config
    return model, model.init(seed=3, dtype=np.float64), rng.standard_normal(
        (2, 5, c.width if c.input == "constructed" else c.input_dim))


@pytest.mark.parametrize("unit_norm", [("q", "k"), ("q", "v"), ("v",)])
def test_forward_normalises_what_it_names_in_every_layer_but_a_hybrid_first(rng, unit_norm):
    model, params, x = _setup("hybrid-first-embed", rng, unit_norm)
    plain = Transformer(model.config.replace(unit_norm=()))
    out, cache = model.forward(params, x)
    out0, cache0 = plain.forward(params, x)
    assert np.abs(out - out0).max() > 1e-3 * np.abs(out0).max()
    # the hybrid first layer is the plain model's; layer 1 normalises exactly the named projections
    assert not any(n + "n" in cache.layers[0] for n in "qkv")
    np.testing.assert_array_equal(cache.residuals[1], cache0.residuals[1])
    assert {n for n in "qkv" if n + "n" in cache.layers[1]} == set(unit_norm)
    for n in unit_norm:
        assert isinstance(cache.layers[1][n + "n"], R.L2NormCache)
        y, _ = R.l2_normalize_forward(cache.layers[1][n + "n"].x)
        np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1.0, atol=1e-12)
    assert not any(n + "n" in lc for lc in cache0.layers for n in "qkv")
    # without pos_enc_kq the first layer is normalised too
    _, cache = Transformer(model.config.replace(pos_enc_kq=False)).forward(
        dict(params, **{"l0.wq": params["l0.wq"][:6], "l0.wk": params["l0.wk"][:6]}), x)
    assert {n for n in "qkv" if n + "n" in cache.layers[0]} == set(unit_norm)


@pytest.mark.parametrize("unit_norm", [("q", "k"), ("q", "v"), ("k", "v")])
@pytest.mark.parametrize("name", ["linear-constructed-clip", "softmax-constructed", "mesa-constructed"])
def test_output_ignores_the_scale_of_what_is_normalised(name, unit_norm, rng):
    """Only the direction of a normalised projection reaches the attention op: scaling its weights by positive
    factors leaves the output as it was (and, without unit_norm, changes it)."""
    model, params, x = _setup(name, rng, unit_norm)
    a, b = (PROJ[n] for n in unit_norm)
    scaled = dict(params, **{f"l0.{a}": 3.7 * params[f"l0.{a}"], f"l0.{b}": 0.21 * params[f"l0.{b}"]})
    np.testing.assert_allclose(model.forward(scaled, x)[0], model.forward(params, x)[0], rtol=1e-10, atol=1e-12)
    plain = Transformer(model.config.replace(unit_norm=()))
    assert np.abs(plain.forward(scaled, x)[0] - plain.forward(params, x)[0]).max() > 1e-6


# ------------------------------------------------------------------------------- config record
def test_config_record_leaves_unit_norm_out_at_its_default():
    assert "unit_norm" not in ModelConfig().to_dict()
    assert "unit_norm" not in ModelConfig(layers=("softmax",), input="embed", width=8, pos_enc_kq=True).to_dict()
    cfg = ModelConfig(unit_norm=("q", "v"))
    d = cfg.to_dict()
    assert d["unit_norm"] == ["q", "v"]
    assert ModelConfig.from_dict(d) == cfg and ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()
    assert ModelConfig.from_dict(cfg.replace(unit_norm=()).to_dict()) == ModelConfig()
    assert ModelConfig(unit_norm=["k"]).unit_norm == ("k",)


@pytest.mark.parametrize("bad", ["qk", ("q", "q"), ("x",), True, None, ("q", 1)])
def test_unit_norm_names_distinct_projections(bad):
    with pytest.raises(ValueError, match="unit_norm"):
        ModelConfig(unit_norm=bad)
