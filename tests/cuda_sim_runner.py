"""Runs the mesa-layer's CUDA kernels in Numba's CUDA simulator; tests/gpu/test_cuda_kernels.py starts it.

    NUMBA_ENABLE_CUDASIM=1 MESA_BACKEND=cudasim python tests/cuda_sim_runner.py OUT_DIR

(the simulator must be on before Numba is imported, hence a separate process). It runs every case of
``CASES`` through the launch wrappers (mesa_fast/cuda/mesa.py, with the case's small block size), two cases
through the public ops (``mesa_fast.ops`` with MESA_BACKEND=cudasim, then with ``set_backend("cudasim")``), and
the bad inputs of tests/fast/test_fast_mesa.py through the public ops, and writes what came out to OUT_DIR:
``arrays.npz`` (inputs are rebuilt by the test from the same seeds) and ``meta.json`` (timings, cache engines,
error messages). It compares nothing itself: the test does, against mesa_ref, so a wrong kernel cannot pass
here by a wrong check.
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

# (name, (B, H, T, d, dv), threads per block): d and dv odd and unequal; in "rows-split" d < threads (two partial
# sums per row of R), in "rows-looped" d > threads (a thread takes several rows); several (B, H).
CASES = [
    ("rows-split", (2, 1, 12, 3, 5), 8),
    ("rows-looped", (1, 3, 7, 7, 3), 4),
    ("wide-v", (2, 2, 5, 5, 9), 4),
]
DTYPES = {"f64": np.float64, "f32": np.float32}
STRATEGIES = ("store", "checkpoint")
PUBLIC_CASES = {            # through mesa_fast.ops: (shape, dtype, gamma, how the backend was chosen)
    "env": ((1, 2, 4, 3, 2), "f64", True, "MESA_BACKEND"),
    "set_backend": ((2, 1, 3, 5, 3), "f32", False, "set_backend"),
}


def inputs(B, H, T, d, dv, *, seed, gamma):
    """q ~ N(0,1), k ~ N(0,1)/sqrt(d), v, dout ~ N(0,1), lam in [0.5, 2], gamma in [0.7, 1] (float64)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, T, d))
    k = rng.standard_normal((B, H, T, d)) / np.sqrt(d)
    v = rng.standard_normal((B, H, T, dv))
    g = rng.standard_normal((B, H, T, dv))
    lam = rng.uniform(0.5, 2.0, H)
    gam = rng.uniform(0.7, 1.0, H) if gamma else None
    return q, k, v, g, lam, gam


def case_key(name, dt, gamma, strategy):
    return f"{name}-{dt}-{'gamma' if gamma else 'nogamma'}-{strategy}"


def case_seed(name):
    return 10 + [c[0] for c in CASES].index(name)


def main(out_dir):
    out_dir = Path(out_dir)
    from numba import config
    assert config.ENABLE_CUDASIM, "run with NUMBA_ENABLE_CUDASIM=1"
    import mesa_fast
    from mesa_fast import backend
    from mesa_fast import ops as fast_ops
    from mesa_fast.cuda import mesa as ck

    arrays, meta = {}, {"timing_s": {}, "engine": {}, "errors": {}, "case_errors": {}}
    names = ("out", "qt", "dq", "dk", "dv", "dlam", "dgamma")
    for name, shape, threads in CASES:
        for dt_name, dt in DTYPES.items():
            for gamma in (False, True):
                q, k, v, g, lam, gam = (None if x is None else x.astype(dt)
                                        for x in inputs(*shape, seed=case_seed(name), gamma=gamma))
                for strategy in STRATEGIES:
                    key = case_key(name, dt_name, gamma, strategy)
                    t0 = time.perf_counter()
                    store = strategy == "store"
                    try:
                        out, qt, w = ck.forward(np, q, k, v, lam, gam, store, threads=threads)
                        dq, dk, dv, dlam, dgamma = ck.backward(np, g, k, v, lam, gam, store, qt, w,
                                                               threads=threads)
                    except Exception as exc:      # recorded, so that the other cases still report
                        meta["case_errors"][key] = f"{type(exc).__name__}: {exc}"
                        continue
                    finally:
                        meta["timing_s"][key] = time.perf_counter() - t0
                    for n, x in zip(names, (out, qt, dq, dk, dv, dlam, dgamma)):
                        if x is not None:
                            arrays[f"{key}/{n}"] = x

    # the public ops: MESA_BACKEND=cudasim (set by the test's command line), then set_backend("cudasim")
    for key, (shape, dt_name, gamma, how) in PUBLIC_CASES.items():
        if how == "set_backend":
            os.environ.pop("MESA_BACKEND", None)
            backend._reset_for_tests()
            mesa_fast.set_backend("cudasim")
        meta["engine"][f"{key}/backend"] = mesa_fast.get_backend()
        q, k, v, g, lam, gam = (None if x is None else x.astype(DTYPES[dt_name])
                                for x in inputs(*shape, seed=7, gamma=gamma))
        t0 = time.perf_counter()
        out, cache = fast_ops.mesa_forward(q, k, v, lam, gamma=gam)
        grads = fast_ops.mesa_backward(g, cache)
        meta["timing_s"][f"public-{key}"] = time.perf_counter() - t0
        meta["engine"][key] = cache.engine
        for n, x in zip(("out", "dq", "dk", "dv", "dlam", "dgamma"), (out,) + tuple(grads)):
            arrays[f"public-{key}/{n}"] = x

    # bad input: the reference's ValueError, through the public ops on this backend
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mesa_cases import _bad_inputs
    for name, kw in _bad_inputs().items():
        args = [kw.pop(n) for n in ("q", "k", "v", "lam")]
        try:
            fast_ops.mesa_forward(*args, **kw)
            meta["errors"][name] = None
        except ValueError as exc:
            meta["errors"][name] = str(exc)
    q, k, v, g, lam, _ = inputs(1, 1, 2, 3, 3, seed=1, gamma=False)
    for bad in (3, 512, 0):
        try:
            ck.forward(np, q, k, v, lam, None, True, threads=bad)
            meta["errors"][f"threads-{bad}"] = None
        except ValueError as exc:
            meta["errors"][f"threads-{bad}"] = str(exc)

    np.savez(out_dir / "arrays.npz", **arrays)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
