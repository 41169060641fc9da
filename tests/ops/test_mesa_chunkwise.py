"""The chunkwise mesa-layer [M5] (mesa_ref/ops/mesa_chunkwise.py) against the sequential reference [M2]/[M3],
float64 central finite differences, and its own input checks.  CuPy runs of the same code: skipped without a GPU."""
import os

os.environ["CUPY_TF32"] = "0"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mesa_ref.gradcheck import numerical_gradient  # noqa: E402
from mesa_ref.ops import mesa as seq  # noqa: E402
from mesa_ref.ops import mesa_chunkwise as chk  # noqa: E402
from mesa_cases import _inputs  # noqa: E402  (tests/ is on pytest's pythonpath)

NAMES = ("out", "dq", "dk", "dv", "dlam")


def inputs(B, H, T, d, dv, seed=0, lam_scale=1.0):
    """The fast-kernel tests' random inputs (q, k, v, dout, lam), without gamma."""
    return _inputs(B, H, T, d, dv, seed=seed, lam_scale=lam_scale)[:5]


def run_seq(q, k, v, g, lam):
    out, cache = seq.mesa_forward(q, k, v, lam)
    return (out,) + tuple(seq.mesa_backward(g, cache))


def run_chunk(q, k, v, g, lam, chunk):
    out, cache = chk.mesa_chunkwise_forward(q, k, v, lam, chunk=chunk)
    return (out,) + tuple(chk.mesa_chunkwise_backward(g, cache))


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape and np.all(np.isfinite(got))
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


@pytest.mark.parametrize("shape,chunk", [((2, 3, 17, 5, 7), 4), ((1, 2, 16, 8, 8), 16), ((3, 1, 9, 6, 3), 1),
                                         ((2, 2, 11, 4, 5), 64), ((1, 3, 40, 9, 6), 7)])
def test_float64_matches_sequential_reference(shape, chunk):
    q, k, v, g, lam = inputs(*shape)
    for name, a, b in zip(NAMES, run_chunk(q, k, v, g, lam, chunk), run_seq(q, k, v, g, lam)):
        assert rel_err(a, b) <= 1e-10, name


@pytest.mark.parametrize("shape,chunk", [((2, 3, 33, 20, 20), 8), ((1, 2, 64, 16, 12), 16)])
def test_float32_matches_float64_truth(shape, chunk):
    """float32 through the chunkwise form against the float64 sequential reference; same tolerances as the fast
    kernels' (tests/fast/test_fast_mesa.py): 1e-5, 2e-5 for dk and dlam (cancellation in the sums)."""
    q, k, v, g, lam = inputs(*shape, seed=1)
    got = run_chunk(*(x.astype(np.float32) for x in (q, k, v, g, lam)), chunk)
    assert all(x.dtype == np.float32 for x in got)
    for name, a, b in zip(NAMES, got, run_seq(q, k, v, g, lam)):
        assert rel_err(a, b) <= (2e-5 if name in ("dk", "dlam") else 1e-5), name


def test_gradients_by_central_finite_differences():
    q, k, v, g, lam = inputs(1, 2, 7, 3, 2, seed=3)

    def loss():
        return float((chk.mesa_chunkwise_forward(q, k, v, lam, chunk=3)[0] * g).sum())

    _, cache = chk.mesa_chunkwise_forward(q, k, v, lam, chunk=3)
    dq, dk, dv, dlam = chk.mesa_chunkwise_backward(g, cache)
    for name, x, got in (("q", q, dq), ("k", k, dk), ("v", v, dv), ("lam", lam, dlam)):
        num = numerical_gradient(loss, x)
        assert np.max(np.abs(got - num)) <= 1e-7 * max(1.0, np.max(np.abs(num))), name


def test_chunk_size_does_not_change_the_result():
    q, k, v, g, lam = inputs(2, 2, 23, 6, 4, seed=4)
    ref = run_chunk(q, k, v, g, lam, 23)
    for C in (1, 2, 5, 22):
        for name, a, b in zip(NAMES, run_chunk(q, k, v, g, lam, C), ref):
            assert rel_err(a, b) <= 1e-11, (C, name)


