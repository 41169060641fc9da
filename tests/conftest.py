import os

os.environ.setdefault("CUPY_TF32", "0")   # never let CuPy use TF32 in agreement tests

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
