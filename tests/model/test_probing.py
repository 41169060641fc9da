"""Tests for mesa_ref.probing: [P1] probes and targets, [P4] linearisation."""
import numpy as np
import pytest

from mesa_ref.config import ModelConfig
from mesa_ref.data import constructed_tokens, linear_dynamics
from mesa_ref.model import Transformer
from mesa_ref.probing import (TARGETS, apply_probe, attention_block_io, fit_linear_attention, fit_probe,
                              linearise_layer, nmse, probe_errors, probe_model, probe_targets)


def test_targets_against_explicit_solve(rng):
    states = rng.standard_normal((3, 8, 4))                       # N=3, T=7, n=4
    tg = probe_targets(states, lam=1e-3)
    T = 7
    for b in range(3):
        for t in range(1, T + 1):                                 # 1-based position
            s = states[b]                                         # s[j] = s_{j+1}
            x = [np.zeros(4)] + [s[j] for j in range(t - 1)]      # x_{t'} = s_{t'-1}, t' = 1..t
            X = np.stack(x, axis=1)                               # (n, t)
            want = np.linalg.solve(X @ X.T + 1e-3 * np.eye(4), s[t - 1])
            np.testing.assert_allclose(tg["inverse_curvature"][b, t - 1], want, rtol=1e-9, atol=1e-9)
            np.testing.assert_array_equal(tg["current"][b, t - 1], s[t - 1])
            np.testing.assert_array_equal(tg["next"][b, t - 1], s[t])
            np.testing.assert_array_equal(tg["previous"][b, t - 1], s[t - 2] if t >= 2 else np.zeros(4))


def test_targets_reject_bad_input():
    with pytest.raises(ValueError, match="states"):
        probe_targets(np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match="lam"):
        probe_targets(np.zeros((2, 4, 3)), lam=0.0)


def test_probe_recovers_planted_linear_signal_held_out(rng):
    N, M, T, F, K = 200, 100, 5, 12, 3
    A = rng.standard_normal((T, F, K))
    c = rng.standard_normal((T, K))

    def make(n):
        h = rng.standard_normal((n, T, F))
        y = np.einsum("ntf,tfk->ntk", h, A) + c                   # a different map at every t
        return h, y

    htr, ytr = make(N)
    hte, yte = make(M)
    err = probe_errors(htr, ytr, hte, yte)
    assert err.shape == (T,)
    assert np.all(err < 1e-10)
    # the same features shuffled against the targets carry no signal: error about 1 (or above)
    err_bad = probe_errors(htr, ytr, hte[rng.permutation(M)], yte)
    assert np.all(err_bad > 0.5)


def test_probe_is_scored_on_held_out_data_only(rng):
    # With more features than training rows a probe fits its training rows exactly but cannot
    # predict independent noise targets on other rows.
    htr, hte = rng.standard_normal((20, 1, 30)), rng.standard_normal((50, 1, 30))
    ytr, yte = rng.standard_normal((20, 1, 2)), rng.standard_normal((50, 1, 2))
    probe = fit_probe(htr[:, 0], ytr[:, 0])
    assert nmse(apply_probe(probe, htr[:, 0]), ytr[:, 0]) < 1e-6
    assert probe_errors(htr, ytr, hte, yte)[0] > 0.9


def test_probe_handles_collinear_constructed_tokens(rng):
    # constructed tokens repeat s_t and hold zeros: the probe must still read s_t and s_{t-1} exactly
    tr = linear_dynamics(rng, 64, T=6, n=3).states
    te = linear_dynamics(rng, 32, T=6, n=3).states
    ytr, yte = probe_targets(tr), probe_targets(te)
    xtr, xte = constructed_tokens(tr[:, :-1]), constructed_tokens(te[:, :-1])
    assert probe_errors(xtr, ytr["current"], xte, yte["current"]).max() < 1e-8
    err = probe_errors(xtr, ytr["previous"], xte, yte["previous"])
    assert np.isnan(err[0])                       # s_0 = 0 at t = 1: no variance, no error defined
    assert err[1:].max() < 1e-8


def test_probe_model_shapes_and_control(rng):
    cfg = ModelConfig(layers=("linear", "linear"), heads=2, width=12, key_size=3, input_dim=3, output_dim=3,
                      init_std=0.2)
    model = Transformer(cfg)
    params = model.init(0, dtype=np.float64)
    tr = linear_dynamics(rng, 60, T=5, n=3).states
    te = linear_dynamics(rng, 40, T=5, n=3).states
    res = probe_model(model, params, tr, te, dtype=np.float64)
    for name in TARGETS:
        assert res.per_t[name].shape == (3, 5)
        assert res.control_per_t[name].shape == (5,)
    # layer 0 of a constructed-token model is the input token itself: same numbers as the control
    for name in TARGETS:
        np.testing.assert_allclose(res.per_t[name][0], res.control_per_t[name], rtol=1e-8, atol=1e-10)
    means = res.mean_over_t()
    assert set(means) == set(TARGETS) and all(len(v) == 3 for v in means.values())