def test_small_lam_is_still_exact_in_float64():
    """lam = 1e-3 (the trained models' range): ill-conditioned chunks, still the sequential answer in float64."""
    q, k, v, g, lam = inputs(2, 2, 30, 6, 5, seed=5, lam_scale=1e-3)
    for name, a, b in zip(NAMES, run_chunk(q, k, v, g, lam, 10), run_seq(q, k, v, g, lam)):
        assert rel_err(a, b) <= 1e-7, name


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_solve_lower_is_the_triangular_solve(dtype):
    """The [M5] helper L^{-1} X, batched, in the input dtype; it reads only L's lower triangle."""
    rng = np.random.default_rng(7)
    L = np.tril(rng.normal(size=(2, 3, 6, 6))) + 4 * np.eye(6)
    X = rng.normal(size=(2, 3, 6, 5))
    junk = L + np.triu(rng.normal(size=L.shape), 1)                     # upper triangle must be ignored
    got = chk._solve_lower(junk.astype(dtype), X.astype(dtype), np)
    assert got.dtype == dtype and got.shape == X.shape
    assert rel_err(got, np.linalg.solve(L, X)) <= (1e-14 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("chunk", [0, -1, 2.0, True, None])
def test_bad_chunk_is_a_value_error(chunk):
    q, k, v, _, lam = inputs(1, 1, 4, 2, 2)
    with pytest.raises(ValueError, match="chunk"):
        chk.mesa_chunkwise_forward(q, k, v, lam, chunk=chunk)


def test_inputs_are_validated_like_the_sequential_op():
    q, k, v, g, lam = inputs(1, 2, 4, 3, 2)
    with pytest.raises(ValueError, match="lam"):
        chk.mesa_chunkwise_forward(q, k, v, -lam)
    bad = q.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        chk.mesa_chunkwise_forward(bad, k, v, lam)
    _, cache = chk.mesa_chunkwise_forward(q, k, v, lam)
    with pytest.raises(ValueError):
        chk.mesa_chunkwise_backward(g[..., :1], cache)
    with pytest.raises(ValueError, match="MesaChunkCache"):
        chk.mesa_chunkwise_backward(g, seq.mesa_forward(q, k, v, lam)[1])


def _gpu():
    try:
        import cupy as cp
        cp.cuda.runtime.getDeviceCount()
        return cp
    except Exception:  # noqa: BLE001  (no CuPy, no driver, no device)
        return None


@pytest.mark.gpu
@pytest.mark.skipif(_gpu() is None, reason="CuPy with a usable GPU not available")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cupy_run_of_the_same_code_matches(dtype):
    cp = _gpu()
    q, k, v, g, lam = inputs(2, 3, 70, 16, 12, seed=6)
    got = run_chunk(*(cp.asarray(x.astype(dtype)) for x in (q, k, v, g, lam)), 32)
    assert all(isinstance(x, cp.ndarray) for x in got)
    for name, a, b in zip(NAMES, got, run_seq(q, k, v, g, lam)):
        assert rel_err(cp.asnumpy(a), b) <= (1e-10 if dtype == np.float64 else 2e-5), name


@pytest.mark.parametrize("namespace", ["mesa_ref", "mesa_fast"])
def test_model_with_mesa_chunk_has_the_sequential_models_loss_and_gradients(namespace):
    """ModelConfig(mesa_chunk=C) routes the mesa layers through [M5]: same loss and gradients (float64)."""
    from mesa_ref.config import ModelConfig
    from mesa_ref.tasks import LinearTask
    if namespace == "mesa_fast":
        from mesa_fast.model import Transformer
    else:
        from mesa_ref.model import Transformer
    base = ModelConfig(layers=("mesa", "linear", "mesa"), heads=2, key_size=4, input_dim=3, width=12, output_dim=3,
                       init_std=0.3, mlp=True)
    x, y = LinearTask(n=3, T=11).batch(np.random.default_rng(0), 3, np.float64)
    seq_model, chunk_model = Transformer(base), Transformer(base.replace(mesa_chunk=4))
    params = seq_model.init(0, dtype=np.float64)
    L0, g0 = seq_model.loss_and_grads(params, x, y)
    L1, g1 = chunk_model.loss_and_grads(params, x, y)
    assert L1 == pytest.approx(L0, rel=1e-12)
    for name in g0:
        assert rel_err(g1[name], g0[name]) <= 1e-9, name


@pytest.mark.parametrize("bad", [dict(mesa_chunk=0), dict(mesa_chunk=2.5), dict(mesa_chunk=4, mesa_gamma=True)])
def test_model_config_rejects_bad_mesa_chunk(bad):
    from mesa_ref.config import ModelConfig
    with pytest.raises(ValueError, match="mesa_chunk"):
        ModelConfig(layers=("mesa",), **bad)
