"""Every array-module function the reference ops and the model call exists in CuPy (no GPU needed).

The model runs the reference ops on CuPy arrays on a GPU: they call ``xp.<name>`` with ``xp`` the arrays' module.
This scans mesa_ref/ops/*.py and mesa_ref/model.py for those names and looks each one up in CuPy's namespace
(``import cupy`` works without a GPU; only device use fails). A call CuPy lacks would fail on the first GPU run.
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "mesa_ref" / "ops").glob("*.py")) + [ROOT / "mesa_ref" / "model.py"]
XP_NAME = re.compile(r"\bxp\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


def xp_names(text):
    """The dotted names after ``xp.`` in source text (``xp.linalg.cholesky`` -> "linalg.cholesky")."""
    return set(XP_NAME.findall(text))


def resolve(module, dotted):
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_scanner_finds_names_and_misses():
    assert xp_names("y = xp.einsum('ij', a) + xp.linalg.cholesky(b); np.exp(c)") == {"einsum", "linalg.cholesky"}
    import numpy as np
    assert resolve(np, "linalg.cholesky") and not resolve(np, "linalg.not_a_function")


def test_every_xp_call_exists_in_cupy():
    import cupy  # the dev extra brings CuPy; this check must run in CI, not skip
    names = set()
    for f in SOURCES:
        names |= {(n, f.relative_to(ROOT).as_posix()) for n in xp_names(f.read_text())}
    assert len({n for n, _ in names}) >= 20, "the scan found too few xp calls: has the naming changed?"
    missing = sorted(f"xp.{n} ({f})" for n, f in names if not resolve(cupy, n))
    assert not missing, f"not in CuPy's namespace: {missing}"