def _tiny(kinds, seed=0, **kw):
    cfg = ModelConfig(layers=kinds, heads=2, width=8, key_size=3, input="embed", input_dim=3, output_dim=3,
                      pos_enc=True, mlp=True, mlp_factor=2, layernorm=True, clip=None, init_std=0.3, **kw)
    model = Transformer(cfg)
    return model, model.init(seed, dtype=np.float64)


def test_linearise_linear_layer_from_its_own_weights_is_exact(rng):
    # Replacing a linear-attention layer: the fit starts from its own W_Q, W_K, W_V, so the least-squares W_O
    # recovers the layer exactly and the loss does not change.
    model, params = _tiny(("softmax", "linear"))
    x = rng.uniform(-1, 1, (16, 6, 3))
    xe, ye = rng.uniform(-1, 1, (8, 6, 3)), rng.uniform(-1, 1, (8, 6, 3))
    res = linearise_layer(model, params, 1, x, xe, ye, steps=0)
    assert res.fit_nmse < 1e-20
    np.testing.assert_allclose(res.loss_linearised, res.loss_original, rtol=1e-12)
    np.testing.assert_allclose(res.params["l1.wo"], params["l1.wo"], rtol=1e-8, atol=1e-10)
    assert res.loss_removed != pytest.approx(res.loss_original)


def test_fit_linear_attention_learns_a_linear_layer_from_another_start(rng):
    # Target: a linear attention layer with random weights; start: unrelated random weights.  Adam must bring the
    # normalised error far below where it started (a real fit, not a copy).
    from mesa_ref import ops
    from mesa_ref.probing import _linear_attention_heads
    D, H, d, N, T = 6, 2, 3, 24, 6
    a = rng.standard_normal((N, T, D))
    true = [0.5 * rng.standard_normal((D, H * d)) for _ in range(3)] + [0.5 * rng.standard_normal((H * d, D))]
    m, _ = _linear_attention_heads(a, *true[:3], H, ops)
    target = m @ true[3]
    init = [0.5 * rng.standard_normal((D, H * d)) for _ in range(3)]
    w, hist = fit_linear_attention(a, target, init, H, steps=600, lr=1e-2)
    assert hist[0] > 0.05
    assert hist[-1] < 1e-2 * hist[0]
    m2, _ = _linear_attention_heads(a, *w[:3], H, ops)
    assert np.mean((m2 @ w[3] - target) ** 2) / np.mean(target ** 2) == pytest.approx(min(hist), rel=1e-9)


def test_linearise_softmax_layer_reports_consistent_losses(rng):
    model, params = _tiny(("softmax", "softmax"))
    x = rng.uniform(-1, 1, (16, 6, 3))
    xe, ye = rng.uniform(-1, 1, (8, 6, 3)), rng.uniform(-1, 1, (8, 6, 3))
    res = linearise_layer(model, params, 1, x, xe, ye, steps=20)
    assert res.config.layers == ("softmax", "linear")
    assert res.loss_original == pytest.approx(model.loss(params, xe, ye))
    assert res.loss_linearised == pytest.approx(Transformer(res.config).loss(res.params, xe, ye))
    assert np.isfinite(res.fit_nmse) and res.fit_history[-1] <= res.fit_history[0] + 1e-12
    with pytest.raises(ValueError, match="i:"):
        linearise_layer(model, params, 2, x, xe, ye)


# ---------------------------------------------------------------------------------------------- the authors' probe
def test_polynomial_inverse_is_the_truncated_neumann_series_without_momentum():
    from mesa_ref.probing import polynomial_inverse
    rng = np.random.default_rng(0)
    M = rng.normal(size=(3, 5, 5))
    A = M @ M.transpose(0, 2, 1) + np.eye(5)
    K = 7
    c = np.linalg.norm(A, axis=(1, 2))[:, None, None]
    I_B = np.eye(5) - A / c
    ref = sum(np.linalg.matrix_power(I_B, k) for k in range(K + 1)) / c
    np.testing.assert_allclose(polynomial_inverse(A, np.ones(K), np.zeros(K)), ref, rtol=1e-12, atol=1e-14)


