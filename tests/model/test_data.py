"""Tests for mesa_ref.data: the tasks [T1]-[T5] (docs/math.md section 1)."""
import numpy as np
import pytest

from mesa_ref import data as D
from mesa_ref.ops.activations import gelu_forward


# ---------------------------------------------------------------------------------------------
# [T1] Haar-orthogonal W* and the dynamics
# ---------------------------------------------------------------------------------------------

def test_haar_orthogonal_is_orthogonal_and_haar():
    W = D.haar_orthogonal(0, 2000, 10)
    eye = np.eye(10)
    assert W.shape == (2000, 10, 10)
    assert np.max(np.abs(W @ np.swapaxes(W, 1, 2) - eye)) < 1e-12
    assert np.max(np.abs(np.swapaxes(W, 1, 2) @ W - eye)) < 1e-12
    det = np.linalg.det(W)
    assert np.allclose(np.abs(det), 1.0)
    frac_pos = np.mean(det > 0)
    assert 0.45 < frac_pos < 0.55                     # both determinant signs, about equally
    # Haar: every entry has mean 0 and second moment 1/n. Without the sign fix of the QR
    # factorisation, the diagonal of Q is biased (LAPACK gives Q[0, 0] < 0 always).
    assert abs(W.mean()) < 0.005
    assert abs(np.diagonal(W, axis1=1, axis2=2).mean()) < 0.01
    assert abs(W[:, 0, 0].mean()) < 0.03
    assert abs(np.mean(W ** 2) - 0.1) < 0.002
    # E[tr W] = 0 and E[tr(W)^2] = 1 for Haar O(n)
    tr = np.trace(W, axis1=1, axis2=2)
    assert abs(tr.mean()) < 0.1
    assert abs(np.mean(tr ** 2) - 1.0) < 0.15


def test_linear_dynamics_shapes_and_start():
    d = D.linear_dynamics(1, 8, T=12, n=5)
    assert d.states.shape == (8, 13, 5) and d.W.shape == (8, 5, 5) and d.noise.shape == (8, 12, 5)
    assert d.inputs.shape == (8, 12, 5) and d.targets.shape == (8, 12, 5)
    assert np.array_equal(d.inputs[:, 1:], d.targets[:, :-1])
    assert np.all(np.abs(d.states[:, 0]) <= 1.0)      # s_1 ~ U[-1, 1]^n
    assert d.states.dtype == np.float64


def test_noise_level_recovered_without_clipping():
    sigma = 0.05
    d = D.linear_dynamics(3, 256, T=40, n=6, sigma=sigma, clip=None)
    resid = d.states[:, 1:] - np.einsum("bij,btj->bti", d.W, d.states[:, :-1])
    assert np.max(np.abs(resid - d.noise)) < 1e-12
    assert abs(resid.std() / sigma - 1.0) < 0.03
    assert abs(resid.mean()) < 3 * sigma / np.sqrt(resid.size) * 3


def test_clipping_holds():
    clip = 1.5
    d = D.linear_dynamics(4, 64, T=30, n=4, sigma=0.5, clip=clip)
    assert np.max(np.abs(d.states)) <= clip
    assert np.any(np.abs(d.states) == clip)           # clipping is active in this setting
    expected = np.clip(np.einsum("bij,btj->bti", d.W, d.states[:, :-1]) + d.noise, -clip, clip)
    assert np.max(np.abs(d.states[:, 1:] - expected)) < 1e-12


def test_seeds_repeatable_and_distinct():
    a = D.linear_dynamics(7, 4, T=5, n=3)
    b = D.linear_dynamics(7, 4, T=5, n=3)
    c = D.linear_dynamics(8, 4, T=5, n=3)
    g = D.linear_dynamics(np.random.default_rng(7), 4, T=5, n=3)
    assert np.array_equal(a.states, b.states) and np.array_equal(a.W, b.W)
    assert np.array_equal(a.states, g.states)
    assert not np.allclose(a.states, c.states)
    # a Generator advances: two calls give different batches
    rng = np.random.default_rng(0)
    assert not np.allclose(D.linear_dynamics(rng, 2, T=3, n=2).states,
                           D.linear_dynamics(rng, 2, T=3, n=2).states)


