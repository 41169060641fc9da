"""Tests for mesa_ref.solvers: the hypothesised mesa-optimisers [A1]-[A5] (docs/math.md section 4)."""
import numpy as np
import pytest

from mesa_ref import data as D
from mesa_ref import solvers as S
from mesa_ref.gradcheck import numerical_gradient, rel_error


@pytest.fixture(scope="module")
def lin():
    """A small [T1] batch: s (B, T, n) inputs and targets."""
    d = D.linear_dynamics(0, 16, T=20, n=4)
    return np.ascontiguousarray(d.inputs), np.ascontiguousarray(d.targets)


def _pairs(s):
    """x_t = s_{t-1} (s_0 = 0), y_t = s_t, per the in-context data of docs/math.md section 4."""
    x = np.zeros_like(s)
    x[:, 1:] = s[:, :-1]
    return x, s


# ---------------------------------------------------------------------------------------------
# statistics and evaluation
# ---------------------------------------------------------------------------------------------

def test_context_stats_against_loops(lin):
    s, _ = lin
    YX, XX, q = S.context_stats(s)
    x, y = _pairs(s)
    for b in (0, 5):
        for t in (0, 1, 7, 19):
            assert np.allclose(YX[b, t], sum(np.outer(y[b, u], x[b, u]) for u in range(t + 1)))
            assert np.allclose(XX[b, t], sum(np.outer(x[b, u], x[b, u]) for u in range(t + 1)))
    assert np.array_equal(q, s)
    feats = np.random.default_rng(1).standard_normal(s.shape[:2] + (6,))
    YXf, XXf, qf = S.context_stats(s, feats)
    assert YXf.shape == (16, 20, 4, 6) and XXf.shape == (16, 20, 6, 6) and np.array_equal(qf, feats)
    assert np.allclose(YXf[2, 3], sum(np.outer(s[2, u], feats[2, u - 1]) for u in range(1, 4)))


def test_per_step_loss_hand_computation():
    rng = np.random.default_rng(0)
    pred, tgt = rng.standard_normal((2, 3, 4, 5))
    want = np.array([sum(np.sum((pred[b, t] - tgt[b, t]) ** 2) for b in range(3)) / (2 * 3)
                     for t in range(4)])
    assert np.allclose(S.per_step_loss(pred, tgt), want)
    assert np.isclose(S.mean_loss(pred, tgt), np.sum((pred - tgt) ** 2) / (2 * 3 * 4))
    with pytest.raises(ValueError, match="targets"):
        S.per_step_loss(pred, tgt[:, :2])


# ---------------------------------------------------------------------------------------------
# [A1] one GD step = one linear attention layer on constructed tokens
# ---------------------------------------------------------------------------------------------

def _linear_attention_layer(e, wq, wk, wv, wo, heads):
    """Plain causal linear attention: sum_h sum_{t'<=t} v_{t'} (k_{t'} . q_t) @ wo_h, (B, T, D)."""
    B, T, D = e.shape
    d, dv = wq.shape[1] // heads, wv.shape[1] // heads
    out = np.zeros((B, T, D))
    mask = np.tril(np.ones((T, T)))                            # [t, t'] = 1 if t' <= t
    for h in range(heads):
        q = e @ wq[:, h * d:(h + 1) * d]
        k = e @ wk[:, h * d:(h + 1) * d]
        v = e @ wv[:, h * dv:(h + 1) * dv]
        scores = np.einsum("btd,bud->btu", q, k) * mask        # k_{t'} . q_t, causal
        out += np.einsum("btu,bud->btd", scores, v) @ wo[h * dv:(h + 1) * dv]
    return out


def _gd_layer_weights(n, eta):
    """One head: key reads s_{t'-1} (slot 3), query reads eta s_t (slot 2), value reads s_{t'}
    (slot 1) and writes it to the output slot 0."""
    D = 4 * n
    eye = np.eye(n)
    wq, wk, wv, wo = np.zeros((D, n)), np.zeros((D, n)), np.zeros((D, n)), np.zeros((n, D))
    wk[3 * n:] = eye
    wq[2 * n:3 * n] = eta * eye
    wv[n:2 * n] = eye
    wo[:, :n] = eye
    return wq, wk, wv, wo


