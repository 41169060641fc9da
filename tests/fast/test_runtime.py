"""mesa_fast's runtime: the C-heap setting made only when asked, the BLAS thread counts limited only while an
op or a shard runs, and the thread pool's ranges (complete, in order, repeatable sums)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from mesa_fast import ops as F

pytestmark = pytest.mark.slow        # each check runs in a fresh interpreter


def _run(code, **env):
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, check=True).stdout


_HEAP_CODE = r'''
import ctypes
calls = []
class SpyCDLL(ctypes.CDLL):                        # records every lookup of mallopt in any C library
    def __getattr__(self, name):
        if name == "mallopt":
            calls.append(name)
        return super().__getattr__(name)
ctypes.CDLL = SpyCDLL
import numpy as np
import mesa_fast
from mesa_fast.runtime import heap as _heap
state = [_heap.applied, len(calls)]                                     # after the import
y, cache = mesa_fast.ops.dense_forward(np.ones((3000, 4)), np.ones((4, 3)))
mesa_fast.ops.dense_backward(np.ones_like(y), cache)
state += [_heap.applied, len(calls)]                                    # after a dense op
state += [mesa_fast.keep_freed_memory(), _heap.applied, len(calls)]     # the explicit call
state += [mesa_fast.keep_freed_memory(), len(calls)]                    # once only
print(*state)
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_heap_setting_is_explicit_applies_once_and_can_be_switched_off():
    """Importing mesa_fast and running an op leave the C allocator alone; keep_freed_memory() applies the
    setting once; MESA_FAST_KEEP_HEAP=0 makes it a no-op; another value is a ValueError at the call."""
    assert _run(_HEAP_CODE).split() == "False 0 False 0 True True 1 True 1".split()
    assert _run(_HEAP_CODE, MESA_FAST_KEEP_HEAP="0").split() == "False 0 False 0 False False 0 False 0".split()
    r = subprocess.run([sys.executable, "-c", _HEAP_CODE], capture_output=True, text=True,
                       env=dict(os.environ, MESA_FAST_KEEP_HEAP="yes"))
    assert r.returncode != 0 and "ValueError: MESA_FAST_KEEP_HEAP: expected 0" in r.stderr, r.stderr[-2000:]


def test_map_chunks_covers_every_item_once_in_order(monkeypatch):
    """The shared-out ranges (``runtime.pool.map_chunks``): contiguous, in order, each item once, at least
    ``min_chunk // 2`` long and never growing, whatever the thread count; a pool thread's exception reaches the
    caller."""
    import numba

    from mesa_fast.runtime import pool as _pool
    for threads in sorted({1, numba.get_num_threads()}):
        numba.set_num_threads(threads)
        try:
            for n, min_chunk in [(1, 1), (7, 1), (64, 1), (12800, 1024), (2047, 1024), (3000, 1024), (5, 10)]:
                ranges = _pool.map_chunks(lambda lo, hi: (lo, hi), n, min_chunk=min_chunk)
                assert ranges[0][0] == 0 and ranges[-1][1] == n
                assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
                sizes = [hi - lo for lo, hi in ranges]
                assert min(sizes) >= 1
                if len(ranges) > 1:
                    assert min(sizes) >= min_chunk // 2
                    assert all(a >= b for a, b in zip(sizes, sizes[1:]))
                    assert ranges == [(a, b) for a, b in zip(_pool.chunk_bounds(n, threads, min_chunk),
                                                             _pool.chunk_bounds(n, threads, min_chunk)[1:])]
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)

    def fail_late(lo, hi):
        if hi == 64:
            raise RuntimeError("last range")
        return lo
    with pytest.raises(RuntimeError, match="last range"):
        _pool.map_chunks(fail_late, 64)


def test_split_products_are_repeatable():
    """dW sums the ranges' partial products in range order, so the result is bitwise the same on every call,
    whichever thread took which range."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12800, 40)).astype(np.float32)
    dy = rng.standard_normal((12800, 240)).astype(np.float32)
    W = rng.standard_normal((40, 240)).astype(np.float32)
    _, cache = F.dense_forward(x, W)
    first = F.dense_backward(dy, cache)
    for _ in range(5):
        again = F.dense_backward(dy, cache)
        for a, b in zip(first[:2], again[:2]):
            np.testing.assert_array_equal(a, b)


