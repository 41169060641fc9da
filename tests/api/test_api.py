"""The public contract: mesa_fast.ops mirrors mesa_ref.ops name for name, signature for signature."""
import inspect

import numpy as np
import pytest

import mesa_fast
import mesa_ref
from mesa_ref import ops as ref_ops

fast_ops = mesa_fast.ops

CONTRACT = ["mesa_forward", "mesa_backward", "linear_attention_forward", "linear_attention_backward",
            "softmax_attention_forward", "softmax_attention_backward"]


def _public_functions(ns):
    return sorted(n for n in ns.__all__ if callable(getattr(ns, n)) and not isinstance(getattr(ns, n), type))


def test_every_reference_op_exists_in_fast_ops():
    missing = [n for n in _public_functions(ref_ops) if not hasattr(fast_ops, n)]
    assert not missing, f"mesa_fast.ops lacks {missing}"
    for n in CONTRACT:
        assert n in ref_ops.__all__ and hasattr(fast_ops, n)


def _shape_of(sig):
    """Names, kinds and defaults; annotations are left out (each backend's cache is its own type)."""
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize("name", _public_functions(ref_ops))
def test_signatures_are_equal(name):
    ref_sig = inspect.signature(getattr(ref_ops, name))
    fast_sig = inspect.signature(getattr(fast_ops, name))
    assert _shape_of(ref_sig) == _shape_of(fast_sig), f"{name}: reference {ref_sig} != fast {fast_sig}"


def test_mesa_forward_contract_signature():
    sig = inspect.signature(ref_ops.mesa_forward)
    params = list(sig.parameters.values())
    assert [p.name for p in params[:4]] == ["q", "k", "v", "lam"]
    assert sig.parameters["gamma"].kind is inspect.Parameter.KEYWORD_ONLY and sig.parameters["gamma"].default is None


def test_backend_switch():
    with pytest.raises(ValueError, match="backend"):
        mesa_fast.set_backend("tpu")
    mesa_fast.set_backend("numba")
    assert mesa_fast.get_backend() == "numba"
    mesa_fast.set_backend("auto")
    assert mesa_fast.get_backend() in ("numba", "cupy")


def test_fast_model_is_the_reference_model_with_fast_ops():
    from mesa_fast.model import Transformer as FastTransformer
    from mesa_ref.model import Transformer as RefTransformer
    m = FastTransformer()
    assert isinstance(m, RefTransformer) and m.ops is fast_ops


def test_numpy_in_numpy_out_same_dtype():
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        q, k, v = rng.standard_normal((3, 2, 3, 5, 4)).astype(dt)
        out, cache = fast_ops.mesa_forward(q, k, v, np.ones(3, dt))
        assert isinstance(out, np.ndarray) and out.dtype == dt
        grads = fast_ops.mesa_backward(np.ones_like(out), cache)
        assert all(isinstance(g, np.ndarray) and g.dtype == dt for g in grads)


def test_versions_exposed():
    assert mesa_ref.__version__
