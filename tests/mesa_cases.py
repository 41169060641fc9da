"""Inputs and tolerances of the mesa-layer tests, shared by the reference, fast, GPU and chunkwise checks
(tests/fast/test_fast_mesa.py, tests/ops/test_mesa_chunkwise.py, tests/gpu/test_cuda_kernels.py and the CUDA
simulator's runner)."""
import numpy as np

NAMES = ("out", "dq", "dk", "dv", "dlam", "dgamma")

# Tolerance on max|fast - truth| / max|truth| per tensor, truth = float64 reference.
TOL = {
    **{(np.float64, n): 1e-10 for n in NAMES},        # measured <= 2e-14 on these inputs
    (np.float32, "out"): 1e-5,                        # measured <= 3e-6 (T <= 200)
    (np.float32, "dq"): 1e-5,
    (np.float32, "dv"): 1e-5,
    # dk_t = D_t v_t - C_t k_t is a difference of two sums over t'' >= t: some cancellation
    (np.float32, "dk"): 2e-5,
    # dlam, dgamma sum products over every (b, t) of a head: more rounding, and cancellation
    (np.float32, "dlam"): 2e-5,
    (np.float32, "dgamma"): 2e-5,
}
# lam = 1e-3: A_t = sum k k^T + lam I has condition number ~1e3-1e5 (more while T < d), and every
# implementation loses that factor of precision: tolerances x ILL_CONDITIONED, and in float32 at
# least 4x the reference's own float32 error (same recursion, rounding in another order: errors
# of the same size, not equal).
ILL_CONDITIONED = 1e3
REF32_FACTOR = 4.0


def _tol(dtype, name, T, ill=False):
    t = TOL[(dtype, name)]
    t *= max(1.0, T / 256)            # rounding accumulates along the recursion: looser for long T
    return t * (ILL_CONDITIONED if ill else 1.0)


def _inputs(B, H, T, d, dv, *, seed=0, lam_scale=1.0, gamma=False):
    """q ~ N(0,1), k ~ N(0,1)/sqrt(d) (so k.k ~ 1), v, dout ~ N(0,1); lam in lam_scale*[0.5, 2]."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, T, d))
    k = rng.standard_normal((B, H, T, d)) / np.sqrt(d)
    v = rng.standard_normal((B, H, T, dv))
    g = rng.standard_normal((B, H, T, dv))
    lam = lam_scale * rng.uniform(0.5, 2.0, H)
    gam = rng.uniform(0.7, 1.0, H) if gamma else None
    return q, k, v, g, lam, gam


def _good():
    q, k, v, _, lam, gam = _inputs(2, 3, 4, 5, 4, seed=7, gamma=True)
    return dict(q=q, k=k, v=v, lam=lam, gamma=gam)


def _bad_inputs():
    g = _good()
    nan_q = g["q"].copy()
    nan_q[0, 1, 2, 3] = np.nan
    return {
        "q-rank3": dict(g, q=g["q"][0]),
        "k-shape": dict(g, k=g["k"][:, :, :3]),
        "v-leading-shape": dict(g, v=g["v"][:1]),
        "q-nan": dict(g, q=nan_q),
        "k-inf": dict(g, k=np.full_like(g["k"], np.inf)),
        "v-int": dict(g, v=g["v"].astype(np.int64)),
        "mixed-dtype": dict(g, k=g["k"].astype(np.float32)),
        "lam-zero": dict(g, lam=np.array([1.0, 0.0, 1.0])),
        "lam-negative": dict(g, lam=-g["lam"]),
        "lam-shape": dict(g, lam=np.ones(4)),
        "lam-list": dict(g, lam=[1.0, 1.0, 1.0]),
        "gamma-above-1": dict(g, gamma=np.array([1.0, 1.5, 0.9])),
        "gamma-zero": dict(g, gamma=np.array([1.0, 0.0, 0.9])),
        "backward-name": dict(g, backward="rewind"),
        "checkpoint_every-0": dict(g, backward="checkpoint", checkpoint_every=0),
        "checkpoint_every-float": dict(g, backward="checkpoint", checkpoint_every=2.5),
    }
