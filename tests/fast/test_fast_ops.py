"""mesa_fast's attention / dense / clip ops and the whole fast model against the NumPy reference.

Truth is the float64 reference (mesa_ref.ops, mesa_ref.model). The fast ops run in float64
(agreement to ~1e-10) and in float32 (compared with the float64 truth on the same float32-rounded
inputs, through the tolerance table TOL). Errors are ``rel_error``-style: max|a - b| / max|b|.
Also: non-contiguous and read-only inputs, a partial 8-lane group, validation parity (the same
ValueError messages as the reference), the reference-cache fallback, and the training CLI.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mesa_fast import ops as F
from mesa_fast.model import Transformer as FastTransformer
from mesa_fast.runtime import tuning
from mesa_ref import ops as R
from mesa_ref.config import ModelConfig
from mesa_ref.model import Transformer as RefTransformer

ROOT = Path(__file__).resolve().parents[2]

# Tolerance on max|fast - truth| / max|truth|, truth = the float64 reference on the same inputs.
TOL = {
    **{(np.float64, n): 1e-10 for n in ("out", "P", "dq", "dk", "dv", "y", "dx", "dW", "db")},  # measured <= 2e-15
    (np.float32, "out"): 1e-5,    # attention: sums of <= T d products; measured <= 2e-7
    (np.float32, "P"): 1e-5,      # softmax attention map: measured <= 2e-7
    (np.float32, "dq"): 1e-5,
    (np.float32, "dk"): 1e-5,
    (np.float32, "dv"): 1e-5,
    (np.float32, "y"): 1e-5,      # dense: measured <= 5e-7
    (np.float32, "dx"): 1e-5,
    (np.float32, "dW"): 1e-5,     # dW sums N = B*T products: measured <= 1e-6 at N = 441
    (np.float32, "db"): 1e-5,
    **{(np.float64, n): 1e-10 for n in ("ln.y", "ln.dx", "ln.dw", "ln.db", "gelu.y", "gelu.dx")},
    (np.float32, "ln.y"): 1e-5,   # measured <= 1e-7
    (np.float32, "ln.dx"): 1e-5,
    (np.float32, "ln.dw"): 1e-5,  # sums over B*T rows (float64 accumulators in the fast kernel)
    (np.float32, "ln.db"): 1e-5,
    (np.float32, "gelu.y"): 1e-5,   # tanh through exp: measured <= 4e-8
    (np.float32, "gelu.dx"): 1e-5,  # measured <= 7e-7
}
# Whole model, float64: the same ops in another order through 2 layers -> still ~1e-12.
MODEL_TOL64 = 1e-10


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1e-30, np.abs(b).max())) if b.size else 0.0


def assert_close(name, fast, truth, dtype):
    assert fast.shape == truth.shape, (name, fast.shape, truth.shape)
    assert fast.dtype == np.dtype(dtype), (name, fast.dtype, dtype)
    err, tol = rel(fast, truth), TOL[(dtype, name)]
    assert err <= tol, (f"{name} ({np.dtype(dtype).name}): rel error {err:.2e} > {tol:.0e} "
                        f"({100 * err / tol:.0f}% of tol)")


def qkv(rng, B, H, T, d, dv, dtype, layout="c"):
    """q, k (B,H,T,d), v, dout (B,H,T,dv); layout "c" (contiguous), "merged" ((B,T,H,w) transposed
    views, as a model could pass them), "strided" (every other time step of a longer array) or
    "readonly"."""
    def draw(w):
        if layout == "merged":
            return rng.standard_normal((B, T, H, w)).astype(dtype).transpose(0, 2, 1, 3)
        if layout == "strided":
            return rng.standard_normal((B, H, 2 * T, w)).astype(dtype)[:, :, ::2]
        a = rng.standard_normal((B, H, T, w)).astype(dtype)
        if layout == "readonly":
            a.flags.writeable = False
        return a
    return draw(d), draw(d), draw(dv), draw(dv)


SHAPES = [  # (B, H, T, d, dv)
    (2, 3, 1, 3, 3),      # T = 1
    (2, 2, 7, 3, 5),      # dv != d, d = 3 (no full block of 4 rows)
    (1, 2, 63, 4, 4),     # odd T, a partial lane group (N = 2 < 8)
    (3, 3, 7, 6, 9),      # N = 9: one full mesa group of 8 + a partial one; d, dv not multiples of 4
    (5, 4, 11, 12, 20),   # N = 20: one full attention group of 16 (register-transpose gathers, overlapping
                          # blocks for d = 12) + a partial one
    (2, 4, 50, 20, 20),   # the paper's head size
]


def _ids(s):
    return "B{}-H{}-T{}-d{}-dv{}".format(*s)


KINDS = ("linear_attention", "softmax_attention")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
@pytest.mark.parametrize("kind", KINDS)
def test_attention_matches_reference(kind, shape, dtype):
    rng = np.random.default_rng(sum(shape))
    q, k, v, dout = qkv(rng, *shape, dtype)
    if kind == "softmax_attention":
        q, k = 2 * q, 2 * k                              # peaked attention rows too, not only flat ones
    fwd, bwd = getattr(F, kind + "_forward"), getattr(F, kind + "_backward")
    out, cache = fwd(q, k, v)
    grads = bwd(dout, cache)
    t_out, t_cache = getattr(R, kind + "_forward")(*(a.astype(np.float64) for a in (q, k, v)))
    t_grads = getattr(R, kind + "_backward")(dout.astype(np.float64), t_cache)
    assert_close("out", out, t_out, dtype)
    if kind == "softmax_attention":
        assert_close("P", cache.P, t_cache.P, dtype)   # the attention map analyses read from the cache
    for name, g, t in zip(("dq", "dk", "dv"), grads, t_grads):
        assert_close(name, g, t, dtype)


@pytest.mark.parametrize("layout", ["merged", "strided", "readonly"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", KINDS)
def test_attention_any_layout(kind, layout, dtype):
    rng = np.random.default_rng(7)
    q, k, v, dout = qkv(rng, 3, 3, 7, 6, 5, dtype, layout)
    fwd, bwd = getattr(F, kind + "_forward"), getattr(F, kind + "_backward")
    out, cache = fwd(q, k, v)
    grads = bwd(dout, cache)
    c = [np.array(a) for a in (q, k, v, dout)]           # contiguous, writeable copies
    out_c, cache_c = fwd(*c[:3])
    np.testing.assert_array_equal(out, out_c)            # same arithmetic whatever the layout
    for g, gc in zip(grads, bwd(c[3], cache_c)):
        np.testing.assert_array_equal(g, gc)


def test_linear_attention_lanes_are_independent():
    """A sequence's result does not depend on which lane group it lands in or on its neighbours."""
    rng = np.random.default_rng(3)
    q, k, v, dout = qkv(rng, 7, 3, 9, 4, 6, np.float32)
    out, cache = F.linear_attention_forward(q, k, v)
    grads = F.linear_attention_backward(dout, cache)
    b = 5                                                # sequences 15-17: both sides of a 16-lane group boundary
    out1, cache1 = F.linear_attention_forward(q[b:b + 1], k[b:b + 1], v[b:b + 1])
    grads1 = F.linear_attention_backward(dout[b:b + 1], cache1)
    np.testing.assert_array_equal(out[b:b + 1], out1)
    for g, g1 in zip(grads, grads1):
        np.testing.assert_array_equal(g[b:b + 1], g1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", ["3d-bias", "2d-nobias", "noncontig", "tiny", "row-split", "row-split-small",
                                  "narrow-dy", "narrow-dx", "narrow-y"])