def test_gd_one_step_equals_linear_attention_layer(lin):
    s, _ = lin
    n, eta = s.shape[-1], 0.37
    wq, wk, wv, wo = _gd_layer_weights(n, eta)
    out = _linear_attention_layer(D.constructed_tokens(s), wq, wk, wv, wo, heads=1)
    pred = S.gd_one_step(s, eta)
    assert pred.shape == s.shape
    assert np.max(np.abs(out[..., :n] - pred)) < 1e-12
    # and the explicit formula W_t s_t, W_t = eta sum y x^T, at one (b, t)
    x, y = _pairs(s)
    W = eta * sum(np.outer(y[3, u], x[3, u]) for u in range(8))
    assert np.allclose(pred[3, 7], W @ s[3, 7])


def test_tune_eta_picks_grid_minimiser(lin):
    s, tgt = lin
    grid = np.array([0.01, 0.03, 0.1, 0.3])
    res = S.tune_eta(s, tgt, grid)
    losses = [S.mean_loss(S.gd_one_step(s, g), tgt) for g in grid]
    assert np.allclose(res.losses, losses)
    assert res.value == grid[int(np.argmin(losses))]
    # targets made by eta = 0.07 are fitted exactly at 0.07
    fake = S.gd_one_step(s, 0.07)
    res = S.tune_eta(s, fake, [0.05, 0.07, 0.09])
    assert res.value == 0.07 and res.losses[1] < 1e-25
    assert S.tune_eta(s, tgt).grid.size == S.ETA_GRID.size      # default grid


# ---------------------------------------------------------------------------------------------
# [A3] ridge
# ---------------------------------------------------------------------------------------------

def test_ridge_against_per_step_lstsq(lin):
    s, _ = lin
    lam = 0.05
    pred = S.ridge(s, lam)
    Wr = S.ridge_weights(s, lam)
    x, y = _pairs(s)
    n = s.shape[-1]
    for b in (0, 9):
        for t in (0, 1, 2, 10, 19):
            # ridge as an augmented least-squares problem: [X^T; sqrt(lam) I] W^T = [Y^T; 0]
            Xa = np.vstack([x[b, :t + 1], np.sqrt(lam) * np.eye(n)])
            Ya = np.vstack([y[b, :t + 1], np.zeros((n, n))])
            Wt = np.linalg.lstsq(Xa, Ya, rcond=None)[0].T
            assert np.allclose(Wr[b, t], Wt, atol=1e-10)
            assert np.allclose(pred[b, t], Wt @ s[b, t], atol=1e-10)
    # explicit per-(b, t) solve with features
    feats = np.random.default_rng(0).standard_normal(s.shape[:2] + (3,))
    pf = S.ridge(s, 1e-3, feats)
    YX, XX, q = S.context_stats(s, feats)
    b, t = 4, 12
    assert np.allclose(pf[b, t], YX[b, t] @ np.linalg.solve(XX[b, t] + 1e-3 * np.eye(3), feats[b, t]))


def test_tune_lam_picks_grid_minimiser(lin):
    s, tgt = lin
    grid = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    res = S.tune_lam(s, tgt, grid)
    losses = [S.mean_loss(S.ridge(s, g), tgt) for g in grid]
    assert np.allclose(res.losses, losses) and res.value == grid[int(np.argmin(losses))]
    fake = S.ridge(s, 0.3)
    res = S.tune_lam(s, fake, [0.1, 0.3, 1.0])
    assert res.value == 0.3 and res.losses[1] < 1e-25


def test_fewshot_baselines_against_lstsq():
    f = D.fewshot_regression(0, 3, N=8, n=3, two_task=True)
    lam = 0.1
    pr, pg = S.fewshot_ridge(f.xs, f.ys, lam), S.fewshot_gd(f.xs, f.ys, 0.4)
    assert np.all(pr[:, 0] == 0) and np.all(pg[:, 0] == 0)     # nothing seen before x_1
    for b in range(3):
        for i in range(1, 8):
            X, Y = f.xs[b, :i], f.ys[b, :i]
            Xa, Ya = np.vstack([X, np.sqrt(lam) * np.eye(3)]), np.vstack([Y, np.zeros((3, 3))])
            W = np.linalg.lstsq(Xa, Ya, rcond=None)[0].T
            assert np.allclose(pr[b, i], W @ f.xs[b, i], atol=1e-10)
            assert np.allclose(pg[b, i], 0.4 * (Y.T @ X) @ f.xs[b, i])
    # single task, noiseless: once n examples are in, small-lam ridge recovers y exactly
    g = D.fewshot_regression(1, 4, N=10, n=3)
    assert np.max(np.abs(S.fewshot_ridge(g.xs, g.ys, 1e-9)[:, 4:] - g.ys[:, 4:])) < 1e-6


