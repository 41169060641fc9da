import os

os.environ.setdefault("CUPY_TF32", "0")   # never let CuPy use TF32 in agreement tests

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def clean_backend(monkeypatch):
    """mesa_fast's backend choice reset (no MESA_BACKEND, nothing chosen yet) before and after the test; yields
    monkeypatch for setting the variable."""
    from mesa_fast import backend as fast_backend
    monkeypatch.delenv("MESA_BACKEND", raising=False)
    fast_backend._reset_for_tests()
    yield monkeypatch
    fast_backend._reset_for_tests()
