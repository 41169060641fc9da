"""Checks shared by the test files of the fused composite ops (test_mlp_op.py, test_mlp_block_op.py,
test_layernorm_dense_op.py): the fast op against the float64 reference, and the same ValueError from both."""
import numpy as np
import pytest


def rel(a, b):
    """Largest absolute difference relative to b's largest entry."""
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-300))


def ulps_apart(a, b):
    """Largest |a - b| in units in the last place of b's largest entry (b's dtype): how far apart two roundings
    of the same sums are, on the scale of the output."""
    b = np.asarray(b)
    unit = np.spacing(np.abs(b).max().astype(b.dtype)) if b.size else 1.0
    return float(np.abs(np.asarray(a, np.float64) - b.astype(np.float64)).max() / max(float(unit), 1e-300))


def assert_within_ulps(a, b, ulps, err_msg=""):
    """a and b (same dtype and shape) differ by at most ``ulps`` units in the last place of b's largest entry.
    For results that sum the same terms in another order, e.g. in two BLAS builds (NumPy's and SciPy's)."""
    assert a.dtype == b.dtype and a.shape == b.shape, err_msg
    got = ulps_apart(a, b)
    assert got <= ulps, f"{err_msg}: {got:.1f} ulps apart (allowed {ulps})"


def check_fast_against_reference(fast_fwd, fast_bwd, ref_fwd, ref_bwd, inputs, rng, names):
    """Runs the fast op on ``inputs`` (one dtype; None for an absent bias) and its backward on a dy drawn from rng,
    and the reference on float64 copies with the same dy. Asserts the output and every gradient: the input dtype,
    the reference's shape, and agreement to 1e-12 (float64) or 1e-5 (float32) relative to the largest entry; a
    gradient the reference returns as None is None. Returns the fast forward's cache."""
    dtype = inputs[0].dtype
    y, cache = fast_fwd(*inputs)
    dy = rng.standard_normal(y.shape).astype(dtype)
    grads = fast_bwd(dy, cache)
    f64 = [None if a is None else a.astype(np.float64) for a in inputs]
    ty, tcache = ref_fwd(*f64)
    tgrads = ref_bwd(dy.astype(np.float64), tcache)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert y.dtype == dtype and y.shape == ty.shape and rel(y, ty) <= tol
    for name, a, b in zip(names, grads, tgrads):
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == dtype and a.shape == b.shape, name
        assert rel(a, b) <= tol, (name, rel(a, b))
    return cache


def raises_same(call_f, call_r):
    """Both calls raise a ValueError (NumPy's warnings silenced), with the same message, which is returned."""
    messages = []
    for call in (call_f, call_r):
        with np.errstate(all="ignore"), pytest.raises(ValueError) as e:
            call()
        messages.append(str(e.value))
    assert messages[0] == messages[1], messages
    return messages[0]