# ---------------------------------------------------------------------------------------------
# [A2] K-step and preconditioned GD
# ---------------------------------------------------------------------------------------------

def test_gd_k_steps_converges_to_least_squares():
    rng = np.random.default_rng(0)
    s = rng.uniform(-1, 1, size=(4, 30, 3))                  # generic pairs: well-conditioned X X^T
    x, y = _pairs(s)
    _, XX, _ = S.context_stats(s)
    eta = 1.0 / np.linalg.eigvalsh(XX).max()
    ts = np.arange(10, 30)                                   # positions where X_t X_t^T is well-conditioned
    lsq = np.empty((4, ts.size, 3))
    for b in range(4):
        for i, t in enumerate(ts):
            W = np.linalg.lstsq(x[b, :t + 1], y[b, :t + 1], rcond=None)[0].T
            lsq[b, i] = W @ s[b, t]
    errs = [np.max(np.abs(S.gd_k_steps(s, eta, K)[:, ts] - lsq)) for K in (1, 10, 100, 1000)]
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:]))
    assert errs[-1] < 1e-8
    # one step is [A1]; K = 0 predicts 0
    assert np.allclose(S.gd_k_steps(s, 0.2, 1), S.gd_one_step(s, 0.2))
    assert np.all(S.gd_k_steps(s, 0.2, 0) == 0)


def test_preconditioned_gd(lin):
    s, _ = lin
    lam = 1e-2
    A = S.curvature(s, lam)
    Hexact = np.linalg.inv(A)
    # exact preconditioner, eta = 1: one step is ridge; the K-step form agrees
    assert np.allclose(S.preconditioned_gd(s, Hexact), S.ridge(s, lam), atol=1e-10)
    assert np.allclose(S.gd_k_steps(s, 1.0, 1, lam=lam, H=Hexact), S.ridge(s, lam), atol=1e-10)
    # identity preconditioner is plain GD
    eye = np.broadcast_to(np.eye(4), A.shape).copy()
    assert np.allclose(S.preconditioned_gd(s, eye, eta=0.3), S.gd_one_step(s, 0.3))
    # an approximate preconditioner: more K-steps approach ridge
    H = S.neumann_inverse(A, 3, a=70.0)
    e = [np.max(np.abs(S.gd_k_steps(s, 1.0, K, lam=lam, H=H) - S.ridge(s, lam))) for K in (1, 5, 50)]
    assert e[0] > e[1] > e[2]


# ---------------------------------------------------------------------------------------------
# [A4] inverse approximations
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spd():
    """A batch (3, 2) of SPD 5 x 5 matrices with spectra in [1, 8] (condition number <= 8)."""
    rng = np.random.default_rng(3)
    Q = D.haar_orthogonal(rng, 6, 5).reshape(3, 2, 5, 5)
    lam = rng.uniform(1.0, 8.0, size=(3, 2, 5))
    lam[..., 0], lam[..., 1] = 1.0, 8.0
    return np.einsum("...ij,...j,...kj->...ik", Q, lam, Q)


def _inv_err(A, H):
    return float(np.max(np.abs(H - np.linalg.inv(A))))


def test_neumann_converges(spd):
    # spectrum in [1, 8]: with a = 5 the error contracts by max|1 - lambda/a| = 0.8 per term
    errs = [_inv_err(spd, S.neumann_inverse(spd, K, a=5.0)) for K in (0, 5, 20, 200)]
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:])) and errs[-1] < 1e-12
    # K = 0 is I/a, K = 1 is (2I - A/a)/a
    assert np.allclose(S.neumann_inverse(spd, 1, a=10.0), (2 * np.eye(5) - spd / 10) / 10)


def test_newton_schulz_converges(spd):
    errs = [_inv_err(spd, S.newton_schulz_inverse(spd, K)) for K in (0, 3, 6, 12)]
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:])) and errs[-1] < 1e-12
    X0 = S.newton_schulz_inverse(spd, 0)
    assert np.allclose(X0, np.eye(5) / np.trace(spd, axis1=-2, axis2=-1)[..., None, None])


