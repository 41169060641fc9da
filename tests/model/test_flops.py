"""FLOP counts (mesa_ref/flops.py) and fig8's equal-compute comparison (mesa_lab/experiments/language.py)."""
import numpy as np
import pytest

from mesa_ref.config import ModelConfig
from mesa_lab.experiments.language import LMConfig, equal_compute, loss_at
from mesa_ref.flops import attention_flops, model_flops
from mesa_ref.model import Transformer


def test_projection_flops_are_twice_the_product_weights_of_the_model():
    """The non-attention forward count is 2 FLOPs per weight entry of every matrix a token goes through (QKV,
    output, MLP, read-out), checked against the parameters the model actually builds; the embedding is a look-up."""
    cfg = ModelConfig(layers=("softmax", "mesa", "linear"), heads=3, width=24, key_size=8, mlp=True, layernorm=True,
                      input="tokens", input_dim=17, output_dim=17, pos_enc=True)
    params = Transformer(cfg).init(0)
    weights = sum(v.size for k, v in params.items()
                  if v.ndim == 2 and not k.startswith("embed"))
    f = model_flops(cfg.layers, width=24, heads=3, key_size=8, T=11, mlp=True, vocab=17)
    assert f["rest"] == 2 * weights
    assert f["rest_backward"] == 2 * f["rest"]
    assert f["forward"] == f["attention"] + f["rest"]
    assert f["train"] == f["attention"] + f["attention_backward"] + 3 * f["rest"]


def test_attention_counts_follow_their_formulas():
    T, d = 7, 3
    t_avg = (T + 1) / 2
    # softmax: q.k and p v over t_avg keys (2 d FLOPs each) + the softmax's max, exp and division
    assert attention_flops("softmax", T, d)["forward"] == 2 * d * t_avg * 2 + 3 * t_avg
    # the linear layer's recurrent form does not grow with T; its T x T form does
    assert attention_flops("linear_recurrent", 50, d) == attention_flops("linear_recurrent", 500, d)
    assert attention_flops("linear_quadratic", 500, d)["forward"] > attention_flops("linear_quadratic", 50, d)["forward"]
    # the sequential mesa layer is cheaper than softmax attention once T is long enough (T > ~5 d)
    assert attention_flops("mesa_sequential", 256, 16)["forward"] < attention_flops("softmax", 256, 16)["forward"]
    assert attention_flops("mesa_sequential", 16, 16)["forward"] > attention_flops("softmax", 16, 16)["forward"]
    # the chunkwise form costs more than the sequential one, the more the larger the chunk
    seq = attention_flops("mesa_sequential", 256, 16)["forward"]
    c16, c64 = (attention_flops("mesa_chunkwise", 256, 16, C)["forward"] for C in (16, 64))
    assert seq < c16 < c64
    f = model_flops(("mesa",), width=8, heads=2, key_size=4, T=9, mlp=False, vocab=5, chunk=4)
    assert f["attention"] == 2 * attention_flops("mesa_chunkwise", 9, 4, 4)["forward"]


@pytest.mark.parametrize("call", [lambda: attention_flops("flash", 5, 2),
                                  lambda: attention_flops("mesa_chunkwise", 5, 2),
                                  lambda: model_flops(("gru",), width=8, heads=1, key_size=4, T=5, mlp=False,
                                                      vocab=3)])
def test_bad_forms_raise(call):
    with pytest.raises(ValueError):
        call()


def test_loss_at_interpolates_and_stops_at_the_curve_end():
    xs, ys = [0, 10, 20], [3.0, 2.0, 1.0]
    assert loss_at(xs, ys, 15) == pytest.approx(1.5)
    assert loss_at(xs, ys, 20) == 1.0
    assert loss_at(xs, ys, 0) == 3.0
    assert loss_at(xs, ys, 21) is None
    assert loss_at([0, 10, 20], [None, 2.0, 1.0], 12) == pytest.approx(1.8)


def test_equal_compute_compares_at_the_other_run_s_budget():
    """Two runs of the same steps: softmax costs more per token than mesa (T = 64 > 5 d), so at mesa's whole FLOP
    budget softmax is part-way through its curve; mesa cannot reach softmax's budget (None)."""
    cfg = LMConfig(T=64, batch=2, steps=100, width=16, heads=2, key_size=8, layers=2, mlp=True)
    rec = {k: {"layers": [k, k], "width": 16, "heads": 2, "key_size": 8, "mlp": True} for k in ("softmax", "mesa")}
    steps = [0, 50, 100]
    curves = {"softmax": {"step": steps, "loss": [4.0, 2.0, 1.0], "seconds": [0.0, 5.0, 10.0]},
              "mesa": {"step": steps, "loss": [4.0, 3.0, 2.5], "seconds": [0.0, 4.0, 8.0]}}
    ec = equal_compute(cfg, rec, curves, V=11)
    fs, fm = ec["flops"]["softmax"]["train_per_token"], ec["flops"]["mesa"]["train_per_token"]
    assert fm < fs
    step = 100 * fm / fs                              # where softmax has spent mesa's FLOPs
    expect = np.interp(step, steps, [4.0, 2.0, 1.0])
    assert ec["loss_at_flop_budget"]["softmax"]["mesa"] == pytest.approx(expect)
    assert ec["loss_at_flop_budget"]["mesa"]["softmax"] is None
    assert ec["loss_at_flop_budget"]["mesa"]["mesa"] == 2.5
    assert ec["loss_at_time_budget"]["softmax"]["mesa"] == pytest.approx(np.interp(8.0, [0, 5, 10], [4, 2, 1]))
    assert ec["train_flops"]["mesa"] == pytest.approx(100 * 2 * 64 * fm)