_BLAS_HELPERS = r'''
from threadpoolctl import threadpool_info
def blas():
    """{library path: thread count} of every BLAS library loaded now."""
    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
'''


_SCIPY_BLAS = "import scipy.linalg.cython_blas\n"


def _run_blas2(code, preload=True):
    """Run ``code`` (after _BLAS_HELPERS) in a process where the BLAS libraries start with 2 threads."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", (_SCIPY_BLAS if preload else "") + _BLAS_HELPERS + code],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:] + r.stdout[-2000:]


def test_import_and_ops_leave_blas_threads_as_they_were():
    """threadpoolctl's view of the BLAS thread counts is the same before ``import mesa_fast``, after it, and
    after a dense op forward and backward."""
    _run_blas2(r'''
import numpy as np
before = blas()
assert before and set(before.values()) == {2}, before
import mesa_fast
after_import = blas()
rng = np.random.default_rng(0)
y, cache = mesa_fast.ops.dense_forward(rng.standard_normal((3000, 8)), rng.standard_normal((8, 5)))
mesa_fast.ops.dense_backward(np.ones_like(y), cache)
after_op = blas()
assert before == after_import == after_op, (before, after_import, after_op)
print("ok")
''')


def test_dense_products_run_blas_single_threaded_then_restore():
    """In a process where the BLAS has 2 threads, the fast dense op runs its products with 1 (the pool supplies
    the parallelism) and puts 2 back afterwards, also after nested and concurrent uses."""
    _run_blas2(r'''
import threading
import numpy as np
from mesa_fast import ops as F
from mesa_fast.ops import dense
from mesa_fast.runtime.blas import one_blas_thread
start = blas()
assert start and set(start.values()) == {2}, start
seen = []
orig = dense.map_chunks
def spy(fn, n, *a, **kw):
    seen.append(set(blas().values()))
    return orig(fn, n, *a, **kw)
dense.map_chunks = spy
rng = np.random.default_rng(0)
x, W = rng.standard_normal((3000, 8)), rng.standard_normal((8, 5))
y, cache = F.dense_forward(x, W)
F.dense_backward(rng.standard_normal(y.shape), cache)
assert seen == [{1}, {1}] and blas() == start, (seen, blas())
with one_blas_thread():
    with one_blas_thread():
        assert set(blas().values()) == {1}
    assert set(blas().values()) == {1}
assert blas() == start
dense.map_chunks = orig
ts = [threading.Thread(target=lambda: [F.dense_forward(x, W) for _ in range(20)]) for _ in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
assert blas() == start, blas()
print("ok")
''')


def test_numba_blas_products_run_single_threaded_too():
    """The fused LayerNorm + dense op multiplies inside Numba (np.dot, SciPy's BLAS: another library than NumPy's).
    With a dense op run first (so the thread limiter exists before the fused op loads that library), every BLAS
    library loaded, that one included, has 1 thread while an op runs and 2 again afterwards."""
    _run_blas2(r'''
import numpy as np
from mesa_fast import ops as F
from mesa_fast.runtime.blas import one_blas_thread
rng = np.random.default_rng(0)
y, cache = F.dense_forward(rng.standard_normal((3000, 8)), rng.standard_normal((8, 5)))
x = rng.standard_normal((3000, 40))
w, b, W = np.ones(40), np.zeros(40), rng.standard_normal((40, 24))
y, cache = F.layernorm_dense_forward(x, w, b, W)
F.layernorm_dense_backward(np.ones_like(y), cache)
libs = blas()
assert len(libs) >= 2 and set(libs.values()) == {2}, libs
with one_blas_thread():
    assert set(blas().values()) == {1}, blas()
assert blas() == libs, blas()
print("ok")
''', preload=False)


def test_batch_shards_run_blas_single_threaded_then_restore():
    """In a process where the BLAS has 2 threads, a training step split into shards (``batch_map``) runs with the
    BLAS at 1 thread inside every shard, and 2 come back afterwards."""
    _run_blas2(r'''
import numba
import numpy as np
from mesa_fast import ops as F
if numba.get_num_threads() < 2:
    print("ok"); raise SystemExit
start = blas()
seen = F.batch_map(lambda lo, hi: set(blas().values()), np.zeros((100, 16, 3)))   # 2 shards of 800 positions
assert [s for _, _, s in seen] == [{1}, {1}] and blas() == start, (seen, blas(), start)
print("ok")
''')
