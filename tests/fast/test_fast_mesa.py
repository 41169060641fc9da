"""mesa_fast's mesa-layer kernels against the NumPy reference [M1]-[M4].

Truth is the float64 reference (mesa_ref.ops.mesa); the fast kernels run in float64 (agreement
to ~1e-10) and in float32 (compared with the float64 truth through the tolerance table TOL).
Also: exact properties of the fast kernels (strategies agree bit for bit, a sequence's result
does not depend on its batch neighbours), a finite-difference check of the fast op itself,
validation parity with the reference, the backend switch, and the Numba CUDA kernels on CuPy arrays
(skipped without CuPy and a GPU).
"""
import os

os.environ["CUPY_TF32"] = "0"      # never let CuPy use TF32 in agreement tests

import logging  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mesa_fast  # noqa: E402
from mesa_fast import backend as fast_backend  # noqa: E402
from mesa_fast import ops as fast_ops  # noqa: E402
from mesa_ref.gradcheck import numerical_gradient  # noqa: E402
from mesa_ref.ops import mesa as ref  # noqa: E402

from mesa_cases import NAMES, REF32_FACTOR, _bad_inputs, _good, _inputs, _tol  # noqa: E402


def _cast(x, dt):
    return None if x is None else x.astype(dt)


def _run(ops, q, k, v, g, lam, gam, **kw):
    out, cache = ops.mesa_forward(q, k, v, lam, gamma=gam, **kw)
    grads = ops.mesa_backward(g, cache)
    return (out,) + tuple(grads), cache


def _assert_close(name, got, want, tol):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite values"
    scale = max(float(np.max(np.abs(want))), 1e-30)
    err = float(np.max(np.abs(got - want)))
    assert err <= tol * scale, (f"{name}: max abs err {err:.3e}, max rel err {err / scale:.3e} "
                                f"> tol {tol:.1e} ({100 * err / scale / tol:.0f}% of tolerance)")


def _check_against_reference(B, H, T, d, dv, dtype, gamma, backward, *, lam_scale=1.0, ill=False,
                             transform=None, seed=0):
    q, k, v, g, lam, gam = _inputs(B, H, T, d, dv, seed=seed, lam_scale=lam_scale, gamma=gamma)
    truth, _ = _run(ref, q, k, v, g, lam, gam)                        # float64 reference
    args = [_cast(x, dtype) for x in (q, k, v, g, lam, gam)]
    floor = {}
    if ill and dtype == np.float32:                                     # the reference's float32 error
        ref32, _ = _run(ref, *args)
        floor = {n: REF32_FACTOR * float(np.max(np.abs(a - w))) / max(float(np.max(np.abs(w))), 1e-30)
                 for n, a, w in zip(NAMES, ref32, truth)}
        if T < d:   # nearly singular A_t: each tensor's error is luck of the rounding; use the worst
            floor = dict.fromkeys(floor, max(floor.values()))
    if transform is not None:
        args = transform(*args)
    got, cache = _run(fast_ops, *args, backward=backward)
    assert len(got) == (6 if gamma else 5)
    for name, a, w in zip(NAMES, got, truth):
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}, expected {np.dtype(dtype)}"
        _assert_close(name, a, w, max(_tol(dtype, name, T, ill), floor.get(name, 0.0)))
    return got, cache


def _case_id(B, H, T, d, dv, dt, gamma, backward):
    return f"B{B}-H{H}-T{T}-d{d}-dv{dv}-{'f32' if dt == np.float32 else 'f64'}" \
           f"-{'gamma' if gamma else 'nogamma'}-{backward}"


CASES = [
    # (B, H, T, d, dv)
    (2, 3, 7, 5, 4),          # small, dv != d, N = 6 < 8 lanes (scalar gathers, padding lanes)
    (1, 1, 1, 3, 3),          # T = 1
    (2, 2, 63, 3, 5),         # long odd T, tiny d
    (5, 4, 9, 9, 12),         # N = 20: two full groups (register transposes, overlapping block) + a partial one
    (2, 4, 16, 8, 8),         # d = dv = 8: exactly one transpose block
    (1, 8, 12, 17, 3),        # d = 17 (odd, 4-row blocks with clamped rows), dv = 3 < 8
]
PARAMS = [(c, dt, gm, bw) for c in CASES for dt in (np.float64, np.float32)
          for gm in (False, True) for bw in ("store", "checkpoint")]


