"""The plain Numba kernels (mesa_fast/kernels/plain/) against the NumPy reference ops.

Every test runs the ``mesa_fast.ops`` op with the plain kernels selected (the ``plain`` fixture: what
MESA_FAST_KERNELS=plain does) and checks that they really ran (the plain kernels hand back the (B, H, T, T) map
and (B, H, T, d) q~_t where the SIMD ones keep lane layouts). Truth is the float64 reference on the same inputs:
the kernels in float64 agree to 1e-10, in float32 to the tolerances of tests/fast/test_fast_ops.py and
tests/fast/test_fast_mesa.py. Sizes are odd (T 7, d 5, 3 batches x 3 or 5 heads) so that no loop length is a
multiple of a vector width. A NaN or inf in an input raises the reference's ValueError, word for word.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mesa_fast.kernels as nk
from mesa_fast import ops as F
from mesa_fast.kernels.plain import attention_linear as plain_linear
from mesa_fast.kernels.plain import attention_softmax as plain_softmax
from mesa_fast.kernels.plain import mesa as plain_mesa
from mesa_fast.runtime import tuning
from mesa_ref import ops as R
from mesa_ref.config import ModelConfig
from mesa_ref.model import Transformer as RefTransformer
from mesa_ref.ops import mesa as ref_mesa

pytestmark = pytest.mark.slow        # compiles the plain kernels beside the SIMD ones

ROOT = Path(__file__).resolve().parents[2]

# max|plain - truth| / max|truth|; float32 as in test_fast_ops.TOL / test_fast_mesa.TOL (measured here <= 2e-6)
TOL = {np.float64: dict.fromkeys(("out", "P", "dq", "dk", "dv", "dlam", "dgamma"), 1e-10),
       np.float32: {"out": 1e-5, "P": 1e-5, "dq": 1e-5, "dv": 1e-5, "dk": 2e-5, "dlam": 2e-5, "dgamma": 2e-5}}
SHAPES = [(3, 3, 7, 5, 5), (3, 5, 7, 5, 3), (1, 3, 1, 5, 7)]      # (B, H, T, d, dv): odd sizes, dv != d, T = 1
DTYPES = [np.float64, np.float32]


@pytest.fixture
def plain_kernels(monkeypatch):
    """The plain kernels for every family, as MESA_FAST_KERNELS=plain selects them at import."""
    monkeypatch.setattr(nk, "_choice", "plain")
    assert [nk.kernel_module(f) for f in ("linear", "softmax", "mesa")] == [plain_linear, plain_softmax, plain_mesa]


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1e-30, np.abs(b).max()))


def check(name, got, truth, dtype):
    assert got.shape == truth.shape and got.dtype == np.dtype(dtype), (name, got.shape, got.dtype)
    err = rel(got, truth)
    assert err <= TOL[dtype][name], f"{name} ({np.dtype(dtype).name}): rel error {err:.2e} > {TOL[dtype][name]:.0e}"


def draw(shape, dtype, seed):
    B, H, T, d, dv = shape
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((B, H, T, w)).astype(dtype) for w in (d, d, dv, dv)]


def ids(s):
    return "B{}-H{}-T{}-d{}-dv{}".format(*s)


# ---------------------------------------------------------------------------------------------- attention
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=ids)
@pytest.mark.parametrize("kind", ["linear_attention", "softmax_attention"])
def test_attention_matches_reference(plain_kernels, kind, shape, dtype):
    q, k, v, dout = draw(shape, dtype, seed=sum(shape))
    if kind == "softmax_attention":
        q, k = 2 * q, 2 * k                                   # peaked rows as well as flat ones
    out, cache = getattr(F, kind + "_forward")(q, k, v)
    grads = getattr(F, kind + "_backward")(dout, cache)
    t_out, t_cache = getattr(R, kind + "_forward")(*(a.astype(np.float64) for a in (q, k, v)))
    t_grads = getattr(R, kind + "_backward")(dout.astype(np.float64), t_cache)
    check("out", out, t_out, dtype)
    if kind == "softmax_attention":
        assert cache.lanes.shape == t_cache.P.shape           # the plain kernels' map, not the SIMD lanes
        check("P", cache.P, t_cache.P, dtype)
    for name, g, t in zip(("dq", "dk", "dv"), grads, t_grads):
        check(name, g, t, dtype)


@pytest.mark.parametrize("kind", ["linear", "softmax"])
def test_attention_kernels_read_views_as_copies(kind):
    """The model's q, k, v are strided views of one fused buffer: same numbers as from contiguous copies."""
    B, H, T, d = 3, 3, 7, 5
    rng = np.random.default_rng(1)
    q, k, v = F.split_qkv(rng.standard_normal((B, T, 3 * H * d)), H)
    dout = F.split_heads(rng.standard_normal((B, T, H * d)), H)
    module = {"linear": plain_linear, "softmax": plain_softmax}[kind]
    fwd, bwd = getattr(module, kind + "_forward"), getattr(module, kind + "_backward")
    extra = (0.5,) if kind == "softmax" else ()
    res = fwd(q, k, v, *extra)
    res_c = fwd(*(np.ascontiguousarray(a) for a in (q, k, v)), *extra)
    np.testing.assert_array_equal(res[0], res_c[0])
    cache = (res[1],) if kind == "softmax" else ()
    g, ok = bwd(q, k, v, *cache, *extra, dout)
    g_c, ok_c = bwd(*(np.ascontiguousarray(a) for a in (q, k, v)), *cache, *extra, np.ascontiguousarray(dout))
    assert ok and ok_c and res[-1] and res_c[-1]
    for a, b in zip(g, g_c):
        np.testing.assert_array_equal(a, b)