def test_dense_matches_reference(case, dtype, monkeypatch):
    """Including products split by rows over the thread pool (mesa_fast/ops/dense.py): 2103 rows with the default
    DENSE_MIN_ROWS, and 7 rows with DENSE_MIN_ROWS = 1 (uneven pieces); "narrow-dy": x^T dy through gemm.atb_rows
    (float32, 80 -> 37 columns) in uneven row ranges; "narrow-dx": dx = dy W^T through gemm.ab_rows (float32,
    130 -> 40 columns); "narrow-y": y = x W through gemm.ab_rows (float32, 80 -> 40)."""
    rng = np.random.default_rng(11)
    if case == "narrow-y":
        monkeypatch.setattr(tuning, "DENSE_MIN_ROWS", 100)
        x, W, b = rng.standard_normal((3, 301, 80)), rng.standard_normal((80, 40)), rng.standard_normal(40)
    elif case == "narrow-dx":
        monkeypatch.setattr(tuning, "DENSE_MIN_ROWS", 100)
        x, W, b = rng.standard_normal((3, 301, 40)), rng.standard_normal((40, 130)), rng.standard_normal(130)
    elif case == "narrow-dy":
        monkeypatch.setattr(tuning, "DENSE_MIN_ROWS", 100)
        x, W, b = rng.standard_normal((3, 301, 80)), rng.standard_normal((80, 37)), rng.standard_normal(37)
    elif case == "row-split":
        x, W, b = rng.standard_normal((3, 701, 9)), rng.standard_normal((9, 13)), rng.standard_normal(13)
    elif case == "row-split-small":
        monkeypatch.setattr(tuning, "DENSE_MIN_ROWS", 1)
        x, W, b = rng.standard_normal((7, 4)), rng.standard_normal((4, 5)), None
    elif case == "3d-bias":
        x, W, b = rng.standard_normal((9, 49, 12)), rng.standard_normal((12, 7)), rng.standard_normal(7)
    elif case == "2d-nobias":
        x, W, b = rng.standard_normal((600, 5)), rng.standard_normal((5, 3)), None
    elif case == "noncontig":
        x, W, b = rng.standard_normal((7, 12, 40)).transpose(1, 0, 2)[:, ::2], rng.standard_normal((40, 8)), None
    else:
        x, W, b = rng.standard_normal((1, 1, 3)), rng.standard_normal((3, 2)), rng.standard_normal(2)
    x, W = x.astype(dtype), W.astype(dtype)
    b = None if b is None else b.astype(dtype)
    y, cache = F.dense_forward(x, W, b)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dW, db = F.dense_backward(dy, cache)
    f64 = (lambda a: None if a is None else a.astype(np.float64))
    ty, tcache = R.dense_forward(f64(x), f64(W), f64(b))
    tdx, tdW, tdb = R.dense_backward(f64(dy), tcache)
    assert_close("y", y, ty, dtype)
    assert_close("dx", dx, tdx, dtype)
    assert_close("dW", dW, tdW, dtype)
    if b is None:
        assert db is None
    else:
        assert_close("db", db, tdb, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 7, 40), (9, 13)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("contiguous", [True, False], ids=["c", "nc"])