def test_float32_is_rounded_float64():
    a = D.linear_dynamics(5, 3, T=6, n=4, dtype=np.float64)
    b = D.linear_dynamics(5, 3, T=6, n=4, dtype=np.float32)
    assert b.states.dtype == np.float32 and b.W.dtype == np.float32
    assert np.array_equal(b.states, a.states.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# [T2] constructed tokens and the batch helper
# ---------------------------------------------------------------------------------------------

def test_constructed_token_layout():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((2, 5, 3))
    e = D.constructed_tokens(s)
    assert e.shape == (2, 5, 12) and e.dtype == s.dtype
    for b in range(2):
        for t in range(5):
            prev = s[b, t - 1] if t > 0 else np.zeros(3)
            assert np.array_equal(e[b, t], np.concatenate([np.zeros(3), s[b, t], s[b, t], prev]))
    assert D.constructed_tokens(s.astype(np.float32)).dtype == np.float32


def test_linear_dynamics_batch():
    x, y = D.linear_dynamics_batch(11, 4, T=7, n=3)
    d = D.linear_dynamics(11, 4, T=7, n=3)
    assert x.shape == (4, 7, 12) and y.shape == (4, 7, 3)
    assert np.array_equal(x, D.constructed_tokens(d.inputs))
    assert np.array_equal(y, d.targets)
    xr, yr = D.linear_dynamics_batch(11, 4, T=7, n=3, tokens="raw", dtype=np.float32)
    assert xr.shape == (4, 7, 3) and xr.dtype == np.float32 and yr.dtype == np.float32
    assert np.array_equal(xr, d.inputs.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# [T3] partially observed
# ---------------------------------------------------------------------------------------------

def test_partially_observed():
    p = D.partially_observed(2, 300, T=9, n=4, m=3, k=3)
    assert p.C.shape == (300, 3, 4) and p.obs.shape == (300, 10, 3)
    assert p.tokens.shape == (300, 9, 9) and p.targets.shape == (300, 9, 3)
    assert np.max(np.abs(p.obs - np.einsum("bmn,btn->btm", p.C, p.states))) < 1e-12   # no obs noise
    assert abs(p.C.std() - 0.5) < 0.02 and abs(p.C.mean()) < 0.02                      # 0.5 N(0, 1)
    assert np.array_equal(p.targets, p.obs[:, 1:])
    # hidden states are the [T1] states for the same seed
    assert np.array_equal(p.states, D.linear_dynamics(2, 300, T=9, n=4).states)
    # token t = (o_t, o_{t-1}, o_{t-2}), zeros before o_1
    o = p.obs
    for t in range(9):
        for j in range(3):
            want = o[:, t - j] if t - j >= 0 else np.zeros((300, 3))
            assert np.array_equal(p.tokens[:, t, 3 * j:3 * (j + 1)], want)
    # m defaults to n; observation noise level
    q = D.partially_observed(2, 200, T=20, n=4, obs_sigma=0.1)
    assert q.C.shape == (200, 4, 4)
    resid = q.obs - np.einsum("bmn,btn->btm", q.C, q.states)
    assert abs(resid.std() / 0.1 - 1) < 0.05
    x, y = D.partially_observed_batch(2, 5, T=6, n=4, m=2, k=2, dtype=np.float32)
    assert x.shape == (5, 6, 4) and y.shape == (5, 6, 2) and x.dtype == np.float32


# ---------------------------------------------------------------------------------------------
# [T4] nonlinear
# ---------------------------------------------------------------------------------------------

def test_nonlinear_dynamics():
    A, Bm = D.mlp_params(0, 5)
    assert A.shape == (5, 20) and Bm.shape == (20, 5)
    d = D.nonlinear_dynamics(9, 16, T=10, n=5, sigma=0.01)
    assert np.array_equal(d.A, A) and np.array_equal(d.Bm, Bm)        # fixed per data set
    d2 = D.nonlinear_dynamics(10, 16, T=10, n=5)
    assert np.array_equal(d2.A, A) and not np.allclose(d2.W, d.W)      # W* per sequence
    s = d.states[:, :-1]
    # f(x) = gelu(x A) B with tanh gelu, normalised; the step is W* f/||f|| + eps
    g = 0.5 * (s @ A) * (1 + np.tanh(np.sqrt(2 / np.pi) * ((s @ A) + 0.044715 * (s @ A) ** 3)))
    f = g @ Bm
    phi = f / np.linalg.norm(f, axis=-1, keepdims=True)
    assert np.allclose(D.mlp_features(s, A, Bm), phi, atol=1e-14)
    nxt = np.einsum("bij,btj->bti", d.W, phi) + d.noise
    assert np.max(np.abs(d.states[:, 1:] - nxt)) < 1e-12
    assert np.allclose(np.linalg.norm(d.states[:, 1:] - d.noise, axis=-1), 1.0)
    # the tanh approximation, not the erf gelu: gelu(1) = 0.841192 (erf: 0.841345)
    assert abs(gelu_forward(np.array([1.0]))[0][0] - 0.8411919906) < 1e-9
    x, y = D.nonlinear_batch(9, 16, T=10, n=5)
    assert x.shape == (16, 10, 20) and np.array_equal(y, d.targets)


def test_nonlinear_first_state_range_and_raw_task():
    """s1_range scales the first state's uniform draw (the same draws: 0.25 x those of range 1); the task's raw
    tokens are the states themselves, and its record keeps the new fields out at their defaults."""
    from mesa_ref.tasks import NonlinearTask, task_from_dict
    d1, dq = D.nonlinear_dynamics(4, 64, T=5, n=3), D.nonlinear_dynamics(4, 64, T=5, n=3, s1_range=0.25)
    assert np.allclose(dq.states[:, 0], 0.25 * d1.states[:, 0], rtol=0, atol=1e-15)
    assert np.abs(dq.states[:, 0]).max() <= 0.25 < np.abs(d1.states[:, 0]).max()
    with pytest.raises(ValueError, match="s1_range"):
        D.nonlinear_dynamics(4, 2, T=5, n=3, s1_range=0.0)
    t = NonlinearTask(n=3, T=5, tokens="raw", s1_range=0.25)
    x, y = t.batch(np.random.default_rng(1), 8, np.float64)
    assert x.shape == (8, 5, 3) and np.array_equal(x[:, 1:], y[:, :-1])
    s, feats = t.baseline_inputs(x)
    assert np.array_equal(s, x) and feats.shape == x.shape
    assert "tokens" not in NonlinearTask(n=3).to_dict() and "s1_range" not in NonlinearTask(n=3).to_dict()
    assert task_from_dict(t.to_dict()) == t and t.to_dict()["s1_range"] == 0.25
    with pytest.raises(ValueError, match="tokens"):
        NonlinearTask(tokens="history")


# ---------------------------------------------------------------------------------------------
# [T5] few-shot regression
# ---------------------------------------------------------------------------------------------

def test_fewshot_layout_and_readout():
    f = D.fewshot_regression(0, 3, N=4, n=2)
    assert f.xs.shape == (3, 4, 2) and f.W2 is None
    assert np.allclose(f.ys, np.einsum("bij,bnj->bni", f.W, f.xs))
    seq = f.seq
    assert seq.shape == (3, 8, 2)
    assert np.array_equal(seq[:, 0::2], f.xs) and np.array_equal(seq[:, 1::2], f.ys)
    assert np.array_equal(D.fewshot_read_positions(4), [0, 2, 4, 6])
    lay = D.fewshot_sequence(f.xs, f.ys)
    assert np.array_equal(lay.seq[:, lay.read_pos], f.xs)       # prediction of y_i read at x_i
    assert np.array_equal(lay.seq[:, lay.y_pos], f.ys)
    assert lay.eos_pos.size == 0 and lay.prompt_pos.size == 0


def test_fewshot_eos_and_prompt_placement():
    f = D.fewshot_regression(1, 2, N=3, n=2)
    eos = np.array([7.0, -7.0])
    prompt = np.array([[1.0, 2.0], [3.0, 4.0]])
    lay = D.fewshot_sequence(f.xs, f.ys, eos=eos, prompt=prompt)
    # [p1, p2, x1, y1, eos, x2, y2, eos, x3, y3, eos]
    assert lay.seq.shape == (2, 11, 2)
    assert np.array_equal(lay.prompt_pos, [0, 1]) and np.array_equal(lay.read_pos, [2, 5, 8])
    assert np.array_equal(lay.y_pos, [3, 6, 9]) and np.array_equal(lay.eos_pos, [4, 7, 10])
    assert np.array_equal(lay.seq[:, :2], np.broadcast_to(prompt, (2, 2, 2)))
    assert np.array_equal(lay.seq[:, lay.eos_pos], np.broadcast_to(eos, (2, 3, 2)))
    assert np.array_equal(lay.seq[:, lay.read_pos], f.xs)
    assert np.array_equal(lay.seq[:, lay.y_pos], f.ys)
    assert np.array_equal(D.fewshot_read_positions(3, eos=True, prompt_len=2), lay.read_pos)
    only_eos = D.fewshot_sequence(f.xs, f.ys, eos=eos)
    assert np.array_equal(only_eos.read_pos, [0, 3, 6])        # the official "every third position"
    only_prompt = D.fewshot_sequence(f.xs, f.ys, prompt=prompt)
    assert np.array_equal(only_prompt.read_pos, [2, 4, 6]) and only_prompt.seq.shape == (2, 8, 2)
    with pytest.raises(ValueError, match="eos"):
        D.fewshot_sequence(f.xs, f.ys, eos=np.ones(3))
    with pytest.raises(ValueError, match="prompt"):
        D.fewshot_sequence(f.xs, f.ys, prompt=np.ones((2, 3)))


def test_fewshot_two_task_switch():
    f = D.fewshot_regression(2, 5, N=7, n=3, two_task=True)
    assert f.switch == 3 and f.W2 is not None and not np.allclose(f.W, f.W2)
    assert np.allclose(f.ys[:, :3], np.einsum("bij,bnj->bni", f.W, f.xs[:, :3]))
    assert np.allclose(f.ys[:, 3:], np.einsum("bij,bnj->bni", f.W2, f.xs[:, 3:]))
    assert not np.allclose(f.ys[:, 3:], np.einsum("bij,bnj->bni", f.W, f.xs[:, 3:]))
    assert np.max(np.abs(f.W2 @ np.swapaxes(f.W2, 1, 2) - np.eye(3))) < 1e-12


def test_fewshot_batch_is_shifted_sequence():
    x, y = D.fewshot_batch(3, 2, N=4, n=2, dtype=np.float32)
    z = D.fewshot_regression(3, 2, N=4, n=2, dtype=np.float32).seq
    assert x.shape == (2, 7, 2) and x.dtype == np.float32
    assert np.array_equal(x, z[:, :-1]) and np.array_equal(y, z[:, 1:])
    # at x_i's position the target is y_i
    f = D.fewshot_regression(3, 2, N=4, n=2, dtype=np.float32)
    assert np.array_equal(y[:, D.fewshot_read_positions(4)], f.ys)


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,name", [
    (dict(batch=0), "batch"), (dict(T=0), "T"), (dict(n=-1), "n"), (dict(sigma=-0.1), "sigma"),
    (dict(clip=0.0), "clip"), (dict(dtype=np.int32), "dtype"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    args = dict(batch=2, T=3, n=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        D.linear_dynamics(0, **args)


def test_bad_rng_and_tokens():
    with pytest.raises(ValueError, match="rng"):
        D.linear_dynamics(1.5, 2)
    with pytest.raises(ValueError, match="tokens"):
        D.linear_dynamics_batch(0, 2, T=3, n=2, tokens="embedded")
    with pytest.raises(ValueError, match="s"):
        D.constructed_tokens(np.zeros((2, 3)))
