"""``ModelConfig.qk_norm``: every layer's queries and keys scaled to unit L2 norm per head before the attention op,
except a ``pos_enc_kq`` first layer: what the option changes and leaves alone, and its place in the config record.
Its gradients are checked with the other models' (tests/model/test_model_ref.py, "qknorm-*" cases) and the fast
model against the reference in tests/fast/test_fast_ops.py ("qknorm-*")."""
import numpy as np
import pytest

from mesa_ref import ops as R
from mesa_ref.config import ModelConfig
from mesa_ref.model import Transformer

SMALL = dict(heads=2, key_size=3, input_dim=2, width=8, output_dim=2, init_std=0.4, qk_norm=True)
CASES = {
    "linear-constructed-clip": dict(layers=("linear", "linear"), clip=3.0),
    "softmax-constructed": dict(layers=("softmax",), clip=None),
    "mesa-constructed": dict(layers=("mesa",), clip=None),
    "hybrid-first-embed": dict(layers=("softmax", "mesa"), clip=None, input="embed", width=6, output_dim=2,
                               pos_enc_kq=True),
}


def _setup(name, rng):
    """(model, float64 params, x) of a small qk_norm model."""
    model = Transformer(ModelConfig(**{**SMALL, **CASES[name]}))
    c = model.config
    return model, model.init(seed=3, dtype=np.float64), rng.standard_normal(
        (2, 5, c.width if c.input == "constructed" else c.input_dim))


def test_forward_changes_and_normalises_every_layer_but_a_hybrid_first(rng):
    model, params, x = _setup("hybrid-first-embed", rng)
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
    model, params, x = _setup(name, rng)
    scaled = dict(params, **{"l0.wq": 3.7 * params["l0.wq"], "l0.wk": 0.21 * params["l0.wk"]})
    np.testing.assert_allclose(model.forward(scaled, x)[0], model.forward(params, x)[0], rtol=1e-10, atol=1e-12)
    plain = Transformer(model.config.replace(qk_norm=False))
    assert np.abs(plain.forward(scaled, x)[0] - plain.forward(params, x)[0]).max() > 1e-6


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