def test_richardson_converges_and_matches_neumann(spd):
    errs = [_inv_err(spd, S.richardson_inverse(spd, np.ones(K))) for K in (1, 10, 50, 400)]
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:])) and errs[-1] < 1e-12
    # unit steps on A/a are the Neumann series with K - 1 terms
    assert np.allclose(S.richardson_inverse(spd, np.ones(6), scale=10.0), S.neumann_inverse(spd, 5, a=10.0))


def test_chebyshev_converges_at_the_chebyshev_rate(spd):
    mu = np.linalg.eigvalsh(spd / np.linalg.norm(spd, axis=(-2, -1))[..., None, None])
    lmin, lmax = mu.min(), mu.max()
    sigma = (lmax + lmin) / (lmax - lmin)
    errs = []
    for K in (1, 4, 8, 16, 30, 60):
        al, be = S.chebyshev_params(K, lmin, lmax)
        H = S.chebyshev_inverse(spd, al, be)
        R = np.eye(5) - spd @ H                               # residual = T_K((d - A')/c) / T_K(sigma)
        bound = 1.0 / np.cosh(K * np.arccosh(sigma))          # = max over [lmin, lmax], attained
        assert np.linalg.norm(R, 2, axis=(-2, -1)).max() <= bound * (1 + 1e-6) + 1e-13
        errs.append(_inv_err(spd, H))
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:])) and errs[-1] < 1e-12
    # beta = 0 makes it Richardson
    assert np.allclose(S.chebyshev_inverse(spd, [0.5, 1.2], [0, 0]), S.richardson_inverse(spd, [0.5, 1.2]))


def test_poly_iteration_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    K = 5
    alphas, betas = rng.uniform(0.5, 2, K), rng.uniform(0, 0.5, K)
    g = rng.standard_normal(K)
    chis = S._poly_iteration(alphas, betas)
    ga, gb = S._poly_iteration_backward(chis, alphas, betas, g)
    na = numerical_gradient(lambda: S._poly_iteration(alphas, betas)[-1] @ g, alphas)
    nb = numerical_gradient(lambda: S._poly_iteration(alphas, betas)[-1] @ g, betas)
    assert rel_error(ga, na) < 1e-8 and rel_error(gb, nb) < 1e-8
    # the coefficient vector is the matrix iteration: x_K(A') = sum_j chi_j A'^j
    A = np.diag([0.2, 0.5, 0.9])
    X = S.chebyshev_inverse(A, alphas, betas, scale=1.0)
    assert np.allclose(X, sum(c * np.linalg.matrix_power(A, j) for j, c in enumerate(chis[-1])))


def test_fit_inverse_params(lin):
    s, tgt = lin
    lam = 1e-3
    A = S.curvature(s, lam)
    losses = {}
    for method in ("richardson", "chebyshev"):
        fit = S.fit_inverse_params(s, tgt, 3, method, lam=lam, steps=300)
        H = (S.richardson_inverse(A, fit.alphas) if method == "richardson"
             else S.chebyshev_inverse(A, fit.alphas, fit.betas))
        # the reported loss is the loss of the matrix iteration
        assert np.isclose(fit.loss, S.mean_loss(S.preconditioned_gd(s, H), tgt), rtol=1e-9)
        H0 = S.richardson_inverse(A, np.ones(3))
        assert np.isclose(fit.loss_init, S.mean_loss(S.preconditioned_gd(s, H0), tgt), rtol=1e-9)
        assert fit.loss < 0.9 * fit.loss_init
        losses[method] = fit.loss
        if method == "richardson":
            assert np.all(fit.betas == 0)
    # the Chebyshev family contains Richardson's (betas = 0) and starts from the same point
    assert losses["chebyshev"] <= losses["richardson"] * (1 + 1e-6)
    # K = 1: the loss is a quadratic in alpha; its minimiser is the line search optimum of
    # preconditioned_gd(s, I / ||A||_F, eta = alpha)
    fit = S.fit_inverse_params(s, tgt, 1, "richardson", lam=lam, steps=3000, lr=0.01)
    P = S.preconditioned_gd(s, np.eye(4) / np.linalg.norm(A, axis=(-2, -1))[..., None, None])
    alpha_star = np.sum(P * tgt) / np.sum(P * P)
    assert abs(fit.alphas[0] - alpha_star) < 1e-3 * alpha_star


# ---------------------------------------------------------------------------------------------
# [A5] the reverse-engineered one-layer algorithm
# ---------------------------------------------------------------------------------------------