def test_layernorm_and_gelu_match_reference(shape, dtype, contiguous):
    rng = np.random.default_rng(len(shape) + shape[-1])
    x = (3 * rng.standard_normal(shape[::-1])).astype(dtype).T if not contiguous else \
        (3 * rng.standard_normal(shape)).astype(dtype)
    D = x.shape[-1]
    w, b = rng.standard_normal(D).astype(dtype), rng.standard_normal(D).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    f64 = (lambda a: a.astype(np.float64))
    y, cache = F.layernorm_forward(x, w, b)
    grads = F.layernorm_backward(dy, cache)
    ty, tcache = R.layernorm_forward(f64(x), f64(w), f64(b))
    tgrads = R.layernorm_backward(f64(dy), tcache)
    assert_close("ln.y", y, ty, dtype)
    for name, g, t in zip(("ln.dx", "ln.dw", "ln.db"), grads, tgrads):
        assert_close(name, g, t, dtype)
    y, cache = F.gelu_forward(x)
    assert_close("gelu.y", y, R.gelu_forward(f64(x))[0], dtype)
    assert_close("gelu.dx", F.gelu_backward(dy, cache), R.gelu_backward(f64(dy), R.gelu_forward(f64(x))[1]), dtype)


@pytest.mark.parametrize("split", [False, True], ids=["one-range", "split"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_clip_matches_reference_exactly(dtype, split, monkeypatch):
    """Also split over the thread pool in uneven ranges (CLIP_MIN_CHUNK = 7)."""
    if split:
        monkeypatch.setattr(tuning, "CLIP_MIN_CHUNK", 7)
    rng = np.random.default_rng(5)
    x = (2 * rng.standard_normal((4, 7, 9))).astype(dtype)
    x[0, 0, :3] = [1.5, -1.5, 0.0]                      # on the band's edges: no gradient there
    x = x.transpose(1, 0, 2)                            # non-contiguous
    y, cache = F.clip_forward(x, c=1.5)
    ty, tcache = R.clip_forward(x, c=1.5)
    np.testing.assert_array_equal(y, ty)
    assert y.dtype == x.dtype
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx = F.clip_backward(dy, cache)
    np.testing.assert_array_equal(dx, R.clip_backward(dy, tcache))
    assert dx.dtype == dtype


# ------------------------------------------------------------------------------- validation parity
def _message(fn, *args, **kw):
    with pytest.raises(ValueError) as e:
        fn(*args, **kw)
    return str(e.value)


def test_validation_matches_reference():
    rng = np.random.default_rng(0)
    q, k, v, dout = qkv(rng, 2, 2, 5, 3, 3, np.float32)
    bad_q = q.copy()
    bad_q[0, 0, 0, 0] = np.nan
    cases = [
        ("linear_attention_forward", (bad_q, k, v), {}),
        ("linear_attention_forward", (q, k[..., :2], v), {}),
        ("linear_attention_forward", (q, k, v.astype(np.float64)), {}),
        ("linear_attention_forward", (q[0], k, v), {}),
        ("softmax_attention_forward", (bad_q, k, v), {}),
        ("softmax_attention_forward", (q, k, v), {"scale": -1.0}),
        ("softmax_attention_forward", (q, k, v), {"scale": float("inf")}),
        ("dense_forward", (q, np.ones((2, 4), np.float32)), {}),
        ("dense_forward", (q, np.ones((3, 4), np.float64)), {}),
        ("dense_forward", (q, np.ones((3, 4), np.float32), np.ones(5, np.float32)), {}),
        ("dense_forward", (bad_q, np.ones((3, 4), np.float32)), {}),
        ("layernorm_forward", (q, np.ones(3, np.float32), np.ones(2, np.float32)), {}),
        ("layernorm_forward", (bad_q, np.ones(3, np.float32), np.ones(3, np.float32)), {}),
        ("layernorm_forward", (q, np.ones(3, np.float32), np.ones(3, np.float32)), {"eps": 0.0}),
        ("layernorm_forward", (q, np.ones(3, np.float64), np.ones(3, np.float32)), {}),
        ("gelu_forward", (bad_q,), {}),
        ("gelu_forward", (q.astype(np.int64),), {}),
        ("clip_forward", (q,), {"c": -1.0}),
        ("clip_forward", (bad_q,), {"c": 1.0}),
        ("clip_forward", (q.astype(np.int32),), {"c": 1.0}),
    ]
    for name, args, kw in cases:
        assert _message(getattr(F, name), *args, **kw) == _message(getattr(R, name), *args, **kw), name
    # backward: dout of the wrong shape / dtype / with a NaN
    _, fc = F.linear_attention_forward(q, k, v)
    _, rc = R.linear_attention_forward(q, k, v)
    for bad in (dout[..., :2], dout.astype(np.float64), bad_q):
        assert _message(F.linear_attention_backward, bad, fc) == _message(R.linear_attention_backward, bad, rc)
    _, fc = F.softmax_attention_forward(q, k, v)
    _, rc = R.softmax_attention_forward(q, k, v)
    for bad in (dout[..., :2], dout.astype(np.float64), bad_q):
        assert _message(F.softmax_attention_backward, bad, fc) == _message(R.softmax_attention_backward, bad, rc)
    _, fc = F.dense_forward(q, np.ones((3, 4), np.float32))
    _, rc = R.dense_forward(q, np.ones((3, 4), np.float32))
    assert _message(F.dense_backward, dout, fc) == _message(R.dense_backward, dout, rc)
    _, fc = F.gelu_forward(q)
    _, rc = R.gelu_forward(q)
    assert _message(F.gelu_backward, dout[..., :2], fc) == _message(R.gelu_backward, dout[..., :2], rc)
    w1 = np.ones(3, np.float32)
    _, fc = F.layernorm_forward(q, w1, w1)
    _, rc = R.layernorm_forward(q, w1, w1)
    assert _message(F.layernorm_backward, dout.astype(np.float64), fc) == \
        _message(R.layernorm_backward, dout.astype(np.float64), rc)
    _, fc = F.clip_forward(q, c=1.0)
    _, rc = R.clip_forward(q, c=1.0)
    assert _message(F.clip_backward, dout[..., :2], fc) == _message(R.clip_backward, dout[..., :2], rc)


def test_reference_cache_goes_to_reference_backward():
    """A cache made by the reference (what a CuPy call returns) is handed to the reference backward."""
    rng = np.random.default_rng(1)
    q, k, v, dout = qkv(rng, 2, 2, 5, 3, 4, np.float64)
    _, rc = R.linear_attention_forward(q, k, v)
    for g, t in zip(F.linear_attention_backward(dout, rc), R.linear_attention_backward(dout, rc)):
        np.testing.assert_array_equal(g, t)
    _, rc = R.clip_forward(q, c=0.5)
    np.testing.assert_array_equal(F.clip_backward(dout[..., :3], rc), R.clip_backward(dout[..., :3], rc))
    _, rc = R.softmax_attention_forward(q, k, v)
    for g, t in zip(F.softmax_attention_backward(dout, rc), R.softmax_attention_backward(dout, rc)):
        np.testing.assert_array_equal(g, t)


# ------------------------------------------------------------------------------- whole model
def _model_cases():
    yield "linear-default", ModelConfig()
    yield "softmax", ModelConfig(layers=("softmax",))
    yield "mesa", ModelConfig(layers=("mesa",))
    yield "hybrid-mlp-ln", ModelConfig(layers=("linear", "softmax", "mesa"), mlp=True, layernorm=True)
    yield "embed-posenc", ModelConfig(layers=("linear",), input="embed", mlp=True, layernorm=True, pos_enc=True,
                                      output_dim=3, input_dim=5, width=16, heads=2, key_size=8)
    yield "tokens", ModelConfig(layers=("linear", "linear"), input="tokens", input_dim=11, output_dim=11,
                                width=12, heads=3, key_size=4, mlp=True)
    yield "hybrid-first-nobias", ModelConfig(layers=("softmax", "softmax", "softmax"), input="embed", clip=None,
                                             pos_enc_kq=True, io_bias=False, output_dim=5, input_dim=5, width=14,
                                             heads=3, key_size=5)
    # unit_norm (unit-norm q, k and/or v), odd sizes
    yield "unitnorm-qk-linear", ModelConfig(layers=("linear", "linear"), input="embed", input_dim=3, output_dim=3,
                                            width=13, heads=3, key_size=5, unit_norm=("q", "k"))
    yield "unitnorm-kv-softmax-mlp-ln", ModelConfig(layers=("softmax",), input="embed", input_dim=3, output_dim=3,
                                                    width=11, heads=3, key_size=7, mlp=True, layernorm=True, clip=None,
                                                    unit_norm=("k", "v"))
    yield "unitnorm-qkv-mesa-gamma", ModelConfig(layers=("mesa",), input="embed", input_dim=5, output_dim=5, width=9,
                                                 heads=2, key_size=5, mesa_gamma=True, unit_norm=("q", "k", "v"))
    yield "unitnorm-qv-hybrid-first", ModelConfig(layers=("softmax", "mesa"), input="embed", input_dim=5, output_dim=5,
                                                  width=7, heads=3, key_size=3, clip=None, pos_enc_kq=True,
                                                  unit_norm=("q", "v"))


def _batch(cfg, rng, dtype, B=3, T=9):
    if cfg.input == "tokens":
        return rng.integers(0, cfg.input_dim, (B, T)), rng.integers(0, cfg.output_dim, (B, T))
    n_in = cfg.width if cfg.input == "constructed" else cfg.input_dim
    return (rng.standard_normal((B, T, n_in)).astype(dtype),
            rng.standard_normal((B, T, cfg.output_dim)).astype(dtype))


def _scaled_params(model, dtype):
    """Weights of order 1/sqrt(fan-in) rather than the authors' 2e-4, so that every path matters
    and some activations hit the clipping bound."""
    p = model.init(3, dtype=dtype)
    for k, v in p.items():
        if v.ndim == 2:
            p[k] = (v * dtype(1.0 / (model.config.init_std * np.sqrt(v.shape[0])))).astype(dtype)
    return p


def _fast_is_reference(name):
    return getattr(F, name) is getattr(R, name)


# B = 67 (x T = 16) is split into one shard per thread by the fast batch_map (at least 512 positions per shard;
# 33 + 34 samples on 2 threads), B = 3 is not
@pytest.mark.parametrize("B", [3, 67])
@pytest.mark.parametrize("case", [c[0] for c in _model_cases()])
def test_whole_model_float64_matches_reference(case, B):
    cfg = dict(_model_cases())[case]
    if "mesa" in cfg.layers and _fast_is_reference("mesa_forward"):
        pytest.skip("mesa_fast.ops.mesa_forward is the reference's (no fast mesa kernel registered)")
    rng = np.random.default_rng(2)
    fast, ref = FastTransformer(cfg), RefTransformer(cfg)
    assert fast.ops is F
    p = _scaled_params(ref, np.float64)
    x, y = _batch(cfg, rng, np.float64, B=B, T=9 if B < 10 else 16)
    import numba
    assert len(F.batch_map(lambda lo, hi: 0, x)) == (2 if B > 10 and numba.get_num_threads() > 1 else 1)
    L_f, g_f = fast.loss_and_grads(p, x, y)
    L_r, g_r = ref.loss_and_grads(p, x, y)
    assert abs(L_f - L_r) <= MODEL_TOL64 * abs(L_r)
    assert set(g_f) == set(g_r)
    for k in g_r:
        assert g_f[k].dtype == np.float64
        assert rel(g_f[k], g_r[k]) <= MODEL_TOL64, (k, rel(g_f[k], g_r[k]))


@pytest.mark.parametrize("B", [3, 67])
@pytest.mark.parametrize("case", [c[0] for c in _model_cases()])
def test_whole_model_float32_as_accurate_as_reference(case, B):
    """Float32 through both backends, float64 reference as truth: the fast backend's error is at most
    a small multiple of the reference's own float32 error (plus 1e-5 relative: rounding of the sums)."""
    cfg = dict(_model_cases())[case]
    if "mesa" in cfg.layers and _fast_is_reference("mesa_forward"):
        pytest.skip("mesa_fast.ops.mesa_forward is the reference's (no fast mesa kernel registered)")
    rng = np.random.default_rng(4)
    fast, ref = FastTransformer(cfg), RefTransformer(cfg)
    p32 = _scaled_params(ref, np.float32)
    p64 = {k: v.astype(np.float64) for k, v in p32.items()}
    x32, y32 = _batch(cfg, rng, np.float32, B=B, T=9 if B < 10 else 16)
    x64 = x32 if cfg.input == "tokens" else x32.astype(np.float64)
    y64 = y32 if cfg.input == "tokens" else y32.astype(np.float64)
    L_t, g_t = ref.loss_and_grads(p64, x64, y64)
    L_f, g_f = fast.loss_and_grads(p32, x32, y32)
    L_r, g_r = ref.loss_and_grads(p32, x32, y32)
    assert abs(L_f - L_t) <= 4 * abs(L_r - L_t) + 1e-5 * abs(L_t)
    for k in g_t:
        assert g_f[k].dtype == np.float32
        e_f, e_r = rel(g_f[k], g_t[k]), rel(g_r[k], g_t[k])
        assert e_f <= 4 * e_r + 1e-5, (k, e_f, e_r)


# ------------------------------------------------------------------------------- command line
def test_fast_train_cli_runs(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "mesa_fast.train", "--steps", "3", "--batch", "8", "--eval-every", "1",
                        "--no-progress", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "test loss" in r.stdout
    assert (out / "metrics.json").exists() and (out / "checkpoint.npz").exists()


def test_numba_cache_guard_drops_kernels_compiled_from_other_sources(tmp_path, monkeypatch):
    """Numba checks only the defining file's timestamp; the kernels' guard drops every cached kernel, in every
    folder below mesa_fast/kernels, when any kernel source (the inlined simd/lanevec.py included) or the tuning
    constants the kernels compile in (runtime/tuning.py) changed, and keeps them while nothing did."""
    import shutil

    import mesa_fast.kernels as nk_pkg
    from mesa_fast.runtime import tuning as tuning_module
    src = tmp_path / "kernels"
    (src / "simd").mkdir(parents=True)
    for f in ("lanevec.py", "mesa.py"):
        shutil.copy(Path(nk_pkg.__file__).parent / "simd" / f, src / "simd" / f)
    tuning_copy = tmp_path / "tuning.py"
    shutil.copy(tuning_module.__file__, tuning_copy)
    cache = src / "__pycache__"
    cache.mkdir()
    sub_cache = src / "simd" / "__pycache__"
    sub_cache.mkdir()
    monkeypatch.setattr(nk_pkg, "_HERE", src)
    monkeypatch.setattr(nk_pkg, "_EXTRA_SOURCES", (tuning_copy,))

    def cached():
        return sorted(p.name for d in (cache, sub_cache) for p in d.iterdir() if p.suffix in (".nbi", ".nbc"))

    for name in ("mesa.kernel-1.py311.nbi", "mesa.kernel-1.py311.1.nbc"):
        (sub_cache / name).write_text("old")
    nk_pkg._drop_stale_cache()                       # no record yet: whatever is cached is of unknown origin
    assert cached() == []
    (sub_cache / "mesa.kernel-1.py311.nbi").write_text("new")
    nk_pkg._drop_stale_cache()                       # sources unchanged: the cache stays
    assert cached() == ["mesa.kernel-1.py311.nbi"]
    (src / "simd" / "lanevec.py").write_text((src / "simd" / "lanevec.py").read_text() + "\n# edited\n")
    nk_pkg._drop_stale_cache()                       # an inlined file changed: the cache goes
    assert cached() == []
    (sub_cache / "mesa.kernel-1.py311.nbi").write_text("new")
    nk_pkg._drop_stale_cache()
    assert cached() == ["mesa.kernel-1.py311.nbi"]
    tuning_copy.write_text(tuning_copy.read_text() + "\n# edited\n")
    nk_pkg._drop_stale_cache()                       # a tuning constant changed: the cache goes too
    assert cached() == []
    assert (cache / nk_pkg._STAMP).read_text().strip() == nk_pkg._sources_digest()


# ------------------------------------------------------------------------------- lane-vector exp, GELU, LayerNorm
def test_vector_exp_within_two_ulp_over_the_whole_range():
    """lanevec.vexp (the exp of the softmax and GELU kernels) against float64 exp: within 2 ulp of every result in
    the normal range, exact specials (0, inf, NaN), 0 or the right subnormal below the normal range."""
    from numba import njit

    from mesa_fast.kernels.simd.lanevec import WIDE, vexp, vstore, wload

    @njit
    def vexp_all(x, y):
        for i in range(0, x.shape[0], WIDE):
            vstore(y, i, vexp(wload(x, i)))

    rng = np.random.default_rng(0)
    for dtype, lo, hi in ((np.float32, -110.0, 95.0), (np.float64, -750.0, 715.0)):
        special = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 88.72, 709.78, -87.3, -745.1, -1e4]
        x = np.concatenate([np.linspace(lo, hi, 4000), rng.uniform(-12, 2, 4000), special]).astype(dtype)
        x = np.concatenate([x, np.zeros(-x.size % WIDE, dtype)])
        y = np.empty_like(x)
        vexp_all(x, y)
        with np.errstate(over="ignore", under="ignore"):
            truth = np.exp(x.astype(np.float64))
        fi = np.finfo(dtype)
        normal = np.isfinite(truth) & (truth >= fi.tiny) & (truth <= fi.max)
        ulp = np.abs(y[normal] - truth[normal]) / (truth[normal] * fi.eps)
        assert ulp.max() <= 2.0, (dtype, ulp.max())
        assert np.isnan(y[np.isnan(x)]).all()
        assert (y[x == np.inf] == np.inf).all() and (y[truth > fi.max] == np.inf).all()
        small = truth < fi.tiny
        assert (np.abs(y[small] - truth[small]) <= 2 * fi.smallest_subnormal).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(2, 3, 40), (7, 13), (5, 11, 17), (4, 3, 64), (1, 8)],
                         ids=lambda s: "x".join(map(str, s)))