def _message(fn, *args, **kw):
    with pytest.raises(ValueError) as e:
        fn(*args, **kw)
    return str(e.value)


@pytest.mark.parametrize("kind", ["linear_attention", "softmax_attention"])
def test_attention_nan_inf_raise_the_reference_error(plain_kernels, kind):
    q, k, v, dout = draw((3, 3, 7, 5, 5), np.float32, seed=5)
    fwd = (getattr(F, kind + "_forward"), getattr(R, kind + "_forward"))
    bwd = (getattr(F, kind + "_backward"), getattr(R, kind + "_backward"))
    for pos, bad in ((0, np.nan), (1, np.inf), (2, -np.inf)):   # one bad value in q, in k, in v
        args = [q, k, v]
        args[pos] = args[pos].copy()
        args[pos][2, 1, 6, 4] = bad
        assert _message(fwd[0], *args) == _message(fwd[1], *args)
    (_, fc), (_, rc) = fwd[0](q, k, v), fwd[1](q, k, v)
    bad_dout = dout.copy()
    bad_dout[1, 2, 3, 0] = np.nan
    assert _message(bwd[0], bad_dout, fc) == _message(bwd[1], bad_dout, rc)


# ---------------------------------------------------------------------------------------------- mesa layer
def _mesa_inputs(shape, seed, gamma):
    B, H, T, d, dv = shape
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, T, d))
    k = rng.standard_normal((B, H, T, d)) / np.sqrt(d)          # k.k ~ 1
    v = rng.standard_normal((B, H, T, dv))
    g = rng.standard_normal((B, H, T, dv))
    lam = rng.uniform(0.5, 2.0, H)
    gam = rng.uniform(0.7, 1.0, H) if gamma else None
    return q, k, v, g, lam, gam


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("gamma", [False, True], ids=["nogamma", "gamma"])
@pytest.mark.parametrize("shape", SHAPES[:2], ids=ids)
def test_mesa_matches_reference(plain_kernels, shape, gamma, dtype):
    q, k, v, g, lam, gam = _mesa_inputs(shape, seed=len(shape) + gamma, gamma=gamma)
    t_out, t_cache = ref_mesa.mesa_forward(q, k, v, lam, gamma=gam)
    truth = (t_out,) + tuple(ref_mesa.mesa_backward(g, t_cache))
    cast = [None if x is None else x.astype(dtype) for x in (q, k, v, g, lam, gam)]
    results = {}
    for backward in ("store", "checkpoint"):
        out, cache = F.mesa_forward(*cast[:3], cast[4], gamma=cast[5], backward=backward)
        assert cache.qt_raw.shape == q.shape                   # the plain kernels' layout, not the SIMD lanes
        got = (out,) + tuple(F.mesa_backward(cast[3], cache))
        assert len(got) == (6 if gamma else 5)
        for name, a, t in zip(("out", "dq", "dk", "dv", "dlam", "dgamma"), got, truth):
            check(name, a, t, dtype)
        check("out", cache.qt, t_cache.qt, dtype)              # q~_t, as the analyses read it
        results[backward] = got
    for a, b in zip(results["store"], results["checkpoint"]):   # both rebuild R_t as the forward did
        np.testing.assert_array_equal(a, b)


