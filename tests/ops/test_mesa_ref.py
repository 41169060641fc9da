"""Tests of the NumPy mesa-layer reference (mesa_ref/ops/mesa.py; docs/math.md [M1]-[M4]).

- forward == independent explicit solve (mesa_direct) at every t, float64 to 1e-10;
- float32 forward runs in float32 and stays close to float64;
- every gradient (dq, dk, dv, dlam, dgamma) == float64 central finite differences, for each of the
  three backward strategies, with and without gamma, small lam, checkpoint_every not dividing T;
- the strategies agree with each other; a scaling identity of the gradients holds;
- each bad input raises ValueError naming the argument.
"""
from __future__ import annotations

import functools
import importlib.util
import pathlib

import numpy as np
import pytest

from mesa_ref.gradcheck import numerical_gradient, rel_error
from mesa_ref.ops.mesa import (
    BACKWARD_STRATEGIES,
    MesaCache,
    mesa_backward,
    mesa_direct,
    mesa_forward,
    validate_mesa_inputs,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def make_inputs(B, H, T, d, dv, *, lam=None, gamma=False, dtype=np.float64, seed=0):
    """Random inputs: q, k ~ N(0, 1/d) per entry (unit-norm-ish keys), v ~ N(0, 1),
    lam ~ U(0.5, 2) unless given, gamma ~ U(0.7, 1) when requested."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, H, T, d)) / np.sqrt(d)
    k = rng.normal(size=(B, H, T, d)) / np.sqrt(d)
    v = rng.normal(size=(B, H, T, dv))
    lam_ = rng.uniform(0.5, 2.0, size=H) if lam is None else np.full(H, float(lam))
    gam = rng.uniform(0.7, 1.0, size=H) if gamma else None
    cast = lambda x: None if x is None else x.astype(dtype)  # noqa: E731
    return cast(q), cast(k), cast(v), cast(lam_), cast(gam)


def case_id(B, H, T, d, dv, dtype=np.float64, **kw):
    s = f"B{B}-H{H}-T{T}-d{d}" + (f"-dv{dv}" if dv != d else "") + f"-f{np.dtype(dtype).itemsize * 8}"
    for key, val in kw.items():
        s += f"-{key}{val}"
    return s


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------

FWD_SHAPES = [(2, 3, 7, 4, 4), (1, 2, 13, 5, 3), (3, 1, 9, 3, 6), (1, 1, 1, 2, 2), (2, 2, 33, 8, 8)]


@pytest.mark.parametrize("gamma", [False, True], ids=["nogamma", "gamma"])
@pytest.mark.parametrize("shape", FWD_SHAPES, ids=[case_id(*s) for s in FWD_SHAPES])
def test_forward_matches_direct_solve(shape, gamma):
    q, k, v, lam, gam = make_inputs(*shape, gamma=gamma, seed=1)
    out, cache = mesa_forward(q, k, v, lam, gamma=gam)
    ref = mesa_direct(q, k, v, lam, gam)
    assert out.shape == shape[:3] + (shape[4],) and out.dtype == np.float64
    assert rel_error(out, ref) < 1e-10
    # q~_t in the cache really is A_t^{-1} q_t, at every t
    B, H, T, d, _ = shape
    g = np.ones(H) if gam is None else gam
    for t in range(1, T + 1):
        w = g[:, None] ** (t - np.arange(1, t + 1))[None, :]
        A = np.einsum("ht,bhti,bhtj->bhij", w, k[:, :, :t], k[:, :, :t]) + (g ** t * lam)[None, :, None, None] * np.eye(d)
        assert rel_error(np.einsum("bhij,bhj->bhi", A, cache.qt[:, :, t - 1]), q[:, :, t - 1]) < 1e-10


def test_forward_small_lam_and_large_lam_match_direct():
    for lam in (1e-3, 1e-2, 10.0):
        q, k, v, lam_, gam = make_inputs(2, 2, 20, 4, 4, lam=lam, gamma=True, seed=2)
        for g in (None, gam):
            out, _ = mesa_forward(q, k, v, lam_, gamma=g)
            assert rel_error(out, mesa_direct(q, k, v, lam_, g)) < 1e-9, (lam, g is None)


@pytest.mark.parametrize("strategy", BACKWARD_STRATEGIES)
def test_gamma_one_is_the_plain_layer(strategy):
    """The [M4] code (its own functions) with gamma = 1 gives the [M2]/[M3] code's numbers bit for bit."""
    q, k, v, lam, _ = make_inputs(2, 3, 11, 4, 4, seed=3)
    out0, c0 = mesa_forward(q, k, v, lam, backward=strategy, checkpoint_every=4)
    out1, c1 = mesa_forward(q, k, v, lam, gamma=np.ones(3), backward=strategy, checkpoint_every=4)
    np.testing.assert_array_equal(out0, out1)       # multiplying by gamma = 1 is exact
    np.testing.assert_array_equal(c0.R_saved, c1.R_saved)
    dout = np.random.default_rng(0).normal(size=out0.shape)
    g0, g1 = mesa_backward(dout, c0), mesa_backward(dout, c1)
    assert len(g0) == 4 and len(g1) == 5
    for a, b in zip(g0, g1[:4]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("gamma", [False, True], ids=["nogamma", "gamma"])
def test_float32_runs_in_float32_and_is_close(gamma):
    shape = (2, 3, 50, 8, 8)
    q, k, v, lam, gam = make_inputs(*shape, gamma=gamma, seed=4)
    f32 = lambda x: None if x is None else x.astype(np.float32)  # noqa: E731
    out64, c64 = mesa_forward(q, k, v, lam, gamma=gam)
    out32, c32 = mesa_forward(f32(q), f32(k), f32(v), f32(lam), gamma=f32(gam))
    assert out32.dtype == np.float32 and c32.qt.dtype == np.float32 and c32.R_saved.dtype == np.float32
    assert c32.lam.dtype == np.float32
    assert rel_error(out32, out64) < 1e-5
    dout = np.random.default_rng(5).normal(size=out64.shape)
    g64 = mesa_backward(dout, c64)
    g32 = mesa_backward(dout.astype(np.float32), c32)
    for name, a, b in zip(["dq", "dk", "dv", "dlam", "dgamma"], g32, g64):
        assert a.dtype == np.float32, name
        assert rel_error(a, b) < 1e-4, name


def test_lam_of_other_float_dtype_is_cast_to_q_dtype():
    q, k, v, lam, gam = make_inputs(1, 2, 5, 3, 3, gamma=True, dtype=np.float32)
    out, cache = mesa_forward(q, k, v, lam.astype(np.float64), gamma=gam.astype(np.float64))
    assert out.dtype == np.float32 and cache.lam.dtype == np.float32 and cache.gamma.dtype == np.float32


# --------------------------------------------------------------------------------------------
# backward: finite differences
# --------------------------------------------------------------------------------------------

# (B, H, T, d, dv, lam, gamma, checkpoint_every)
GRAD_CASES = [
    (2, 3, 7, 4, 4, None, False, 3),
    (2, 3, 7, 4, 4, None, True, 3),
    (1, 2, 9, 3, 5, None, True, 4),      # dv != d, C does not divide T
    (2, 2, 6, 4, 4, 1e-2, False, 4),     # small lam (T > d)
    (1, 2, 5, 4, 4, 1e-2, True, 2),      # small lam, T < d and gamma: R_t has 1/(gamma^t lam) directions
    (1, 1, 8, 3, 3, 5.0, True, 8),       # one block
]
GRAD_IDS = [case_id(B, H, T, d, dv, lam=lam or "U", gamma=int(g), C=C) for B, H, T, d, dv, lam, g, C in GRAD_CASES]


@functools.lru_cache(maxsize=None)
def _numeric_grads(case):
    """Inputs, dout and central-difference gradients of <out, dout> (one computation per case)."""
    B, H, T, d, dv, lam, gamma, _ = case
    q, k, v, lam_, gam = make_inputs(B, H, T, d, dv, lam=lam, gamma=gamma, seed=hash(case) % 1000)
    dout = np.random.default_rng(7).normal(size=(B, H, T, dv))
    f = lambda: mesa_forward(q, k, v, lam_, gamma=gam)[0]  # noqa: E731
    xs = [q, k, v, lam_] + ([gam] if gamma else [])
    num = [numerical_gradient(f, x, dout, h=1e-6) for x in xs]
    return (q, k, v, lam_, gam), dout, num


@pytest.mark.parametrize("strategy", BACKWARD_STRATEGIES)
@pytest.mark.parametrize("case", GRAD_CASES, ids=GRAD_IDS)
def test_gradients_match_finite_differences(case, strategy):
    (q, k, v, lam, gam), dout, num = _numeric_grads(case)
    _, cache = mesa_forward(q, k, v, lam, gamma=gam, backward=strategy, checkpoint_every=case[-1])
    grads = mesa_backward(dout, cache)
    names = ["dq", "dk", "dv", "dlam"] + (["dgamma"] if gam is not None else [])
    assert len(grads) == len(names)
    for name, ga, gn in zip(names, grads, num):
        assert ga.shape == gn.shape, name
        assert rel_error(ga, gn) < 1e-6, (name, rel_error(ga, gn))


@pytest.mark.parametrize("gamma", [False, True], ids=["nogamma", "gamma"])
def test_strategies_agree_float64(gamma):
    q, k, v, lam, gam = make_inputs(2, 3, 40, 6, 5, gamma=gamma, seed=8)
    dout = np.random.default_rng(9).normal(size=(2, 3, 40, 5))
    out_s, c_s = mesa_forward(q, k, v, lam, gamma=gam, backward="store")
    ref = mesa_backward(dout, c_s)
    for strategy, C in [("checkpoint", None), ("checkpoint", 7), ("checkpoint", 1), ("checkpoint", 100), ("downdate", None)]:
        out, c = mesa_forward(q, k, v, lam, gamma=gam, backward=strategy, checkpoint_every=C)
        np.testing.assert_array_equal(out, out_s)   # the strategy only changes what is kept
        for a, b in zip(mesa_backward(dout, c), ref):
            if strategy == "checkpoint":
                np.testing.assert_array_equal(a, b)  # checkpoint recomputes R_t bit-for-bit
            else:
                assert rel_error(a, b) < 1e-10


def test_cache_layout_per_strategy():
    q, k, v, lam, gam = make_inputs(2, 3, 10, 4, 4, gamma=True)
    _, c = mesa_forward(q, k, v, lam, gamma=gam, backward="store")
    assert isinstance(c, MesaCache) and c.R_saved.shape == (2, 3, 10, 4, 4) and c.R_times == tuple(range(1, 11))
    _, c = mesa_forward(q, k, v, lam, gamma=gam, backward="checkpoint")
    assert c.checkpoint_every == 4 and c.R_times == (0, 4, 8) and c.R_saved.shape == (2, 3, 3, 4, 4)
    np.testing.assert_allclose(c.R_saved[:, :, 0], np.broadcast_to(np.eye(4) / lam[:, None, None], (2, 3, 4, 4)))
    _, c = mesa_forward(q, k, v, lam, gamma=gam, backward="downdate")
    assert c.R_times == (10,) and c.R_saved.shape == (2, 3, 1, 4, 4) and c.checkpoint_every is None


@pytest.mark.parametrize("strategy", BACKWARD_STRATEGIES)
def test_backward_does_not_mutate_cache(strategy):
    q, k, v, lam, gam = make_inputs(2, 2, 9, 3, 3, gamma=True)
    _, cache = mesa_forward(q, k, v, lam, gamma=gam, backward=strategy, checkpoint_every=4)
    before = [np.copy(x) if isinstance(x, np.ndarray) else x for x in cache]
    dout = np.ones((2, 2, 9, 3))
    g1 = mesa_backward(dout, cache)
    g2 = mesa_backward(dout, cache)
    for a, b in zip(before, cache):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)
        assert not any(np.shares_memory(a, x) for x in cache if isinstance(x, np.ndarray))


def test_scaling_identity_of_gradients():
    """o is invariant under k -> s k, v -> s v, lam -> s^2 lam (R -> R/s^2, S -> s^2 S), so per head
    sum_{b,t} (k . dk + v . dv) + 2 lam dlam = 0 (with or without gamma). A closed-form check."""
    for gamma in (False, True):
        q, k, v, lam, gam = make_inputs(3, 2, 25, 5, 4, gamma=gamma, seed=11)
        _, c = mesa_forward(q, k, v, lam, gamma=gam)
        g = mesa_backward(np.random.default_rng(1).normal(size=(3, 2, 25, 4)), c)
        dk, dv, dlam = g[1], g[2], g[3]
        s = np.einsum("bhti,bhti->h", k, dk) + np.einsum("bhti,bhti->h", v, dv) + 2 * lam * dlam
        scale = np.abs(np.einsum("bhti,bhti->h", k, dk)).max()
        assert np.abs(s).max() < 1e-12 * max(1.0, scale)


def test_dgamma_rescaling_identity():
    """o(gamma; k, v) equals the gamma = 1 layer on keys/values scaled by gamma^{-t/2}, hence
    dgamma = -(1/(2 gamma)) sum_t t (k_t . dk_t + v_t . dv_t) (docs/derivations/mesa.md); the code
    computes dgamma by lag-weighted accumulators instead, so this is an independent closed form."""
    q, k, v, lam, gam = make_inputs(2, 3, 30, 4, 5, gamma=True, seed=12)
    _, c = mesa_forward(q, k, v, lam, gamma=gam)
    dq, dk, dv, dlam, dgamma = mesa_backward(np.random.default_rng(2).normal(size=(2, 3, 30, 5)), c)
    t = np.arange(1, 31)
    ident = -(np.einsum("bhti,bhti,t->h", k, dk, t) + np.einsum("bhti,bhti,t->h", v, dv, t)) / (2 * gam)
    assert rel_error(dgamma, ident) < 1e-10


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

def _good():
    return make_inputs(2, 3, 5, 4, 4, gamma=True)


def _bad_cases():
    q, k, v, lam, gam = _good()
    nan_k = k.copy()
    nan_k[0, 1, 2, 3] = np.nan
    return [
        ("rank-q", dict(q=q[0]), "q"),
        ("rank-v", dict(v=v[..., None]), "v"),
        ("shape-k", dict(k=k[:, :, :4]), "k"),
        ("shape-v", dict(v=v[:, :2]), "v"),
        ("nan-k", dict(k=nan_k), "k"),
        ("inf-q", dict(q=np.where(q > 0, np.inf, q)), "q"),
        ("lam-zero", dict(lam=np.array([1.0, 0.0, 1.0])), "lam"),
        ("lam-neg", dict(lam=-lam), "lam"),
        ("lam-shape", dict(lam=lam[:2]), "lam"),
        ("lam-scalar", dict(lam=1.0), "lam"),
        ("lam-nan", dict(lam=np.array([1.0, np.nan, 1.0])), "lam"),
        ("lam-underflow-f32", dict(q=q.astype(np.float32), k=k.astype(np.float32), v=v.astype(np.float32),
                                   lam=np.full(3, 1e-60), gamma=gam.astype(np.float32)), "lam"),
        ("lam-int", dict(lam=np.ones(3, dtype=np.int64)), "lam"),
        ("gamma-zero", dict(gamma=np.array([0.5, 0.0, 1.0])), "gamma"),
        ("gamma-gt1", dict(gamma=np.array([0.5, 1.0 + 1e-9, 1.0])), "gamma"),
        ("gamma-shape", dict(gamma=gam[None]), "gamma"),
        ("mixed-dtype", dict(v=v.astype(np.float32)), "v"),
        ("int-q", dict(q=q.astype(np.int64)), "q"),
        ("backward-unknown", dict(backward="reverse"), "backward"),
        ("checkpoint-zero", dict(backward="checkpoint", checkpoint_every=0), "checkpoint_every"),
        ("checkpoint-float", dict(backward="checkpoint", checkpoint_every=2.0), "checkpoint_every"),
    ]


@pytest.mark.parametrize("name,override,arg", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_input_raises_value_error_naming_argument(name, override, arg):
    q, k, v, lam, gam = _good()
    kw = dict(q=q, k=k, v=v, lam=lam, gamma=gam, backward="store", checkpoint_every=None)
    kw.update(override)
    with pytest.raises(ValueError, match=rf"^{arg}\b"):
        mesa_forward(kw["q"], kw["k"], kw["v"], kw["lam"], gamma=kw["gamma"], backward=kw["backward"],
                     checkpoint_every=kw["checkpoint_every"])
    with pytest.raises(ValueError, match=rf"^{arg}\b"):
        validate_mesa_inputs(kw["q"], kw["k"], kw["v"], kw["lam"], kw["gamma"], kw["backward"], kw["checkpoint_every"])


def test_lam_message():
    q, k, v, lam, _ = _good()
    with pytest.raises(ValueError, match="lam: must be > 0"):
        mesa_forward(q, k, v, np.zeros(3))


def test_bad_dout_raises():
    q, k, v, lam, gam = _good()
    out, cache = mesa_forward(q, k, v, lam, gamma=gam)
    for bad in (out[:, :, :3], out[..., None], out.astype(np.float32), np.full_like(out, np.nan), list(out)):
        with pytest.raises(ValueError, match=r"^dout\b"):
            mesa_backward(bad, cache)
    with pytest.raises(ValueError, match=r"^cache\b"):
        mesa_backward(out, tuple(cache))


def test_validate_returns_normalised_values():
    q, k, v, lam, gam = _good()
    q2, k2, v2, lam2, gam2, b, C = validate_mesa_inputs(q, k, v, lam, gam, "checkpoint", None)
    assert q2 is q and C == 3 and b == "checkpoint"         # ceil(sqrt(5))
    assert lam2 is not lam and np.array_equal(lam2, lam)     # a private copy
    assert validate_mesa_inputs(q, k, v, lam, None, "store", 4)[5:] == ("store", None)
    assert validate_mesa_inputs(q, k, v, lam, None, "checkpoint", np.int64(2))[6] == 2


# --------------------------------------------------------------------------------------------
# stability table, tiny version (the full one: benchmarks/mesa_stability.py)
# --------------------------------------------------------------------------------------------

def _load_stability_module():
    spec = importlib.util.spec_from_file_location("mesa_stability", ROOT / "benchmarks" / "mesa_stability.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stability_table_tiny(capsys):
    """T=256, lam=1: asserts only exact properties (checkpoint == store and float64 store == oracle);
    the downdate's and float32's errors are printed, not asserted."""
    stab = _load_stability_module()
    rows = stab.run_stability(Ts=(256,), lams=(1.0,), gammas=(None, 0.99), verbose=False)
    with capsys.disabled():
        print("\n" + stab.format_table(rows))
    by = {(r["gamma"], r["dtype"], r["strategy"]): r for r in rows}
    for gamma in (None, 0.99):
        grads = ["dq", "dk", "dv", "dlam"] + (["dgamma"] if gamma else [])
        assert by[(gamma, "float64", "store")]["out_vs_direct"] < 1e-10
        for dtype in ("float32", "float64"):
            st, ck = by[(gamma, dtype, "store")], by[(gamma, dtype, "checkpoint")]
            for key in ["out_vs_store"] + grads:
                assert ck[key] == st[key], (gamma, dtype, key)   # same arithmetic, same numbers
        for key in ["out_vs_store"] + grads:
            assert by[(gamma, "float64", "checkpoint")][key] < 1e-10
