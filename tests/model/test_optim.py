"""mesa_ref.optim.AdamW: the one Adam/AdamW of the toolkit (training, EOS/prompt tuning, probing, solvers)."""
import numpy as np
import pytest

from mesa_ref.optim import AdamW
from mesa_ref.train import AdamW as TrainAdamW
from mesa_ref.train import TrainConfig


def _replay(p, grads, lrs, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, factor=1.0):
    """The update written out once more, in the parameter's dtype, operation for operation."""
    dt = p.dtype.type
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        m = m * dt(b1) + dt(1 - b1) * g
        v = v * dt(b2) + dt(1 - b2) * (g * g)
        upd = (m / dt(1 - b1 ** t)) / (np.sqrt(v / dt(1 - b2 ** t)) + dt(eps))
        if wd:
            upd = upd + dt(wd) * p
        p = p - dt(lr * factor) * upd
    return p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bit_for_bit_replay_with_decay_and_lr_scale(dtype):
    rng = np.random.default_rng(0)
    init = {"l0.wq": rng.standard_normal((4, 3)).astype(dtype), "l0.lam_raw": rng.standard_normal(3).astype(dtype)}
    grads = [{k: rng.standard_normal(v.shape).astype(dtype) for k, v in init.items()} for _ in range(5)]
    lrs = [1e-2 * (i + 1) for i in range(5)]
    p = {k: v.copy() for k, v in init.items()}
    opt = AdamW(p, weight_decay=0.05, lr_scale=(("lam_raw", 30.0),))
    for g, lr in zip(grads, lrs):
        opt.update(p, g, lr)
    assert opt.t == 5 and all(p[k].dtype == dtype and opt.m[k].dtype == dtype for k in p)
    for k, f in (("l0.wq", 1.0), ("l0.lam_raw", 30.0)):
        want = _replay(init[k], [g[k] for g in grads], lrs, wd=0.05, factor=f)
        np.testing.assert_array_equal(p[k], want)


def test_train_config_form_equals_keyword_form():
    assert TrainAdamW is AdamW
    rng = np.random.default_rng(1)
    init = {"a.w": rng.standard_normal((3, 2)), "a.lam_raw": rng.standard_normal(2)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in init.items()} for _ in range(3)]
    tcfg = TrainConfig(weight_decay=0.1, b1=0.8, b2=0.99, eps=1e-6, lr_scale=(("lam_raw", 3.0),))
    pa, pb = ({k: v.copy() for k, v in init.items()} for _ in range(2))
    oa = AdamW(pa, tcfg)
    ob = AdamW(pb, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1, lr_scale=(("lam_raw", 3.0),))
    for g in grads:
        oa.update(pa, g, 0.01)
        ob.update(pb, g, 0.01)
    for k in init:
        np.testing.assert_array_equal(pa[k], pb[k])
        np.testing.assert_array_equal(oa.m[k], ob.m[k])
        np.testing.assert_array_equal(oa.v[k], ob.v[k])


def test_default_is_plain_adam_with_one_lr_per_entry():
    """weight_decay defaults to 0 (Adam); after one step each entry moves by its own lr times sign(g)."""
    p = {"eos": np.array([1.0, -2.0, 0.5]), "prompt": np.array([[0.0, 3.0]])}
    g = {"eos": np.array([0.3, -4.0, 2.0]), "prompt": np.array([[-1.0, 5.0]])}
    opt = AdamW(p)
    opt.update(p, g, {"eos": 1e-3, "prompt": 9e-4})
    sign = lambda g: g / (np.abs(g) + 1e-8)                                          # sign(g), with Adam's eps
    np.testing.assert_allclose(p["eos"], np.array([1.0, -2.0, 0.5]) - 1e-3 * sign(g["eos"]), rtol=1e-14)
    np.testing.assert_allclose(p["prompt"], np.array([[0.0, 3.0]]) - 9e-4 * sign(g["prompt"]), rtol=1e-14)


def test_decay_is_decoupled():
    """With a zero gradient only the decay moves p: p <- p - lr wd p."""
    p = {"w": np.array([2.0, -4.0])}
    opt = AdamW(p, weight_decay=0.5)
    opt.update(p, {"w": np.zeros(2)}, 0.1)
    np.testing.assert_allclose(p["w"], [2.0 * 0.95, -4.0 * 0.95], rtol=1e-15)


@pytest.mark.parametrize("kw", [dict(b1=1.0), dict(b2=-0.1), dict(eps=0.0), dict(weight_decay=-1e-3),
                                dict(weight_decay=float("inf")), dict(lr_scale=(("w", 0.0),)),
                                dict(lr_scale=(("", 2.0),)), dict(b1="x")])
def test_bad_options_raise(kw):
    with pytest.raises(ValueError):
        AdamW({"w": np.zeros(2)}, **kw)


def test_bad_calls_raise():
    with pytest.raises(ValueError, match="either"):
        AdamW({"w": np.zeros(2)}, TrainConfig(), b1=0.5)
    with pytest.raises(ValueError, match="lacks"):
        AdamW({"w": np.zeros(2)}, object())
    with pytest.raises(ValueError, match="float array"):
        AdamW({"w": np.zeros(2, dtype=np.int64)})
    with pytest.raises(ValueError, match="non-empty"):
        AdamW({})
    p = {"w": np.zeros(2), "b": np.zeros(1)}
    opt = AdamW(p)
    with pytest.raises(ValueError, match="missing the gradient of 'b'"):
        opt.update(p, {"w": np.ones(2)}, 0.1)
    with pytest.raises(ValueError, match=r"grads\['w'\]: expected shape"):
        opt.update(p, {"w": np.ones(3), "b": np.ones(1)}, 0.1)
    with pytest.raises(ValueError, match="missing the learning rate of 'b'"):
        opt.update(p, {"w": np.ones(2), "b": np.ones(1)}, {"w": 0.1})
    with pytest.raises(ValueError, match="lr"):
        opt.update(p, {"w": np.ones(2), "b": np.ones(1)}, float("nan"))
    with pytest.raises(ValueError, match="not among"):
        opt.update({"x": np.zeros(2)}, {"x": np.ones(2)}, 0.1)
    assert opt.t == 0 and np.all(p["w"] == 0)        # nothing moved on a rejected call


def _cupy_or_skip():
    from mesa_fast import backend
    if not backend.cupy_available():
        pytest.skip("no usable CuPy / CUDA device")
    return backend.get_cupy()


def test_cupy_parameters_match_numpy():
    """On CuPy arrays the update runs on the device, and gives NumPy's float64 numbers to round-off."""
    cp = _cupy_or_skip()
    from mesa_ref.ops._common import to_host
    rng = np.random.default_rng(2)
    init = {"w": rng.standard_normal((5, 4)), "x.lam_raw": rng.standard_normal(4)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in init.items()} for _ in range(3)]
    ph = {k: v.copy() for k, v in init.items()}
    pd = {k: cp.asarray(v) for k, v in init.items()}
    oh = AdamW(ph, weight_decay=0.05, lr_scale=(("lam_raw", 2.0),))
    od = AdamW(pd, weight_decay=0.05, lr_scale=(("lam_raw", 2.0),))
    for g in grads:
        oh.update(ph, g, 0.01)
        od.update(pd, {k: cp.asarray(v) for k, v in g.items()}, 0.01)
    for k in init:
        assert type(pd[k]).__module__.startswith("cupy") and type(od.m[k]).__module__.startswith("cupy")
        np.testing.assert_allclose(to_host(pd[k]), ph[k], rtol=1e-14, atol=1e-15)
