"""One shard of a training step's batch per thread (``batch_map``: mesa_ref/ops/batching.py,
mesa_fast/ops/batching.py, ``runtime.pool.map_shards``) and ``Transformer.loss_and_grads`` combining the shards."""
import numba
import numpy as np
import pytest

from mesa_fast import ops as F
from mesa_fast.ops import batching
from mesa_fast.runtime import pool as _pool
from mesa_fast.runtime import tuning
from mesa_ref import ops as R
from mesa_ref.config import ModelConfig
from mesa_ref.model import Transformer

pytestmark = pytest.mark.slow        # whole training steps, sharded and not, in both dtypes

THREADS = numba.config.NUMBA_NUM_THREADS
needs_two = pytest.mark.skipif(THREADS < 2, reason="needs 2 Numba threads")


@pytest.fixture
def two_threads():
    numba.set_num_threads(2)
    yield
    numba.set_num_threads(THREADS)


def test_reference_batch_map_is_one_shard_and_rejects_empty_batches():
    assert R.batch_map(lambda lo, hi: (lo, hi), np.zeros((5, 2))) == [(0, 5, (0, 5))]
    for bad in (np.zeros((0, 3)), np.float64(1.0), [1, 2]):
        with pytest.raises(ValueError, match="batch_map"):
            R.batch_map(lambda lo, hi: None, bad)
        with pytest.raises(ValueError, match="batch_map"):
            F.batch_map(lambda lo, hi: None, bad)


@pytest.mark.parametrize("n, threads, min_shard, expect", [
    (67, 2, 32, [0, 33, 67]), (64, 2, 32, [0, 32, 64]), (63, 2, 32, [0, 63]), (256, 2, 32, [0, 128, 256]),
    (10, 3, 1, [0, 3, 6, 10]), (5, 1, 1, [0, 5]), (1, 4, 1, [0, 1])])
def test_shard_bounds(n, threads, min_shard, expect):
    assert _pool.shard_bounds(n, threads, min_shard) == expect


@needs_two
def test_map_shards_one_numba_thread_inside_each_shard_and_count_restored(two_threads):
    import threading
    seen = _pool.map_shards(lambda lo, hi: (numba.get_num_threads(), threading.get_ident()), 100, min_shard=10)
    assert [(lo, hi) for lo, hi, _ in seen] == [(0, 50), (50, 100)]
    assert [r[0] for _, _, r in seen] == [1, 1]
    assert seen[0][2][1] == threading.get_ident() and seen[1][2][1] != threading.get_ident()
    assert numba.get_num_threads() == 2
    # too few samples for two shards: one, on the caller, with its thread count unchanged
    assert _pool.map_shards(lambda lo, hi: numba.get_num_threads(), 15, min_shard=10) == [(0, 15, 2)]


@needs_two
@pytest.mark.parametrize("failing", [0, 1])
def test_map_shards_reraises_either_shards_error_and_restores_the_count(two_threads, failing):
    def fn(lo, hi):
        if (lo > 0) == bool(failing):
            raise RuntimeError(f"shard {failing}")
        return lo
    with pytest.raises(RuntimeError, match=f"shard {failing}"):
        _pool.map_shards(fn, 64, min_shard=1)
    assert numba.get_num_threads() == 2


