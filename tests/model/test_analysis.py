"""Tests for mesa_ref.analysis: [P3] per-step statistics, [P2] weight readout / gd_similarity, [A5] interpolation."""
import numpy as np
import pytest

from mesa_ref import analysis as A
from mesa_ref import solvers
from mesa_ref.config import ModelConfig
from mesa_ref.data import linear_dynamics_batch
from mesa_ref.model import Transformer

N = 4


def one_layer(heads=2, key_size=N, clip=None):
    return ModelConfig(layers=("linear",), heads=heads, width=4 * N, key_size=key_size, input_dim=N,
                       output_dim=N, clip=clip)


def batch(seed=0, B=6, T=9):
    x, y = linear_dynamics_batch(np.random.default_rng(seed), B, T=T, n=N)
    return x, y


# ------------------------------------------------------------------------------------------ [P3]
def test_per_step_summary_matches_hand_computation():
    per_seed = np.array([[1.0, 2.0, 4.0], [3.0, 2.0, 0.0], [2.0, 5.0, 2.0]])
    r = A.per_step_summary(per_seed)
    np.testing.assert_allclose(r.mean, [2.0, 3.0, 2.0])
    # sample std (ddof 1): column 0 deviations -1, 1, 0 -> sqrt(2/2) = 1; column 1: -1,-1,2 -> sqrt(6/2)
    np.testing.assert_allclose(r.spread, [1.0, np.sqrt(3.0), 2.0])
    one = A.per_step_summary(per_seed[:1])
    np.testing.assert_allclose(one.spread, 0.0)


def test_per_step_losses_is_mean_over_all_sequences():
    rng = np.random.default_rng(3)
    preds = [rng.standard_normal((5, 7, N)) for _ in range(3)]
    tgts = [rng.standard_normal((5, 7, N)) for _ in range(3)]
    r = A.per_step_losses(preds, tgts)
    # by hand: every sequence's squared error at each t, summed over dims, /2, averaged over all 15 sequences
    err = np.concatenate([(p - y) ** 2 for p, y in zip(preds, tgts)]).sum(axis=2) / 2      # (15, T)
    np.testing.assert_allclose(r.mean, err.mean(axis=0), rtol=1e-12)
    per_seed = np.stack([((p - y) ** 2).sum(axis=(0, 2)) / (2 * 5) for p, y in zip(preds, tgts)])
    np.testing.assert_allclose(r.spread, per_seed.std(axis=0, ddof=1), rtol=1e-12)


def test_per_step_summary_rejects_bad_input():
    with pytest.raises(ValueError, match="per_seed"):
        A.per_step_summary(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="per_seed"):
        A.per_step_summary([[1.0, np.nan]])


# ------------------------------------------------------------------------------------------ [P2]
def test_gd_construction_computes_one_gd_step_and_has_similarity_one():
    cfg = one_layer()
    eta = 0.07
    p = A.gd_construction(cfg, eta)
    x, y = batch()
    pred, _ = Transformer(cfg).forward(p, x)
    s = x[..., N:2 * N]
    np.testing.assert_allclose(pred, solvers.gd_one_step(s, eta), atol=1e-12)
    r = A.weight_readout(p, cfg)
    assert r.gd_similarity[0] == pytest.approx(1.0, abs=1e-12)
    assert r.gd_similarity_max == pytest.approx(1.0, abs=1e-12)
    assert r.gd_similarity_layer == pytest.approx(1.0, abs=1e-12)
    # a joint sign flip of W_K and W_O leaves the computation, and the similarity, unchanged
    q = dict(p, **{"l0.wk": -p["l0.wk"], "l0.wo": -p["l0.wo"]})
    assert A.weight_readout(q, cfg).gd_similarity_max == pytest.approx(1.0, abs=1e-12)


def test_gd_similarity_low_for_random_weights():
    cfg = one_layer(heads=4, key_size=8)
    sims = []
    for seed in range(3):
        p = {k: v.astype(np.float64) for k, v in Transformer(cfg.replace(init_std=0.1)).init(seed).items()}
        sims.append(A.weight_readout(p, cfg).gd_similarity_max)
    assert max(sims) < 0.3