@pytest.mark.parametrize("case,dtype,gamma,backward", PARAMS,
                         ids=[_case_id(*c, dt, gm, bw) for c, dt, gm, bw in PARAMS])
def test_numba_matches_reference(case, dtype, gamma, backward):
    _check_against_reference(*case, dtype, gamma, backward)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("lam_scale,T", [(1e-3, 40), (1e-3, 5), (1e3, 40)],
                         ids=["lam1e-3-T40", "lam1e-3-T5", "lam1e3-T40"])
def test_numba_lam_edges(dtype, lam_scale, T):
    _check_against_reference(2, 2, T, 8, 8, dtype, True, "store", lam_scale=lam_scale,
                             ill=lam_scale < 1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_numba_noncontiguous_and_readonly_inputs(dtype):
    """Transposed views (as a model's head split produces) and read-only arrays."""
    def transform(q, k, v, g, lam, gam):
        def view(x):                   # same values, (B, T, H, d) memory order, read-only
            y = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
            assert not y.flags.c_contiguous
            y.flags.writeable = False
            return y
        return view(q), view(k), view(v), view(g), lam, gam
    _check_against_reference(3, 5, 11, 9, 8, dtype, True, "store", transform=transform)
    _check_against_reference(3, 5, 11, 9, 8, dtype, False, "checkpoint", transform=transform)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("gamma", [False, True], ids=["nogamma", "gamma"])
def test_store_and_checkpoint_are_bitwise_equal(dtype, gamma):
    """Both strategies rebuild the forward's R_t exactly, so every gradient is bit-for-bit equal."""
    q, k, v, g, lam, gam = (_cast(x, dtype) for x in _inputs(3, 4, 21, 10, 6, seed=3, gamma=gamma))
    a, _ = _run(fast_ops, q, k, v, g, lam, gam, backward="store")
    b, cache = _run(fast_ops, q, k, v, g, lam, gam, backward="checkpoint", checkpoint_every=5)
    assert cache.checkpoint_every == 5 and cache.backward == "checkpoint"
    for name, x, y in zip(NAMES, a, b):
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_result_does_not_depend_on_batch_neighbours():
    """Each SIMD lane runs one sequence: a sub-batch gives bit-for-bit the same rows."""
    q, k, v, g, lam, gam = (_cast(x, np.float32) for x in _inputs(6, 3, 13, 9, 9, seed=4, gamma=True))
    full, _ = _run(fast_ops, q, k, v, g, lam, gam)
    sub, _ = _run(fast_ops, q[2:3], k[2:3], v[2:3], g[2:3], lam, gam)
    for name, x, y in zip(NAMES[:4], full[:4], sub[:4]):
        np.testing.assert_array_equal(x[2:3], y, err_msg=name)


def test_thread_count_does_not_change_results():
    """Groups of 8 sequences are split across threads; the split must not change a single bit."""
    import numba
    q, k, v, g, lam, gam = (_cast(x, np.float32) for x in _inputs(5, 7, 9, 12, 6, seed=8, gamma=True))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one, _ = _run(fast_ops, q, k, v, g, lam, gam)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many, _ = _run(fast_ops, q, k, v, g, lam, gam)
    finally:
        numba.set_num_threads(before)
    for name, x, y in zip(NAMES, one, many):
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_cache_qt_is_the_references():
    q, k, v, g, lam, gam = _inputs(3, 3, 10, 9, 4, seed=5, gamma=True)
    _, cache = fast_ops.mesa_forward(q, k, v, lam, gamma=gam)
    _, rcache = ref.mesa_forward(q, k, v, lam, gamma=gam)
    _assert_close("qt", cache.qt, rcache.qt, 1e-10)
    assert cache.engine == "numba" and cache.lam.dtype == np.float64


@pytest.mark.parametrize("gamma", [False, True], ids=["nogamma", "gamma"])
def test_fast_gradients_by_finite_differences(gamma):
    """The fast op's own gradients against central differences of its own forward (float64)."""
    q, k, v, g, lam, gam = _inputs(1, 2, 5, 3, 2, seed=6, gamma=gamma)
    (_, *grads), _ = _run(fast_ops, q, k, v, g, lam, gam)

    def f():
        return fast_ops.mesa_forward(q, k, v, lam, gamma=gam)[0]

    wrt = [q, k, v, lam] + ([gam] if gamma else [])
    for name, x, got in zip(("dq", "dk", "dv", "dlam", "dgamma"), wrt, grads):
        num = numerical_gradient(f, x, g, h=1e-6)
        _assert_close(name, got, num, 1e-7)


# ----------------------------------------------------------------------------------------------
# validation: the same ValueError, message for message, as the reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(_bad_inputs()))
def test_validation_matches_reference(name):
    kw = _bad_inputs()[name]
    args = [kw.pop(n) for n in ("q", "k", "v", "lam")]
    with pytest.raises(ValueError) as want:
        ref.mesa_forward(*args, **kw)
    with pytest.raises(ValueError) as got:
        fast_ops.mesa_forward(*args, **kw)
    assert str(got.value) == str(want.value)


def test_downdate_is_reference_only():
    g = _good()
    with pytest.raises(ValueError, match="backward: 'downdate' is reference-only"):
        fast_ops.mesa_forward(g["q"], g["k"], g["v"], g["lam"], backward="downdate")


def test_backward_validation():
    g = _good()
    out, cache = fast_ops.mesa_forward(g["q"], g["k"], g["v"], g["lam"])
    with pytest.raises(ValueError, match="dout"):
        fast_ops.mesa_backward(out[:, :, :2], cache)
    with pytest.raises(ValueError, match="dout"):
        fast_ops.mesa_backward(out.astype(np.float32), cache)
    with pytest.raises(ValueError, match="dout"):
        fast_ops.mesa_backward(np.full_like(out, np.nan), cache)
    _, rcache = ref.mesa_forward(g["q"], g["k"], g["v"], g["lam"])
    with pytest.raises(ValueError, match="cache"):
        fast_ops.mesa_backward(out, rcache)


def test_numpy_in_numpy_out_same_dtype():
    for dt in (np.float32, np.float64):
        q, k, v, g, lam, _ = (_cast(x, dt) for x in _inputs(2, 2, 5, 4, 3))
        out, cache = fast_ops.mesa_forward(q, k, v, lam)
        grads = fast_ops.mesa_backward(g, cache)
        assert type(out) is np.ndarray and out.dtype == dt
        assert len(grads) == 4 and all(type(x) is np.ndarray and x.dtype == dt for x in grads)
        assert grads[3].shape == (2,)


# ----------------------------------------------------------------------------------------------
# the backend switch
# ----------------------------------------------------------------------------------------------


def test_set_backend_numba(clean_backend):
    assert mesa_fast.set_backend("numba") == "numba"
    assert mesa_fast.get_backend() == "numba"
    assert mesa_fast.set_backend(" Numba ") == "numba"


@pytest.mark.parametrize("bad", ["tpu", "", "cuda", None, 3])
def test_set_backend_rejects_unknown_names(clean_backend, bad):
    with pytest.raises(ValueError, match="backend"):
        mesa_fast.set_backend(bad)


def test_env_variable_is_respected(clean_backend):
    clean_backend.setenv("MESA_BACKEND", "numba")
    assert mesa_fast.get_backend() == "numba"
    clean_backend.setenv("MESA_BACKEND", "tpu")
    with pytest.raises(ValueError, match="MESA_BACKEND"):
        mesa_fast.get_backend()
    mesa_fast.set_backend("numba")          # an explicit choice wins over the variable
    assert mesa_fast.get_backend() == "numba"


@pytest.mark.skipif(fast_backend.cupy_available(), reason="a usable GPU is present")
def test_auto_without_gpu_picks_numba_and_logs(clean_backend, caplog):
    with caplog.at_level(logging.INFO, logger="mesa_fast"):
        assert mesa_fast.set_backend("auto") == "numba"
    assert any("chose 'numba'" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="cupy"):
        mesa_fast.set_backend("cupy")
    clean_backend.setenv("MESA_BACKEND", "cupy")
    fast_backend._reset_for_tests()
    g = _good()
    with pytest.raises(RuntimeError, match="cupy"):
        fast_ops.mesa_forward(g["q"], g["k"], g["v"], g["lam"])


# ----------------------------------------------------------------------------------------------
# the Numba CUDA kernels (mesa_fast/cuda/mesa.py) on CuPy arrays (skipped without CuPy and a usable GPU; the same
# kernels run in Numba's CUDA simulator in tests/gpu/test_cuda_kernels.py, which needs no GPU)
# ----------------------------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not fast_backend.cupy_available(),
                               reason="needs CuPy and a usable CUDA GPU (none here)")