def test_layernorm_and_gelu_split_over_threads_match_reference(shape, dtype, monkeypatch):
    """Row and element ranges shared out to the pool in small pieces (LAYERNORM_MIN_ROWS = 2, GELU_MIN_CHUNK = 5),
    widths that are not multiples of the 8 / 16 lanes, and the ranges' dw, db partial sums added in order."""
    monkeypatch.setattr(tuning, "LAYERNORM_MIN_ROWS", 2)
    monkeypatch.setattr(tuning, "GELU_MIN_CHUNK", 5)
    rng = np.random.default_rng(shape[-1])
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    D = shape[-1]
    w, b = rng.standard_normal(D).astype(dtype), rng.standard_normal(D).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    f64 = (lambda a: a.astype(np.float64))
    y, cache = F.layernorm_forward(x, w, b)
    ty, tcache = R.layernorm_forward(f64(x), f64(w), f64(b))
    assert_close("ln.y", y, ty, dtype)
    grads, tgrads = F.layernorm_backward(dy, cache), R.layernorm_backward(f64(dy), tcache)
    for name, g, t in zip(("ln.dx", "ln.dw", "ln.db"), grads, tgrads):
        assert_close(name, g, t, dtype)
    y, cache = F.gelu_forward(x)
    ty, tcache = R.gelu_forward(f64(x))
    assert_close("gelu.y", y, ty, dtype)
    assert_close("gelu.dx", F.gelu_backward(dy, cache), R.gelu_backward(f64(dy), tcache), dtype)
    big = np.array([-40.0, -9.0, -1e-20, 0.0, 1e-20, 9.0, 40.0], dtype)       # tanh saturated, and its sign at 0
    np.testing.assert_allclose(F.gelu_forward(big)[0], R.gelu_forward(f64(big))[0], rtol=TOL[(dtype, "gelu.y")],
                               atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("IJ", [(4, 64), (7, 83), (1, 16), (9, 5), (12, 144)], ids=lambda s: "x".join(map(str, s)))
def test_atb_rows_matches_numpy(IJ, dtype):
    """gemm.atb_rows: out += a[lo:hi]^T b[lo:hi] with blocks of 4 x 64, 4 x 16, single rows and single columns, over
    a row range longer than one pass of 256 rows, added to what out held."""
    from mesa_fast.kernels.simd.gemm import atb_rows
    I, J = IJ
    rng = np.random.default_rng(I * J)
    a, b = rng.standard_normal((700, I)).astype(dtype), rng.standard_normal((700, J)).astype(dtype)
    out = rng.standard_normal(I * J).astype(dtype)
    truth = out.astype(np.float64).reshape(I, J) + a[13:611].astype(np.float64).T @ b[13:611].astype(np.float64)
    atb_rows(a.reshape(-1), b.reshape(-1), I, J, 13, 611, out)
    assert rel(out.reshape(I, J), truth) <= (1e-13 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("KI", [(240, 40), (37, 40), (20, 32), (9, 48), (13, 24), (5, 8)],
                         ids=lambda s: "x".join(map(str, s)))
def test_ab_rows_matches_numpy(KI, dtype):
    """gemm.ab_rows: out[lo:hi] = a[lo:hi] b in panels of 40, 32, 16 and 8 columns, 4 rows at a time and the rows
    left over one at a time; rows outside [lo, hi) untouched."""
    from mesa_fast.kernels.simd.gemm import ab_rows
    K, I = KI
    rng = np.random.default_rng(K * I)
    a, b = rng.standard_normal((103, K)).astype(dtype), rng.standard_normal((K, I)).astype(dtype)
    out = np.full((103, I), 7.0, dtype)
    ab_rows(a.reshape(-1), b.reshape(-1), K, I, 5, 98, out.reshape(-1))
    truth = a[5:98].astype(np.float64) @ b.astype(np.float64)
    assert rel(out[5:98], truth) <= (1e-13 if dtype == np.float64 else 1e-5)
    assert (out[:5] == 7.0).all() and (out[98:] == 7.0).all()


# ------------------------------------------------------------------------------- dense + GELU (the MLP's first layer)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", ["mlp", "odd", "nobias", "tiny", "row-blocks", "no-input-grad"])
def test_dense_gelu_matches_reference(case, dtype, monkeypatch):
    """dense_gelu against the reference composition (dense then gelu) in float64: the model's MLP shape, widths that
    are not multiples of 16, no bias, one row, rows in many ranges and blocks (DENSE_MIN_ROWS = 3,
    DENSE_GELU_SUB_ROWS = 2), and input_grad=False."""
    rng = np.random.default_rng(17)
    shape, M, bias = {"mlp": ((8, 50, 40), 160, True), "odd": ((3, 7, 5), 19, True), "nobias": ((600, 9), 13, False),
                      "tiny": ((1, 1, 3), 2, True), "row-blocks": ((5, 9, 6), 21, True),
                      "no-input-grad": ((4, 5, 7), 33, True)}[case]
    if case == "row-blocks":
        monkeypatch.setattr(tuning, "DENSE_MIN_ROWS", 3)
        monkeypatch.setattr(tuning, "DENSE_GELU_SUB_ROWS", 2)
    x = rng.standard_normal(shape).astype(dtype)
    W = (rng.standard_normal((shape[-1], M)) / np.sqrt(shape[-1])).astype(dtype)
    b = rng.standard_normal(M).astype(dtype) if bias else None
    g, cache = F.dense_gelu_forward(x, W, b)
    dg = rng.standard_normal(g.shape).astype(dtype)
    grads = F.dense_gelu_backward(dg, cache, input_grad=case != "no-input-grad")
    f64 = (lambda a: None if a is None else a.astype(np.float64))
    tg, tcache = R.dense_gelu_forward(f64(x), f64(W), f64(b))
    tgrads = R.dense_gelu_backward(f64(dg), tcache)
    assert_close("gelu.y", g, tg, dtype)
    if case == "no-input-grad":
        assert grads[0] is None
    else:
        assert_close("dx", grads[0], tgrads[0], dtype)
    assert_close("dW", grads[1], tgrads[1], dtype)
    if b is None:
        assert grads[2] is None
    else:
        assert_close("db", grads[2], tgrads[2], dtype)


def test_dense_gelu_gradients_by_finite_differences():
    from mesa_ref.gradcheck import numerical_gradient, rel_error
    rng = np.random.default_rng(23)
    x, W, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    dg = rng.standard_normal((2, 3, 5))
    _, cache = F.dense_gelu_forward(x, W, b)
    dx, dW, db = F.dense_gelu_backward(dg, cache)
    for arr, grad in ((x, dx), (W, dW), (b, db)):
        num = numerical_gradient(lambda: F.dense_gelu_forward(x, W, b)[0], arr, dg)
        assert rel_error(grad, num) < 1e-7


def test_dense_gelu_validation_matches_reference():
    rng = np.random.default_rng(2)
    x, W, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    cases = [(x, W[:3], b), (x, W, b[:4]), (x, W.astype(np.float32), b), (x.astype(np.int64), W, b), (x[0, 0], W[0], b)]
    for args in cases:
        assert _message(F.dense_gelu_forward, *args) == _message(R.dense_gelu_forward, *args)
    _, fc = F.dense_gelu_forward(x, W, b)
    _, rc = R.dense_gelu_forward(x, W, b)
    for bad in (np.ones((2, 3, 4)), np.ones((2, 3, 5), np.float32)):
        assert _message(F.dense_gelu_backward, bad, fc) == _message(R.dense_gelu_backward, bad, rc)