def test_weight_products_orientation():
    """KQ_h = W_K^T W_Q gives the score e'^T KQ e, PV_h = P W_V maps a value-side token to the output."""
    cfg = one_layer(heads=2, key_size=3)
    rng = np.random.default_rng(0)
    p = {k: rng.standard_normal(v.shape) for k, v in Transformer(cfg).init(0, dtype=np.float64).items()}
    KQ, PV = A.weight_products(p, cfg)
    e1, e2 = rng.standard_normal(4 * N), rng.standard_normal(4 * N)
    h, d = 1, 3
    k = e1 @ p["l0.wk"][:, h * d:(h + 1) * d]
    q = e2 @ p["l0.wq"][:, h * d:(h + 1) * d]
    assert e1 @ KQ[h] @ e2 == pytest.approx(k @ q)
    out = (e1 @ p["l0.wv"][:, h * d:(h + 1) * d]) @ p["l0.wo"][h * d:(h + 1) * d]
    np.testing.assert_allclose(PV[h] @ e1, out, rtol=1e-12)


def test_gd_similarity_partial_pattern():
    """A head that only has the KQ pattern but a random PV scores cos(PV, G) < 1."""
    G_KQ, G_PV = A.gd_patterns(N)
    rng = np.random.default_rng(1)
    PV = rng.standard_normal((1, 4 * N, 4 * N))
    per_head, _, kq, pv = A.gd_similarity(G_KQ[None], PV, N)
    assert kq[0] == pytest.approx(1.0)
    assert per_head[0] == pytest.approx(pv[0])
    assert abs(per_head[0]) < 0.5


# ------------------------------------------------------------------------------------------ [A5]
def test_interpolation_endpoints_reproduce_losses():
    cfg = one_layer(heads=2, key_size=N, clip=1.5)
    m = Transformer(cfg)
    pa = {k: v.astype(np.float64) for k, v in m.init(0).items()}
    pb = A.gd_construction(cfg, 0.05)
    batches = [batch(1), batch(2)]
    losses = A.interpolation_losses(m, pa, pb, [0.0, 0.5, 1.0], batches)
    assert losses[0] == pytest.approx(np.mean([m.loss(pa, x, y) for x, y in batches]), rel=1e-12)
    assert losses[2] == pytest.approx(np.mean([m.loss(pb, x, y) for x, y in batches]), rel=1e-12)
    mid = A.interpolate_params(pa, pb, 0.5)
    assert losses[1] == pytest.approx(np.mean([m.loss(mid, x, y) for x, y in batches]), rel=1e-12)


def test_product_interpolation_endpoints():
    """Product form is exact: alpha = 0 gives the trained model's loss, alpha = 1 the construction's."""
    cfg = one_layer(heads=2, key_size=3, clip=None)
    m = Transformer(cfg)
    rng = np.random.default_rng(5)
    pa = {k: 0.3 * rng.standard_normal(v.shape) for k, v in m.init(0, dtype=np.float64).items()}
    gcfg = cfg.replace(key_size=N)
    pg = A.gd_construction(gcfg, 0.08)
    batches = [batch(3)]
    target = A.weight_products(pg, gcfg)
    losses = A.product_interpolation_losses(cfg, pa, target, [0.0, 1.0], batches)
    assert losses[0] == pytest.approx(m.loss(pa, *batches[0]), rel=1e-10)
    assert losses[1] == pytest.approx(Transformer(gcfg).loss(pg, *batches[0]), rel=1e-10)


def test_revalg_clean_model_matches_revalg_predict():
    """The cleaned products computed by a model equal solvers.revalg_predict with the read-off coefficients."""
    cfg = one_layer(heads=2, key_size=3, clip=None)
    rng = np.random.default_rng(7)
    p = {k: 0.3 * rng.standard_normal(v.shape) for k, v in Transformer(cfg).init(0, dtype=np.float64).items()}
    KQ, PV = A.weight_products(p, cfg)
    KQc, PVc = A.revalg_clean(KQ, PV, N)
    x, _ = batch(4)
    pred, _ = Transformer(A.product_config(cfg)).forward(A.product_params(KQc, PVc), x)
    C = solvers.revalg_coeffs_from_weights(p["l0.wq"], p["l0.wk"], p["l0.wv"], p["l0.wo"], N, 2)
    np.testing.assert_allclose(pred, solvers.revalg_predict(x[..., N:2 * N], C), atol=1e-10)


def test_gd_project_of_construction_is_identity_and_recovers_eta():
    cfg = one_layer(heads=2, key_size=N)
    KQ, PV = A.weight_products(A.gd_construction(cfg, 0.09), cfg)
    KQp, PVp, eta = A.gd_project(KQ, PV, N)
    assert eta == pytest.approx(0.09)
    np.testing.assert_allclose(KQp, KQ, atol=1e-15)
    np.testing.assert_allclose(PVp, PV, atol=1e-15)