GPU_CASES = [(2, 3, 7, 5, 4), (1, 1, 1, 3, 3), (2, 2, 63, 3, 5), (5, 4, 9, 9, 12), (2, 4, 50, 20, 20),
             (1, 2, 40, 64, 64), (1, 1, 30, 33, 17)]
GPU_PARAMS = [(c, dt, gm, bw) for c in GPU_CASES for dt in (np.float64, np.float32)
              for gm in (False, True) for bw in ("store", "checkpoint")]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("case,dtype,gamma,backward", GPU_PARAMS,
                         ids=[_case_id(*c, dt, gm, bw) for c, dt, gm, bw in GPU_PARAMS])
def test_cupy_matches_reference(case, dtype, gamma, backward):
    import cupy as cp
    got, cache = _check_against_reference(
        *case, dtype, gamma, backward,
        transform=lambda *a: tuple(None if x is None else cp.asarray(x) for x in a))
    assert cache.engine == "cupy" and not cache.to_host
    assert all(isinstance(x, cp.ndarray) for x in got)


@pytest.mark.gpu
@needs_gpu
def test_cupy_noncontiguous_and_strategies_bitwise_equal():
    import cupy as cp
    q, k, v, g, lam, gam = (None if x is None else cp.asarray(x.astype(np.float32))
                            for x in _inputs(3, 4, 21, 10, 6, seed=3, gamma=True))
    a, _ = _run(fast_ops, q, k, v, g, lam, gam, backward="store")
    b, _ = _run(fast_ops, q, k, v, g, lam, gam, backward="checkpoint")
    for name, x, y in zip(NAMES, a, b):
        cp.testing.assert_array_equal(x, y, err_msg=name)
    qt = cp.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    c, _ = _run(fast_ops, qt, k, v, g, lam, gam)
    for name, x, y in zip(NAMES, a, c):
        cp.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("threads", [1, 4, 32, 256])
