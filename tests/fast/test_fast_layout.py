"""mesa_fast is laid out by op, as mesa_ref/ops is: each public op of ``mesa_ref.ops`` is either a fast wrapper from
``mesa_fast/ops/<op>.py``, the module named as the reference module that defines the op, or the reference's own
object; ``mesa_fast.ops`` exports exactly ``mesa_ref.ops.__all__`` (plus MesaFastCache), from its explicit table.
Also: kernels with many parameters are called by name (``runtime.pool.ranged`` / ``in_order``)."""
import importlib
from pathlib import Path

import numpy as np
import pytest

from mesa_fast import ops as F
from mesa_fast.runtime import pool
from mesa_ref import ops as R

FAST_DIR = Path(F.__file__).parent
REF_DIR = Path(R.__file__).parent
OPS = sorted(n for n in R.__all__ if callable(getattr(R, n)) and not isinstance(getattr(R, n), type))


def ref_module(name):
    """The module of ``mesa_ref/ops/`` that defines op ``name``, from the function's ``__module__``."""
    module = getattr(R, name).__module__
    assert module.startswith("mesa_ref.ops."), (name, module)
    return module.rsplit(".", 1)[1]


def test_exports_exactly_the_reference_names_from_the_table():
    assert F.__all__ == sorted(set(R.__all__) | {"MesaFastCache"})
    assert sorted(F.OPS) == F.__all__
    for name in F.__all__:
        assert getattr(F, name) is F.OPS[name], name
    assert F.MesaCache is F.MesaFastCache
    assert set(F.FAST) <= set(OPS) and len(set(F.FAST)) == len(F.FAST)


@pytest.mark.parametrize("name", OPS)
def test_each_op_is_the_wrapper_of_its_fast_module_or_the_reference(name):
    """A name in FAST comes from mesa_fast/ops/<m>.py, m the reference module that defines it (dense_forward from
    mesa_ref/ops/dense.py -> mesa_fast/ops/dense.py); any other op is the reference's own function."""
    module = ref_module(name)
    fast = getattr(F, name)
    if name in F.FAST:
        assert (FAST_DIR / f"{module}.py").is_file(), f"{name}: no mesa_fast/ops/{module}.py"
        assert fast.__module__ == f"mesa_fast.ops.{module}", (name, fast.__module__)
        assert fast is getattr(importlib.import_module(f"mesa_fast.ops.{module}"), name)
        assert fast is not getattr(R, name)
    else:
        assert fast is getattr(R, name), f"{name}: not in FAST, so it should be the reference's own"


def test_every_fast_op_module_is_named_after_a_reference_module():
    """No module in mesa_fast/ops that mirrors no reference module (or holds no fast op): the names do not drift."""
    fast_modules = {p.stem for p in FAST_DIR.glob("*.py") if not p.stem.startswith("_")}
    ref_modules = {p.stem for p in REF_DIR.glob("*.py") if not p.stem.startswith("_")}
    assert fast_modules <= ref_modules, fast_modules - ref_modules
    assert fast_modules == {ref_module(n) for n in F.FAST}


def test_kernels_are_called_by_name():
    """``ranged`` and ``in_order`` put named arguments in the kernel's parameter order; a missing or unknown name is
    a TypeError before the kernel runs."""
    def kernel(a, b, lo, hi, c):
        return (a, b, lo, hi, c)

    assert pool.ranged(kernel, c=3, a=1, b=2)(10, 20) == (1, 2, 10, 20, 3)
    assert pool.in_order(kernel, hi=4, lo=3, c=5, b=2, a=1) == (1, 2, 3, 4, 5)
    with pytest.raises(TypeError, match="missing"):
        pool.ranged(kernel, a=1, b=2)
    with pytest.raises(TypeError, match="unknown"):
        pool.ranged(kernel, a=1, b=2, c=3, d=4)
    with pytest.raises(TypeError, match="no range"):
        pool.ranged(lambda a, b: a, a=1, b=2)
    with pytest.raises(TypeError, match="missing"):
        pool.in_order(kernel, a=1, b=2, lo=3, c=5)


def test_run_groups_passes_each_range_with_the_named_arguments():
    from numba import njit

    @njit(nogil=True)
    def groups(g0, g1, x, scale):
        for g in range(g0, g1):
            x[g] = g * scale
        return g1 - g0

    x = np.zeros(37)
    assert sum(pool.run_groups(groups, 37, scale=2.0, x=x)) == 37
    np.testing.assert_array_equal(x, 2.0 * np.arange(37))
