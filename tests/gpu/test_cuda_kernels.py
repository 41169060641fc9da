"""The mesa-layer's GPU kernels (mesa_fast/cuda/mesa.py, [M2]-[M4]) run in Numba's CUDA simulator, against mesa_ref.

No GPU needed: one subprocess with NUMBA_ENABLE_CUDASIM=1 and MESA_BACKEND=cudasim (tests/cuda_sim_runner.py) runs
every case on the same kernel source a GPU runs, with small blocks (the simulator runs one Python thread per GPU
thread), and this file compares what it wrote with the reference computed here:
* out, q~ and every gradient (dq, dk, dv, dlam, dgamma) in float64 to 1e-12 relative and in float32 within the
  fast backend's float32 tolerances (tests/fast/test_fast_mesa.py's TOL), with and without gamma [M4], for both fast
  backward strategies [M3] (which must also agree bit for bit), at shapes with d below and above the block size;
* the public ops under MESA_BACKEND=cudasim and under set_backend("cudasim");
* the reference's ValueError, message for message, for bad input, and the wrappers' own ValueError for a bad
  block size.
What the simulator cannot show (speed, real concurrency between warps, float32 rounding with FMA on the device)
needs a GPU: the gpu-marked tests in tests/fast/test_fast_mesa.py and benchmarks/gpu_checks.sh.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cuda_sim_runner as runner
import mesa_fast
from mesa_ref.ops import mesa as ref
from mesa_cases import _bad_inputs, _tol

pytestmark = pytest.mark.slow        # one CUDA-simulator subprocess runs every kernel case (about a minute and a half)

ROOT = Path(__file__).resolve().parents[2]
F64_REL = 1e-12
GRADS = ("dq", "dk", "dv", "dlam", "dgamma")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """Run tests/cuda_sim_runner.py once in a simulator subprocess; its arrays and metadata."""
    out = tmp_path_factory.mktemp("cudasim")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", MESA_BACKEND="cudasim",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "cuda_sim_runner.py"), str(out)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert r.returncode == 0, f"simulator run failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    meta = json.loads((out / "meta.json").read_text())
    meta["wall_s"] = time.perf_counter() - t0
    with np.load(out / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, meta


def _rel_err(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), "non-finite values"
    return float(np.max(np.abs(got - want))) / max(float(np.max(np.abs(want))), 1e-30)


def _check(name, got, want, dt, T):
    tol = F64_REL if dt == np.float64 else _tol(np.float32, name if name != "qt" else "out", T)
    assert got.dtype == dt, f"{name}: dtype {got.dtype}, expected {np.dtype(dt)}"
    err = _rel_err(got, want)
    assert err <= tol, f"{name}: max rel err {err:.3e} > tol {tol:.1e} ({100 * err / tol:.0f}% of tolerance)"


def _reference(shape, seed, gamma):
    q, k, v, g, lam, gam = runner.inputs(*shape, seed=seed, gamma=gamma)
    out, cache = ref.mesa_forward(q, k, v, lam, gamma=gam)
    grads = ref.mesa_backward(g, cache)
    return dict(zip(("out",) + GRADS, (out,) + tuple(grads)), qt=cache.qt)


KERNEL_PARAMS = [(c, dt, gm, st) for c in runner.CASES for dt in runner.DTYPES for gm in (False, True)
                 for st in runner.STRATEGIES]


@pytest.mark.parametrize("case,dt,gamma,strategy", KERNEL_PARAMS,
                         ids=[runner.case_key(c[0], dt, gm, st) + f"-B{c[1][0]}H{c[1][1]}T{c[1][2]}d{c[1][3]}"
                              f"dv{c[1][4]}-threads{c[2]}" for c, dt, gm, st in KERNEL_PARAMS])
def test_kernels_match_reference(sim, case, dt, gamma, strategy):
    arrays, meta = sim
    name, shape, _threads = case
    key = runner.case_key(name, dt, gamma, strategy)
    assert key not in meta["case_errors"], f"the kernels raised in the simulator: {meta['case_errors'][key]}"
    truth = _reference(shape, runner.case_seed(name), gamma)
    names = ("out", "qt") + GRADS[:4] + (("dgamma",) if gamma else ())
    assert (f"{key}/dgamma" in arrays) == gamma
    for n in names:
        _check(n, arrays[f"{key}/{n}"], truth[n], runner.DTYPES[dt], shape[2])


@pytest.mark.parametrize("case,dt,gamma", [(c, dt, gm) for c in runner.CASES for dt in runner.DTYPES
                                           for gm in (False, True)])
def test_strategies_agree_bit_for_bit(sim, case, dt, gamma):
    """"store" and "checkpoint" rebuild the forward's R_t with the forward's code: equal gradients, bit for bit."""
    arrays, meta = sim
    a, b = (runner.case_key(case[0], dt, gamma, s) for s in runner.STRATEGIES)
    assert a not in meta["case_errors"] and b not in meta["case_errors"], meta["case_errors"]
    for n in ("out", "qt") + GRADS[:4] + (("dgamma",) if gamma else ()):
        np.testing.assert_array_equal(arrays[f"{a}/{n}"], arrays[f"{b}/{n}"], err_msg=n)


@pytest.mark.parametrize("key", list(runner.PUBLIC_CASES))
def test_public_ops_on_cudasim_backend(sim, key):
    """mesa_fast.ops under MESA_BACKEND=cudasim and set_backend("cudasim") run the CUDA kernels (engine "cudasim")."""
    arrays, meta = sim
    shape, dt, gamma, _how = runner.PUBLIC_CASES[key]
    assert meta["engine"][f"{key}/backend"] == "cudasim"
    assert meta["engine"][key] == "cudasim"
    truth = _reference(shape, 7, gamma)
    for n in ("out",) + GRADS[:4] + (("dgamma",) if gamma else ()):
        _check(n, arrays[f"public-{key}/{n}"], truth[n], runner.DTYPES[dt], shape[2])


@pytest.mark.parametrize("name", list(_bad_inputs()))
def test_bad_input_gives_the_references_value_error(sim, name):
    _, meta = sim
    kw = _bad_inputs()[name]
    args = [kw.pop(n) for n in ("q", "k", "v", "lam")]
    with pytest.raises(ValueError) as want:
        ref.mesa_forward(*args, **kw)
    assert meta["errors"][name] == str(want.value)


def test_bad_block_size_is_a_value_error(sim):
    _, meta = sim
    for bad in (3, 512, 0):
        msg = meta["errors"][f"threads-{bad}"]
        assert msg is not None and msg.startswith("threads: expected a power of two"), msg


def test_simulator_time_is_reported(sim):
    """Not a timing assertion: the per-case times are printed (pytest -s) to keep the simulator budget visible."""
    _, meta = sim
    print(f"\nsimulator subprocess: {meta['wall_s']:.1f} s wall")
    for k, s in sorted(meta["timing_s"].items(), key=lambda kv: -kv[1])[:5]:
        print(f"  {k}: {s:.1f} s")
    assert len(meta["timing_s"]) == len(KERNEL_PARAMS) + len(runner.PUBLIC_CASES)


# ------------------------------------------------------------------------------------------ without the simulator
@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"),
                    reason="this process runs the simulator")
def test_cudasim_without_the_simulator_is_a_clear_value_error(clean_backend):
    with pytest.raises(ValueError, match="NUMBA_ENABLE_CUDASIM=1"):
        mesa_fast.set_backend("cudasim")
    clean_backend.setenv("MESA_BACKEND", "cudasim")
    with pytest.raises(ValueError, match="NUMBA_ENABLE_CUDASIM=1"):
        mesa_fast.get_backend()
    from mesa_fast.cuda import mesa as ck
    q, k, v, _, lam, _ = runner.inputs(1, 1, 2, 3, 3, seed=1, gamma=False)
    with pytest.raises(ValueError, match="NUMBA_ENABLE_CUDASIM=1"):
        ck.forward(np, q, k, v, lam, None, True, threads=4)