def test_cupy_kernels_any_block_size(threads):
    """Block sizes from one thread (every reduction serial) to the largest allowed, d = 33 above and below them."""
    import cupy as cp

    from mesa_fast.cuda import mesa as ck
    q, k, v, g, lam, gam = _inputs(2, 3, 17, 33, 7, seed=9, gamma=True)
    truth, _ = _run(ref, q, k, v, g, lam, gam)
    dq_ = [cp.asarray(x) for x in (q, k, v, g, lam, gam)]
    out, qt, w = ck.forward(cp, dq_[0], dq_[1], dq_[2], dq_[4], dq_[5], True, threads=threads)
    grads = ck.backward(cp, dq_[3], dq_[1], dq_[2], dq_[4], dq_[5], True, qt, w, threads=threads)
    for name, a, want in zip(NAMES, (out,) + grads, truth):
        _assert_close(name, cp.asnumpy(a), want, _tol(np.float64, name, 17))


@pytest.mark.gpu
@needs_gpu
def test_numpy_in_with_cupy_backend_returns_numpy(clean_backend):
    mesa_fast.set_backend("cupy")
    got, cache = _check_against_reference(2, 3, 9, 6, 5, np.float32, True, "store")
    assert cache.engine == "cupy" and cache.to_host
    assert all(type(x) is np.ndarray for x in got)
