"""CuPy launch wrappers for the CUDA mesa-layer kernels in ``mesa.cu`` ([M2]-[M4]).

CuPy is imported lazily (``mesa_fast.backend.get_cupy``); the module compiles with NVRTC through
``cupy.RawModule`` on first use and is cached per process (CuPy also caches the binary on disk).
One thread block per (batch, head) sequence; see mesa.cu for the algorithm and shared-memory
layouts. Validation happens in ``mesa_fast.mesa`` (the reference's ``validate_mesa_inputs``); the
wrappers only check what the kernels themselves need (shared memory for d and dv).

Not run in this project's CI (no GPU): tests/test_fast_mesa.py has the GPU agreement tests, and
benchmarks/bench_mesa.py the GPU timings, both skipped when CuPy or a GPU is missing.

Shapes: q, k, qt, w (B, H, T, d); v, out, dout (B, H, T, dv); lam, gamma (H,); all C-contiguous
CuPy arrays of one dtype (float32 or float64).
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..backend import get_cupy

THREADS = 256                      # threads per block (8 warps); a multiple of 32
_SOURCE = Path(__file__).with_name("mesa.cu")
_module = None
_lock = threading.Lock()


def _get_module():
    global _module
    with _lock:
        if _module is None:
            cp = get_cupy()
            _module = cp.RawModule(code=_SOURCE.read_text(), options=("--std=c++14",))
        return _module


def shared_bytes(kind, d, dv, has_gamma, itemsize):
    """Dynamic shared memory (bytes) of one block; must match the layouts in mesa.cu."""
    if kind == "fwd":
        n = d * d + dv * d + 6 * d + dv + 8
    else:
        n = (2 if has_gamma else 1) * (d * d + d * dv) + 10 * d + 2 * dv + 8
    return n * itemsize


def _function(kind, dtype, smem):
    cp = get_cupy()
    suffix = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[np.dtype(dtype)]
    fn = _get_module().get_function(f"mesa_{kind}_{suffix}")
    limit = cp.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]
    if smem > limit:
        raise ValueError(f"q: head size d and value size dv too large for the CUDA mesa kernel: it needs "
                         f"{smem} bytes of shared memory per block, this GPU allows {limit}")
    if smem > 48 * 1024:           # above 48 KiB a kernel must opt in
        fn.max_dynamic_shared_size_bytes = smem
    return fn


def contiguous(x):
    """A C-contiguous CuPy array (a copy only when needed)."""
    return get_cupy().ascontiguousarray(x)


def forward(q, k, v, lam, gamma, store_w):
    """[M2]/[M4] on the GPU. Returns out (B,H,T,dv), qt (B,H,T,d), w (B,H,T,d) or an empty array."""
    cp = get_cupy()
    B, H, T, d = q.shape
    dv = v.shape[3]
    dt = q.dtype
    has_gamma = gamma is not None
    gam = contiguous(gamma) if has_gamma else cp.ones(H, dtype=dt)
    out = cp.empty((B, H, T, dv), dtype=dt)
    qt = cp.empty((B, H, T, d), dtype=dt)
    w = cp.empty((B, H, T, d) if store_w else (1,), dtype=dt)
    smem = shared_bytes("fwd", d, dv, has_gamma, dt.itemsize)
    fn = _function("fwd", dt, smem)
    i32 = np.int32
    fn((B * H,), (THREADS,),
       (q, k, v, contiguous(lam), gam, i32(H), i32(T), i32(d), i32(dv), i32(has_gamma), i32(bool(store_w)),
        out, qt, w), shared_mem=smem)
    return out, qt, (w if store_w else cp.empty(0, dtype=dt))


def backward(dout, k, v, lam, gamma, store_w, qt, w):
    """[M3]/[M4] on the GPU. Returns dq, dk (B,H,T,d), dv (B,H,T,dv), dlam (H,), dgamma (H,) or None."""
    cp = get_cupy()
    B, H, T, d = k.shape
    dv_ = v.shape[3]
    dt = k.dtype
    has_gamma = gamma is not None
    gam = contiguous(gamma) if has_gamma else cp.ones(H, dtype=dt)
    dq = cp.empty((B, H, T, d), dtype=dt)
    dk = cp.empty((B, H, T, d), dtype=dt)
    dv = cp.empty((B, H, T, dv_), dtype=dt)
    dlam_n = cp.empty(B * H, dtype=dt)
    dgam_n = cp.empty(B * H, dtype=dt)
    wst = w if store_w else cp.empty(1, dtype=dt)
    smem = shared_bytes("bwd", d, dv_, has_gamma, dt.itemsize)
    fn = _function("bwd", dt, smem)
    i32 = np.int32
    fn((B * H,), (THREADS,),
       (k, v, dout, contiguous(lam), gam, i32(H), i32(T), i32(d), i32(dv_), i32(has_gamma),
        i32(bool(store_w)), qt, wst, dq, dk, dv, dlam_n, dgam_n), shared_mem=smem)
    dlam = dlam_n.reshape(B, H).sum(axis=0)
    dgamma = dgam_n.reshape(B, H).sum(axis=0) if has_gamma else None
    return dq, dk, dv, dlam, dgamma
