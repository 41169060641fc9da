#!/usr/bin/env bash
# Every check that needs a GPU, in one run, for a machine with an NVIDIA GPU and CuPy already installed:
#
#     bash benchmarks/gpu_checks.sh [RESULTS_DIR]        # default benchmarks/results
#
# 1. the machine (GPU, driver, library versions)            -> RESULTS_DIR/gpu_env.txt
# 2. the GPU agreement tests (pytest -m gpu, CUPY_TF32=0): the mesa layer's Numba CUDA kernels
#    (mesa_fast/cuda/mesa.py) on CuPy arrays against mesa_ref, and the other CuPy paths
#                                                           -> RESULTS_DIR/gpu_tests.txt
# 3. mesa-layer forward+backward at the paper, mid and lm shapes and the T sweep, for the reference (where it fits
#    the time budget), Numba, the Numba CUDA kernels ("cupy"), the chunkwise form [M5] on CuPy, and JAX / PyTorch
#    where installed
#                                                           -> RESULTS_DIR/bench_mesa_gpu.{json,md,log}
# Uses the python on PATH (PYTHON=... to choose; it needs numba-cuda and CuPy: the gpu extra) with this checkout on
# PYTHONPATH, so nothing is installed. What needs no GPU (the kernels in Numba's CUDA simulator, their compilation
# and register use, the CuPy namespace) runs in make test instead.
# Exits non-zero if a step fails; later steps still run.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RES=${1:-benchmarks/results}
mkdir -p "$RES"
export CUPY_TF32=0 OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    "$PY" -c "import platform, numpy, numba, numba_cuda, cupy; print('python', platform.python_version(), 'numpy', numpy.__version__,
'numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, 'cupy', cupy.__version__,
'cuda runtime', cupy.cuda.runtime.runtimeGetVersion())" 2>&1
} > "$RES/gpu_env.txt"
cat "$RES/gpu_env.txt"

echo "== GPU agreement tests (Numba CUDA kernels on CuPy arrays)"
"$PY" -m pytest -m gpu -q -rs tests/ > "$RES/gpu_tests.txt" 2>&1 || status=1
tail -n 5 "$RES/gpu_tests.txt"

echo "== mesa-layer benchmark"
"$PY" benchmarks/bench_mesa.py --shapes paper,mid,lm,sweep --impls ref,numba,cupy,cupy_chunk,jax,torch \
    --repeats 20 --ref-budget 20 --out "$RES/bench_mesa_gpu" > "$RES/bench_mesa_gpu.log" 2>&1 || status=1
tail -n 20 "$RES/bench_mesa_gpu.log"
exit $status