@needs_two
def test_fast_batch_map_splits_only_large_numpy_batches(two_threads):
    """Two shards need 2 x SHARD_MIN_POSITIONS positions (samples x time steps); one thread never splits."""
    P = tuning.SHARD_MIN_POSITIONS
    for T, shape in [(1, ()), (16, (16, 3)), (16, (16,)), (P + 1, (P + 1, 2))]:
        n = 2 * -(-P // T)
        x = np.zeros((n,) + shape)
        assert batching.min_samples(x) * T >= P > (batching.min_samples(x) - 1) * T
        assert [(lo, hi) for lo, hi, _ in F.batch_map(lambda lo, hi: hi, x)] == [(0, n // 2), (n // 2, n)]
        assert len(F.batch_map(lambda lo, hi: hi, x[:n - 1])) == 1
    numba.set_num_threads(1)
    assert F.batch_map(lambda lo, hi: hi, np.zeros((4 * P, 1))) == [(0, 4 * P, 4 * P)]


def _cfg(kind):
    return {"linear": ModelConfig(width=12, input_dim=3, output_dim=3, heads=2, key_size=4),
            "softmax-mlp": ModelConfig(layers=("softmax", "softmax"), input="embed", width=8, input_dim=3,
                                       output_dim=3, heads=2, key_size=4, mlp=True, layernorm=True, pos_enc=True),
            "mesa": ModelConfig(layers=("mesa",), width=12, input_dim=3, output_dim=3, heads=2, key_size=4),
            "tokens": ModelConfig(layers=("linear",), input="tokens", input_dim=7, output_dim=7, width=8, heads=2,
                                  key_size=4, mlp=True)}[kind]


def _data(cfg, B, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if cfg.input == "tokens":
        return rng.integers(0, 7, (B, 16)), rng.integers(0, 7, (B, 16))
    n_in = cfg.width if cfg.input == "constructed" else cfg.input_dim
    return rng.standard_normal((B, 16, n_in)).astype(dtype), rng.standard_normal((B, 16, 3)).astype(dtype)


@needs_two
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["linear", "softmax-mlp", "mesa", "tokens"])
def test_sharded_loss_and_grads_equal_the_whole_batch(two_threads, kind, dtype, tol, monkeypatch):
    """67 samples of 16 steps on 2 threads: shards of 33 and 34 (at least SHARD_MIN_POSITIONS = 512 positions each),
    weighted 33/67 and 34/67, equal the unsplit batch (one thread), and equal the reference in float64."""
    cfg = _cfg(kind)
    model = Transformer(cfg, ops=F)
    params = model.init(1, dtype=dtype)
    for k in params:                       # weights of order one, so every path matters
        params[k] = params[k] + dtype(0.3) * np.random.default_rng(2).standard_normal(params[k].shape).astype(dtype)
    x, y = _data(cfg, 67, dtype)
    calls = []
    orig = _pool.map_shards
    monkeypatch.setattr(batching, "map_shards", lambda *a, **kw: calls.append(a[1]) or orig(*a, **kw))
    L2, g2 = model.loss_and_grads(params, x, y)
    assert calls == [67]
    numba.set_num_threads(1)
    L1, g1 = model.loss_and_grads(params, x, y)
    assert calls == [67]                   # one thread: batch_map did not split
    assert abs(L2 - L1) <= tol * abs(L1)
    assert set(g2) == set(g1)
    for k in g1:
        assert g2[k].dtype == dtype
        np.testing.assert_allclose(g2[k], g1[k], rtol=0, atol=tol * np.abs(g1[k]).max())
    if dtype == np.float64:
        Lr, gr = Transformer(cfg, ops=R).loss_and_grads(params, x, y)
        assert abs(L2 - Lr) <= 1e-12 * abs(Lr)
        for k in gr:
            np.testing.assert_allclose(g2[k], gr[k], rtol=0, atol=1e-12 * np.abs(gr[k]).max())


@needs_two
@pytest.mark.parametrize("row", [0, 66])
def test_non_finite_input_in_either_shard_raises_the_reference_error(two_threads, row):
    cfg = _cfg("softmax-mlp")
    x, y = _data(cfg, 67, np.float64)
    x[row, 2, 1] = np.nan
    params = Transformer(cfg).init(0, dtype=np.float64)
    with pytest.raises(ValueError) as ref_err:
        Transformer(cfg, ops=R).loss_and_grads(params, x, y)
    with pytest.raises(ValueError) as fast_err:
        Transformer(cfg, ops=F).loss_and_grads(params, x, y)
    assert str(fast_err.value).split(":")[0] == str(ref_err.value).split(":")[0]
    assert numba.get_num_threads() == 2