def test_polynomial_inverse_momentum_step_by_hand():
    from mesa_ref.probing import polynomial_inverse
    A = np.array([[2.0, 0.5], [0.5, 1.0]])
    c = np.linalg.norm(A)
    B, I = A / c, np.eye(2)
    a, b = (1.1, 3.0), (0.0, 0.7)
    P1 = I - a[0] * B
    X1 = I + P1                                        # beta_1 = 0: no momentum at the first step
    P2 = P1 @ (I - a[1] * B)
    X2 = X1 + P2 + b[1] * (X1 - I)
    np.testing.assert_allclose(polynomial_inverse(A, a, b), X2 / c, rtol=1e-14)


def test_authors_coefficients_approximate_the_inverse_on_their_range():
    # their fitted 6-step polynomial is a usable inverse: much closer to A^-1 than the identity / ||A|| is
    from mesa_lab.experiments.probe_layers import AUTHORS_POLY
    from mesa_ref.probing import polynomial_inverse
    rng = np.random.default_rng(1)
    s = rng.normal(size=(64, 40, 4)) * 0.5
    A = np.einsum("bti,btj->bij", s, s) + 1e-3 * np.eye(4)
    alphas, betas = AUTHORS_POLY["raw"]
    err = np.linalg.norm(polynomial_inverse(A, alphas, betas) @ A - np.eye(4), axis=(1, 2))
    c = np.linalg.norm(A, axis=(1, 2))[:, None, None]
    err0 = np.linalg.norm(A / c - np.eye(4), axis=(1, 2))
    assert np.median(err) < 0.5 * np.median(err0)


def test_authors_target_uses_the_states_before_t():
    from mesa_ref.probing import authors_inverse_target, polynomial_inverse
    rng = np.random.default_rng(2)
    states = rng.normal(size=(3, 6, 2))
    a, b = (1.0, 2.0, 2.0), (0.0, 0.5, 0.5)
    y = authors_inverse_target(states, a, b, lam=0.1)
    t = 4                                              # 1-based position 5: s_5 against s_1..s_4
    A = states[1, :t].T @ states[1, :t] + 0.1 * np.eye(2)
    np.testing.assert_allclose(y[1, t], polynomial_inverse(A, a, b) @ states[1, t], rtol=1e-12)
    np.testing.assert_allclose(y[:, 0], states[:, 0] * (polynomial_inverse(0.1 * np.eye(2), a, b)[0, 0]),
                               rtol=1e-12)


def test_insample_probe_error_drops_norm_outliers_and_has_no_bias():
    from mesa_ref.probing import insample_probe_error
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(200, 3))
    W = rng.normal(size=(3, 2))
    Y = Z @ W
    assert insample_probe_error(Z, Y) < 1e-20                     # exactly linear without bias: zero error
    assert insample_probe_error(Z, Y + 1.0) > 0.1                  # a constant offset is not absorbed (no bias)
    Y2 = Y.copy()
    Y2[0] = 1e6                                                    # one far outlier is dropped, not fitted
    assert insample_probe_error(Z, Y2) < 1e-20
    Yn = Y + rng.normal(size=Y.shape)
    norms = np.linalg.norm(Yn, axis=1)
    keep = (norms - norms.mean()) / norms.std() < 2
    assert 0 < (~keep).sum() < 20                                  # this sample has a few outliers to drop
    Zk, Yk = Z[keep], Yn[keep]
    manual = ((Zk @ np.linalg.lstsq(Zk, Yk, rcond=None)[0] - Yk) ** 2).sum() / (2 * keep.sum())
    assert insample_probe_error(Z, Yn) == pytest.approx(manual, rel=1e-12)


def test_linearising_a_hybrid_first_layer_is_refused_and_later_layers_work():
    cfg = ModelConfig(layers=("softmax", "softmax"), clip=None, input="embed", width=6, heads=2, key_size=3,
                      input_dim=2, output_dim=2, pos_enc_kq=True, io_bias=False, init_std=0.3)
    model = Transformer(cfg)
    params = model.init(seed=0, dtype=np.float64)
    d = linear_dynamics(np.random.default_rng(0), 8, 5, 2, 0.01)
    x, y = d.inputs, d.targets
    with pytest.raises(ValueError, match="hybrid first layer"):
        linearise_layer(model, params, 0, x, x, y, steps=2)
    r = linearise_layer(model, params, 1, x, x, y, steps=2)
    assert r.layer == 1 and np.isfinite(r.loss_linearised)
    with pytest.raises(ValueError, match="hybrid first layer"):
        attention_block_io(model, params, x, 0)
    # under unit_norm a recomputed attention would miss the normalisation: refused, not silently wrong
    normed = Transformer(cfg.replace(unit_norm=("q", "k")))
    with pytest.raises(ValueError, match="unit_norm"):
        linearise_layer(normed, params, 1, x, x, y, steps=2)
    with pytest.raises(ValueError, match="unit_norm"):
        attention_block_io(normed, params, x, 1)