def test_revalg_reads_the_gd_construction(lin):
    s, _ = lin
    n, eta = s.shape[-1], 0.21
    wq, wk, wv, wo = _gd_layer_weights(n, eta)
    C = S.revalg_coeffs_from_weights(wq, wk, wv, wo, n, 1)
    want = np.zeros((2, 2, 2))
    want[0, 1, 0] = eta                                      # value s_{t'}, key s_{t'-1}, query s_t
    assert np.allclose(C, want)
    direct = _linear_attention_layer(D.constructed_tokens(s), wq, wk, wv, wo, 1)[..., :n]
    assert np.max(np.abs(S.revalg_predict(s, C) - direct)) < 1e-12
    assert np.max(np.abs(S.revalg_predict(s, C) - S.gd_one_step(s, eta))) < 1e-12


def test_revalg_equals_layer_with_block_scaled_identity_weights(lin):
    """Two heads whose weights are kron(random 4 x r, I_n): every n x n block of WK WQ^T and
    WV WO is a scaled identity, so the read coefficients reproduce the layer exactly (all 8
    terms are exercised, including slots 1 and 2 both holding s_t)."""
    s, _ = lin
    n, heads, r = s.shape[-1], 2, 2
    rng = np.random.default_rng(5)
    eye = np.eye(n)
    blocks = lambda: np.concatenate([np.kron(rng.standard_normal((4, r)), eye) for _ in range(heads)], 1)  # noqa: E731
    wq, wk, wv = blocks(), blocks(), blocks()                                  # (4n, heads*r*n)
    wo = np.concatenate([np.kron(rng.standard_normal((r, 4)), eye) for _ in range(heads)], 0)
    C, Ah, bh = S.revalg_coeffs_from_weights(wq, wk, wv, wo, n, heads, return_heads=True)
    assert C.shape == (2, 2, 2) and Ah.shape == (heads, 2, 2) and bh.shape == (heads, 2)
    assert np.all(np.abs(C) > 1e-3)
    direct = _linear_attention_layer(D.constructed_tokens(s), wq, wk, wv, wo, heads)[..., :n]
    assert np.max(np.abs(S.revalg_predict(s, C) - direct)) < 1e-10 * np.max(np.abs(direct))
    # least squares on the layer's own outputs recovers the coefficients
    assert np.allclose(S.revalg_fit(s, direct), C, rtol=1e-8, atol=1e-10)


def test_revalg_fit(lin):
    s, tgt = lin
    C = S.revalg_fit(s, tgt)
    best = S.mean_loss(S.revalg_predict(s, C), tgt)
    # least squares: no better point nearby, and at least as good as the best GD step
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert S.mean_loss(S.revalg_predict(s, C + 1e-3 * rng.standard_normal(C.shape)), tgt) > best
    assert best <= S.tune_eta(s, tgt).losses.min() + 1e-12


# ---------------------------------------------------------------------------------------------
# dtypes and argument checks
# ---------------------------------------------------------------------------------------------

def test_float32_in_float32_out(lin):
    s = lin[0].astype(np.float32)
    A = S.curvature(s, 1e-3)
    outs = [S.gd_one_step(s, 0.1), S.gd_k_steps(s, 0.01, 3), S.ridge(s, 1e-3),
            S.preconditioned_gd(s, S.newton_schulz_inverse(A, 3)), S.neumann_inverse(A, 3),
            S.richardson_inverse(A, [1.0, 1.0]), S.chebyshev_inverse(A, [1.0], [0.0]),
            S.revalg_predict(s, np.ones(8))]
    assert all(o.dtype == np.float32 for o in outs)
    assert np.allclose(S.ridge(s, 1e-2), S.ridge(lin[0], 1e-2), atol=1e-3)


def test_bad_arguments(lin):
    s, tgt = lin
    with pytest.raises(ValueError, match="s"):
        S.ridge(s[0], 1e-3)
    with pytest.raises(ValueError, match="lam"):
        S.ridge(s, 0.0)
    with pytest.raises(ValueError, match="feats"):
        S.gd_one_step(s, 0.1, feats=np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="K"):
        S.gd_k_steps(s, 0.1, -1)
    with pytest.raises(ValueError, match="method"):
        S.fit_inverse_params(s, tgt, 2, "newton")
    with pytest.raises(ValueError, match="A"):
        S.neumann_inverse(np.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match="H"):
        S.preconditioned_gd(s, np.zeros((2, 2, 2, 2)))