def test_mesa_nan_inf_raise_the_reference_error(plain_kernels):
    q, k, v, g, lam, gam = _mesa_inputs((3, 3, 7, 5, 4), seed=9, gamma=True)
    for pos, bad in ((0, np.nan), (1, np.inf), (2, np.nan)):
        args = [q, k, v]
        args[pos] = args[pos].copy()
        args[pos][1, 2, 5, 3] = bad
        assert _message(F.mesa_forward, *args, lam, gamma=gam) == \
            _message(ref_mesa.mesa_forward, *args, lam, gamma=gam)
    (_, fc), (_, rc) = F.mesa_forward(q, k, v, lam, gamma=gam), ref_mesa.mesa_forward(q, k, v, lam, gamma=gam)
    bad_g = g.copy()
    bad_g[0, 0, 0, 0] = np.inf
    assert _message(F.mesa_backward, bad_g, fc) == _message(ref_mesa.mesa_backward, bad_g, rc)


# ---------------------------------------------------------------------------------------------- whole model
def test_whole_model_float64_matches_reference(plain_kernels):
    """A linear, a softmax and a mesa layer in one model (views of the fused QKV buffer, the merged output
    layouts): loss and every gradient as the reference's."""
    cfg = ModelConfig(layers=("linear", "softmax", "mesa"), input="embed", input_dim=5, output_dim=3, width=15,
                      heads=3, key_size=5)
    ref = RefTransformer(cfg)
    fast = RefTransformer(cfg, ops=F)
    p = ref.init(3, dtype=np.float64)
    for name, w in p.items():                                   # weights of order 1/sqrt(fan-in)
        if w.ndim == 2:
            p[name] = w / (cfg.init_std * np.sqrt(w.shape[0]))
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((3, 7, cfg.input_dim)), rng.standard_normal((3, 7, cfg.output_dim))
    L_f, g_f = fast.loss_and_grads(p, x, y)
    L_r, g_r = ref.loss_and_grads(p, x, y)
    assert abs(L_f - L_r) <= 1e-10 * abs(L_r)
    for name in g_r:
        assert rel(g_f[name], g_r[name]) <= 1e-10, name


# ---------------------------------------------------------------------------------------------- the switch
def test_switch_reads_the_environment_once_and_rejects_other_values(monkeypatch):
    code = "import mesa_fast.kernels as nk; print(*(nk.kernel_module(f).__name__ for f in ('linear', 'mesa')))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, MESA_FAST_KERNELS="plain"))
    assert r.stdout.split() == ["mesa_fast.kernels.plain.attention_linear", "mesa_fast.kernels.plain.mesa"], \
        r.stderr[-2000:]
    monkeypatch.setattr(nk, "_choice", "simd")
    assert nk.kernel_module("softmax").__name__ == "mesa_fast.kernels.simd.attention_softmax"
    monkeypatch.setattr(nk, "_choice", "")                      # unset: tuning.DEFAULT_KERNELS decides, per family
    monkeypatch.setitem(tuning.DEFAULT_KERNELS, "mesa", "plain")
    monkeypatch.setitem(tuning.DEFAULT_KERNELS, "linear", "simd")
    assert nk.kernel_module("mesa") is plain_mesa
    assert nk.kernel_module("linear").__name__ == "mesa_fast.kernels.simd.attention_linear"
    monkeypatch.setattr(nk, "_choice", "fast")
    with pytest.raises(ValueError, match="MESA_FAST_KERNELS: expected one of"):
        nk.kernel_module("linear")
