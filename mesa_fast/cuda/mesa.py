"""The mesa-layer's GPU kernels, [M2]-[M4] (docs/math.md section 3), in Numba CUDA.

The CUDA twin of ``mesa_fast/kernels/simd/mesa.py`` (and of the readable ``kernels/plain/mesa.py``); all re-express
``mesa_ref.ops.mesa.mesa_forward`` and ``mesa_backward``. One kernel source serves two targets:

* a GPU: the launch wrappers take CuPy arrays, hand them to Numba through the CUDA array interface (without
  Numba's stream synchronisation: the kernel is queued on CuPy's current stream, so it runs after whatever CuPy
  queued there before it, and what CuPy queues next runs after it);
* Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` set before Numba is imported): the same kernels run on
  NumPy arrays, one Python thread per GPU thread. Slow; for checking the kernels' logic in CI and for debugging
  them with print or pdb (the backend "cudasim", ``mesa_fast.backend``).

So the kernels use nothing the simulator lacks: every reduction goes through shared memory and
``cuda.syncthreads()`` (no warp shuffles), and every thread of a block reaches every ``syncthreads`` (loops
around a barrier have the same trip count in every thread).

Layout: one thread block per sequence n = b*H + h. The recursion is sequential in t and its state (R_t, d x d;
S_t, dv x d) is O(d^2): at the paper's d = 20 and the language model's d = 64 it fits a block's shared memory, and
B*H (1024 at the paper shape, 128 at the lm shape) blocks fill the GPU's multiprocessors. Splitting one sequence
over several blocks would need a grid-wide barrier per token; packing several sequences into one block would
shorten neither the chain of T dependent steps nor the per-token work. (The lm shape is better served by the
chunkwise form [M5], which turns the recursion into matrix products; see docs/design.md.)

Inside a block, a matrix-vector pass over an nrows x ncols matrix spreads the work as P = nthr // nrows partial
sums per row (P = 1 when nrows > nthr; a thread then takes several rows): work item e = p*nrows + i takes row
i, columns p, p+P, ... and writes its partial sum to shared memory; after a barrier one thread per row adds the
P partials in order p = 0..P-1. Consecutive threads take consecutive rows, and a matrix is stored so that
consecutive rows are consecutive addresses (element (i, j) at j*nrows + i): a warp reads consecutive words of
shared memory. Scalar dot products (k.c, q~.u, ...) are tree sums over the block's threads in shared memory
(so the block size is a power of two). Every sum runs in a fixed order: results are the same run to run.

What the kernels keep and recompute (as the Numba CPU kernels do):
* One pass over R per token makes the update and both products with the new rows: q~_t = R_t q_t and
  c_{t+1} = R_t k_{t+1}. The rank-1 term is w w^T with w_t = c_t sqrt(beta_t), beta_t = 1/(gamma + k_t.c_t).
* The forward writes q~_t and, for "store", w_t (T d numbers per sequence), not R_t. The backward sweeps
  forward in time (dq~_t = S_t^T g_t is a forward recursion), rebuilding R_t from w_t ("store") or from
  R_0 = I/lam ("checkpoint") with the forward's own code, so its R_t is bit for bit the forward's; it writes
  u_t = R_t dq~_t to dq (dq_t = u_t) and reads it back in the reverse scan (D_t, C_t, and for gamma the
  lag-weighted D'_t, C'_t [M4]).

Arithmetic in the input's dtype (float32 or float64; one compiled kernel per dtype, any d and dv). Shapes of
the wrappers' arguments: q, k, qt, w (B, H, T, d); v, out, dout (B, H, T, dv); lam, gamma (H,).
Shared memory per block (dynamic): ``shared_bytes``. The block size is a launch parameter (``threads``: a power
of two, 1 to ``MAX_THREADS`` = 256, as the kernels use up to ~150 registers per thread; default
``default_threads(d, dv)``, chosen without GPU timings; both from ``mesa_fast/runtime/tuning.py``, CUDA_*).
"""
from __future__ import annotations

import math
import threading

import numpy as np
from numba import cuda, from_dtype

from ..runtime import tuning
from ..runtime.pool import in_order

__all__ = ["forward", "backward", "shared_bytes", "default_threads", "kernels", "contiguous",
           "simulator_enabled", "signature", "SHARED_LIMIT_DEFAULT", "MAX_THREADS"]

SHARED_LIMIT_DEFAULT = 48 * 1024      # bytes of shared memory a block gets without opting in


def simulator_enabled() -> bool:
    """True when Numba runs CUDA kernels in its simulator (NUMBA_ENABLE_CUDASIM=1 before numba was imported)."""
    from numba import config  # noqa: PLC0415
    return bool(config.ENABLE_CUDASIM)


# ------------------------------------------------------------------------------------------------- kernels
def _build(np_dtype):
    """Compile-ready kernels for one float dtype: {"fwd", "bwd"} -> (python function, Numba dispatcher).

    The python functions are what ``numba.cuda.compile_ptx`` takes (mesa_fast/cuda/resources.py); the
    dispatchers are what the wrappers launch. ``F`` (np.float32 or np.float64) casts constants, so that
    float32 arithmetic stays float32 on the GPU (Numba would widen float32 op int to float64).
    """
    F = np_dtype.type
    nb_dtype = from_dtype(np_dtype)

    @cuda.jit(device=True, inline="always")
    def n_partials(nrows, nthr):
        """P, the partial sums per row of an nrows-row pass with nthr threads."""
        return nthr // nrows if nrows <= nthr else 1

    @cuda.jit(device=True, inline="always")
    def sum_partials(part, nrows, P, out, tid, nthr):
        """out[i] = sum_{p<P} part[p*nrows + i], p in order (one thread per row). The caller syncs before."""
        for i in range(tid, nrows, nthr):
            s = F(0)
            for p in range(P):
                s += part[p * nrows + i]
            out[i] = s

    @cuda.jit(device=True, inline="always")
    def tree_sum3(red, tid, nthr):
        """red[0], red[nthr], red[2 nthr] <- the sums of red's three nthr-long slots (nthr a power of two).

        Every thread of the block must call this; it ends with a barrier.
        """
        s = nthr // 2
        while s > 0:
            if tid < s:
                red[tid] += red[tid + s]
                red[nthr + tid] += red[nthr + tid + s]
                red[2 * nthr + tid] += red[2 * nthr + tid + s]
            cuda.syncthreads()
            s //= 2

    @cuda.jit(device=True, inline="always")
    def rank1_factor(kb, c, w, g, red, scal, d, tid, nthr):
        """w = c sqrt(1/(gamma + k.c))   [M2]/[M4] (gamma = 1 without forgetting). Ends with a barrier."""
        acc = F(0)
        for i in range(tid, d, nthr):
            acc += kb[i] * c[i]
        red[tid] = acc
        red[nthr + tid] = F(0)
        red[2 * nthr + tid] = F(0)
        cuda.syncthreads()
        tree_sum3(red, tid, nthr)
        if tid == 0:
            scal[0] = math.sqrt(F(1) / (g + red[0]))                  # [M2] sqrt(beta_t)
        cuda.syncthreads()
        for i in range(tid, d, nthr):
            w[i] = c[i] * scal[0]                                     # w_t = c_t sqrt(beta_t)
        cuda.syncthreads()

    @cuda.jit(device=True, inline="always")
    def r_pass(R, w, ig, has_gamma, x, y, want_y, px, py, d, tid, nthr):
        """One pass over R (element (i, j) at R[j*d + i]) writing partial sums to px, py:

        R_ij <- (R_ij - w_i w_j) / gamma   ([M4]; without gamma R_ij - w_i w_j, [M2]);
        (R x)_i and, if want_y, (R y)_i with the updated entries. The caller syncs, then ``sum_partials``.
        """
        P = n_partials(d, nthr)
        for e in range(tid, d * P, nthr):
            i = e % d
            p = e // d
            wi = w[i]
            ax = F(0)
            ay = F(0)
            for j in range(p, d, P):
                r = R[j * d + i] - wi * w[j]
                if has_gamma:
                    r *= ig
                R[j * d + i] = r
                ax += r * x[j]
                if want_y:
                    ay += r * y[j]
            px[p * d + i] = ax
            if want_y:
                py[p * d + i] = ay

    @cuda.jit(device=True, inline="always")
    def s_pass(S, g, has_gamma, a, x, z, part, nrows, ncols, tid, nthr):
        """One pass over an nrows x ncols accumulator S (element (r, c) at S[c*nrows + r]):

        S_rc <- gamma S_rc + a_r x_c ([M4]; without gamma S_rc + a_r x_c, [M2]); partial sums of (S z)_r.
        Forward: S_t (dv x d), a = v_t, x = k_t, z = q~_t. Backward: S_t^T (d x dv), a = k_t, x = v_t, z = g_t.
        """
        P = n_partials(nrows, nthr)
        for e in range(tid, nrows * P, nthr):
            r = e % nrows
            p = e // nrows
            ar = a[r]
            acc = F(0)
            for col in range(p, ncols, P):
                if has_gamma:
                    s = g * S[col * nrows + r] + ar * x[col]
                else:
                    s = S[col * nrows + r] + ar * x[col]
                S[col * nrows + r] = s
                acc += s * z[col]
            part[p * nrows + r] = acc

    @cuda.jit(device=True, inline="always")
    def start_recursion(R, kb, c, k, bk, r0, d, tid, nthr):
        """[M2] R_0 = I/lam, k_1 into kb and c_1 = R_0 k_1: the start the forward and the backward's rebuild of R_t
        share, so that the backward's R_t is the forward's bit for bit. The caller syncs after."""
        for e in range(tid, d * d, nthr):
            R[e] = r0 if e // d == e % d else F(0)
        for i in range(tid, d, nthr):
            kb[i] = k[bk + i]
            c[i] = r0 * k[bk + i]

    def mesa_fwd(q, k, v, lam, gam, H, T, d, dv, has_gamma, store_w, out, qt, wst):
        """Forward [M2] (gamma [M4]) of sequence n = blockIdx.x; arrays flat, C order (see module doc).

        Shared memory: R (d*d) | S (dv*d) | kb kn qb c w qtb (6d) | vb (dv) | px py (2W) | red (3 nthr) | scal (2),
        W = max(nthr, d, dv).
        """
        sm = cuda.shared.array(0, dtype=nb_dtype)
        tid = cuda.threadIdx.x
        nthr = cuda.blockDim.x
        n = cuda.blockIdx.x
        W = max(nthr, max(d, dv))
        R = sm[0:d * d]
        S = sm[d * d:d * d + dv * d]
        o = d * d + dv * d
        kb = sm[o:o + d]                  # k_t
        kn = sm[o + d:o + 2 * d]          # k_{t+1}
        qb = sm[o + 2 * d:o + 3 * d]      # q_t
        c = sm[o + 3 * d:o + 4 * d]       # c_t = R_{t-1} k_t
        w = sm[o + 4 * d:o + 5 * d]       # w_t
        qtb = sm[o + 5 * d:o + 6 * d]     # q~_t
        o += 6 * d
        vb = sm[o:o + dv]                 # v_t
        o += dv
        px = sm[o:o + W]
        py = sm[o + W:o + 2 * W]
        o += 2 * W
        red = sm[o:o + 3 * nthr]
        scal = sm[o + 3 * nthr:o + 3 * nthr + 2]

        h = n % H
        g = gam[h] if has_gamma else F(1)
        ig = F(1) / g
        r0 = F(1) / lam[h]
        bk = n * T * d                    # sequence n in q, k, qt, wst
        bv = n * T * dv                   # sequence n in v, out
        start_recursion(R, kb, c, k, bk, r0, d, tid, nthr)           # [M2] R_0 = I/lam, c_1 = R_0 k_1
        for e in range(tid, dv * d, nthr):
            S[e] = F(0)                                               # [M2] S_0 = 0
        cuda.syncthreads()
        Pd = n_partials(d, nthr)
        Pv = n_partials(dv, nthr)
        for t in range(T):
            last = t + 1 == T
            for i in range(tid, d, nthr):
                qb[i] = q[bk + t * d + i]
                kn[i] = F(0) if last else k[bk + (t + 1) * d + i]
            for a in range(tid, dv, nthr):
                vb[a] = v[bv + t * dv + a]
            rank1_factor(kb, c, w, g, red, scal, d, tid, nthr)        # w_t (ends with a barrier)
            if store_w:
                for i in range(tid, d, nthr):
                    wst[bk + t * d + i] = w[i]
            r_pass(R, w, ig, has_gamma, qb, kn, not last, px, py, d, tid, nthr)   # [M2]/[M4] R_t
            cuda.syncthreads()
            sum_partials(px, d, Pd, qtb, tid, nthr)                   # [M2] q~_t = R_t q_t
            if not last:
                sum_partials(py, d, Pd, c, tid, nthr)                 # [M2] c_{t+1} = R_t k_{t+1}
            cuda.syncthreads()
            s_pass(S, g, has_gamma, vb, kb, qtb, px, dv, d, tid, nthr)   # [M2]/[M4] S_t
            cuda.syncthreads()
            sum_partials(px, dv, Pv, out[bv + t * dv:bv + (t + 1) * dv], tid, nthr)   # [M2] o_t = S_t q~_t
            for i in range(tid, d, nthr):
                qt[bk + t * d + i] = qtb[i]
            cuda.syncthreads()
            kb, kn = kn, kb

    def mesa_bwd(k, v, dout, lam, gam, H, T, d, dv, has_gamma, store_w, qt, wst,
                 dq, dk, dvo, dlam_n, dgam_n):
        """Backward [M3] (gamma [M4]) of sequence n = blockIdx.x; per-sequence dlam_n[n], dgam_n[n].

        Shared memory: matrices, (2 if gamma else 1) (d*d + d*dv): in the forward sweep R (d*d) | S^T (d*dv),
        in the reverse scan (the same space) D (d*dv) | C (d*d) | D' (d*dv) | C' (d*d); then
        kb kn c w ab uv qtv dkv prow prow2 (10d) | vb gb (2dv) | pa pb pc (3W) | red (3 nthr) | scal (2).
        """
        sm = cuda.shared.array(0, dtype=nb_dtype)
        tid = cuda.threadIdx.x
        nthr = cuda.blockDim.x
        n = cuda.blockIdx.x
        W = max(nthr, max(d, dv))
        mats = (d * d + d * dv) * (2 if has_gamma else 1)
        R = sm[0:d * d]                                  # forward sweep
        ST = sm[d * d:d * d + d * dv]
        D = sm[0:d * dv]                                 # reverse scan (reuses R, S^T)
        C = sm[d * dv:d * dv + d * d]
        D1 = sm[d * dv + d * d:2 * d * dv + d * d]       # gamma only
        C1 = sm[2 * d * dv + d * d:2 * d * dv + 2 * d * d]
        o = mats
        kb = sm[o:o + d]
        kn = sm[o + d:o + 2 * d]
        c = sm[o + 2 * d:o + 3 * d]
        w = sm[o + 3 * d:o + 4 * d]
        ab = sm[o + 4 * d:o + 5 * d]      # dq~_t = S_t^T g_t
        uv = sm[o + 5 * d:o + 6 * d]      # u_t
        qtv = sm[o + 6 * d:o + 7 * d]     # q~_t
        dkv = sm[o + 7 * d:o + 8 * d]     # D_t v_t
        prow = sm[o + 8 * d:o + 9 * d]    # D'_t v_t
        prow2 = sm[o + 9 * d:o + 10 * d]  # C'_t k_t
        o += 10 * d
        vb = sm[o:o + dv]
        gb = sm[o + dv:o + 2 * dv]
        o += 2 * dv
        pa = sm[o:o + W]
        pb = sm[o + W:o + 2 * W]
        pc = sm[o + 2 * W:o + 3 * W]
        o += 3 * W
        red = sm[o:o + 3 * nthr]
        scal = sm[o + 3 * nthr:o + 3 * nthr + 2]

        h = n % H
        lamv = lam[h]
        g = gam[h] if has_gamma else F(1)
        ig = F(1) / g
        r0 = F(1) / lamv
        bk = n * T * d
        bv = n * T * dv
        Pd = n_partials(d, nthr)
        Pv = n_partials(dv, nthr)

        # 1. forward sweep: S_t^T, dq~_t = S_t^T g_t, R_t rebuilt, u_t = R_t dq~_t -> dq       [M3]
        start_recursion(R, kb, c, k, bk, r0, d, tid, nthr)           # as in the forward
        for e in range(tid, d * dv, nthr):
            ST[e] = F(0)
        cuda.syncthreads()
        for t in range(T):
            last = t + 1 == T
            for a in range(tid, dv, nthr):
                vb[a] = v[bv + t * dv + a]
                gb[a] = dout[bv + t * dv + a]
            for i in range(tid, d, nthr):
                kn[i] = F(0) if last else k[bk + (t + 1) * d + i]
                if store_w:
                    w[i] = wst[bk + t * d + i]
            cuda.syncthreads()
            s_pass(ST, g, has_gamma, kb, vb, gb, pa, d, dv, tid, nthr)   # S_t^T
            cuda.syncthreads()
            sum_partials(pa, d, Pd, ab, tid, nthr)                    # [M3] dq~_t = S_t^T g_t
            cuda.syncthreads()
            if not store_w:
                rank1_factor(kb, c, w, g, red, scal, d, tid, nthr)    # the forward's w_t
            want_c = (not store_w) and (not last)
            r_pass(R, w, ig, has_gamma, ab, kn, want_c, pa, pb, d, tid, nthr)   # R_t
            cuda.syncthreads()
            sum_partials(pa, d, Pd, uv, tid, nthr)                    # [M3] u_t = R_t dq~_t
            if want_c:
                sum_partials(pb, d, Pd, c, tid, nthr)                 # c_{t+1} = R_t k_{t+1}
            cuda.syncthreads()
            for i in range(tid, d, nthr):
                dq[bk + t * d + i] = uv[i]                            # [M3] dq_t = u_t
            kb, kn = kn, kb
            cuda.syncthreads()

        # 2. reverse scan: D_t, C_t (and D'_t, C'_t)                                            [M3]/[M4]
        for e in range(tid, mats, nthr):
            sm[e] = F(0)
        dla = F(0)                                                    # meaningful in thread 0 only
        dga = F(0)
        cuda.syncthreads()
        for t in range(T - 1, -1, -1):
            for i in range(tid, d, nthr):
                kb[i] = k[bk + t * d + i]
                qtv[i] = qt[bk + t * d + i]
                uv[i] = dq[bk + t * d + i]                            # written by this block in the sweep
            for a in range(tid, dv, nthr):
                vb[a] = v[bv + t * dv + a]
                gb[a] = dout[bv + t * dv + a]
            cuda.syncthreads()
            # D pass (D (d x dv), element (i, a) at D[a*d + i]): D_t, partials of D_t v_t; D'_t, D'_t v_t
            for e in range(tid, d * Pd, nthr):
                i = e % d
                p = e // d
                qi = qtv[i]
                acc = F(0)
                accl = F(0)
                for a in range(p, dv, Pd):
                    old = D[a * d + i]
                    if has_gamma:
                        f = g * D1[a * d + i] + old                   # [M4] D'_t = gamma D'_{t+1} + D_{t+1}
                        D1[a * d + i] = f
                        accl += f * vb[a]
                        nw = g * old + qi * gb[a]                     # [M4] D_t = gamma D_{t+1} + q~_t g_t^T
                    else:
                        nw = old + qi * gb[a]                         # [M3] D_t = D_{t+1} + q~_t g_t^T
                    D[a * d + i] = nw
                    acc += nw * vb[a]
                pa[p * d + i] = acc
                pb[p * d + i] = accl
            cuda.syncthreads()
            sum_partials(pa, d, Pd, dkv, tid, nthr)                  # D_t v_t
            sum_partials(pb, d, Pd, prow, tid, nthr)                 # D'_t v_t
            cuda.syncthreads()
            # dv_t = D_t^T k_t (rows a, columns i of D^T) and the C pass touch different partial buffers
            for e in range(tid, dv * Pv, nthr):
                a = e % dv
                p = e // dv
                acc = F(0)
                for i in range(p, d, Pv):
                    acc += D[a * d + i] * kb[i]
                pc[p * dv + a] = acc
            for e in range(tid, d * Pd, nthr):
                i = e % d
                p = e // d
                qi = qtv[i]
                ui = uv[i]
                acc = F(0)
                accl = F(0)
                for j in range(p, d, Pd):
                    mm = ui * qtv[j] + qi * uv[j]
                    old = C[j * d + i]
                    if has_gamma:
                        f = g * C1[j * d + i] + old                   # [M4] C'_t = gamma C'_{t+1} + C_{t+1}
                        C1[j * d + i] = f
                        accl += f * kb[j]
                        nw = g * old + mm                             # [M4] C_t = gamma C_{t+1} + u q~^T + q~ u^T
                    else:
                        nw = old + mm                                 # [M3] C_t = C_{t+1} + u q~^T + q~ u^T
                    C[j * d + i] = nw
                    acc += nw * kb[j]
                pa[p * d + i] = acc
                pb[p * d + i] = accl
            cuda.syncthreads()
            sum_partials(pc, dv, Pv, dvo[bv + t * dv:bv + (t + 1) * dv], tid, nthr)   # [M3] dv_t = D_t^T k_t
            sum_partials(pa, d, Pd, c, tid, nthr)                    # C_t k_t (c is free in the scan)
            sum_partials(pb, d, Pd, prow2, tid, nthr)                # C'_t k_t
            cuda.syncthreads()
            for i in range(tid, d, nthr):
                dk[bk + t * d + i] = dkv[i] - c[i]                    # [M3] dk_t = D_t v_t - C_t k_t
            # the per-token scalars q~.u, k.D'v, k.C'k: tree sums
            qu = F(0)
            kdv = F(0)
            kck = F(0)
            for i in range(tid, d, nthr):
                qu += qtv[i] * uv[i]
                kdv += kb[i] * prow[i]
                kck += kb[i] * prow2[i]
            red[tid] = qu
            red[nthr + tid] = kdv
            red[2 * nthr + tid] = kck
            cuda.syncthreads()
            tree_sum3(red, tid, nthr)
            if tid == 0:
                qu = red[0]
                if has_gamma:
                    gt = F(math.pow(g, F(t)))                         # gamma^{t-1} for 1-based t = t+1
                    dla -= gt * g * qu                                # [M4] -gamma^t q~.u
                    dga += red[nthr] - F(0.5) * red[2 * nthr]         # [M4] k.D'v - k.C'k/2
                    dga -= lamv * F(t + 1) * gt * qu                  # [M4] -lam t gamma^{t-1} q~.u
                else:
                    dla -= qu                                         # [M3] -q~.u
            cuda.syncthreads()
        if tid == 0:
            dlam_n[n] = dla
            dgam_n[n] = dga

    return {"fwd": (mesa_fwd, cuda.jit(mesa_fwd)), "bwd": (mesa_bwd, cuda.jit(mesa_bwd))}


def signature(kind, dtype):
    """The Numba signature the wrappers launch ``kind`` ("fwd" | "bwd") with: flat C-contiguous arrays of dtype, int64
    sizes and flags (what ``numba.cuda.compile_ptx`` needs; mesa_fast/cuda/resources.py)."""
    from numba import int64, void  # noqa: PLC0415
    a = from_dtype(np.dtype(dtype))[::1]
    n_arrays_in, n_arrays_out = {"fwd": (5, 3), "bwd": (5, 7)}[kind]
    return void(*([a] * n_arrays_in + [int64] * 6 + [a] * n_arrays_out))


_kernels: dict = {}
_lock = threading.Lock()


def kernels(dtype):
    """{"fwd", "bwd"} -> (python function, dispatcher) for float32 or float64 (built once per process)."""
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype: the CUDA mesa kernels take float32 or float64, got {dt}")
    with _lock:
        if dt not in _kernels:
            _kernels[dt] = _build(dt)
        return _kernels[dt]


# ------------------------------------------------------------------------------------------------- sizes
def default_threads(d, dv):
    """Threads per block: a power of two >= 4 max(d, dv), within [32, 256] (d = 20: 128; d = 64: 256).

    About four partial sums per row of R, and a few warps to hide shared-memory latency. Not yet tuned on a GPU.
    (4, 32 and 256: ``tuning.CUDA_THREADS_PER_ROW``, ``CUDA_MIN_THREADS``, ``CUDA_MAX_THREADS``.)
    """
    want = tuning.CUDA_THREADS_PER_ROW * max(int(d), int(dv))
    t = tuning.CUDA_MIN_THREADS
    while t < want and t < tuning.CUDA_MAX_THREADS:
        t *= 2
    return t


def shared_bytes(kind, d, dv, has_gamma, itemsize, threads):
    """Dynamic shared memory (bytes) of one block; the layouts in ``mesa_fwd`` / ``mesa_bwd``."""
    W = max(threads, d, dv)
    if kind == "fwd":
        n = d * d + dv * d + 6 * d + dv + 2 * W + 3 * threads + 2
    elif kind == "bwd":
        n = (2 if has_gamma else 1) * (d * d + d * dv) + 10 * d + 2 * dv + 3 * W + 3 * threads + 2
    else:
        raise ValueError(f"kind: expected 'fwd' or 'bwd', got {kind!r}")
    return n * itemsize


MAX_THREADS = tuning.CUDA_MAX_THREADS    # threads per block at most (the tuning module says why)


def _check_threads(threads):
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)) \
            or not 1 <= threads <= MAX_THREADS or threads & (threads - 1):
        raise ValueError(f"threads: expected a power of two from 1 to {MAX_THREADS} (threads per block), "
                         f"got {threads!r}")
    return int(threads)


# ------------------------------------------------------------------------------------------------- launching
def _is_numpy(xp):
    return xp is np


def contiguous(xp, x):
    """A C-contiguous array of module xp (a copy only when needed)."""
    return xp.ascontiguousarray(x)


def _launch(xp, kernel, n_blocks, threads, smem, args):
    """Launch ``kernel`` on (n_blocks,) x (threads,) with smem bytes of dynamic shared memory.

    xp is numpy (the simulator must be on) or cupy (the kernel goes on CuPy's current stream; arrays cross through
    the CUDA array interface without Numba's stream synchronisation, as the kernel is ordered after CuPy's work
    on that stream anyway).
    """
    if _is_numpy(xp):
        if not simulator_enabled():
            raise ValueError("xp: NumPy arrays run the CUDA kernels only in Numba's simulator; set "
                             "NUMBA_ENABLE_CUDASIM=1 before numba is imported, or pass CuPy arrays")
        kernel[n_blocks, threads, 0, smem](*args)
        return
    if simulator_enabled():
        raise ValueError("xp: CuPy arrays cannot run in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1); "
                         "unset it to run on the GPU")
    dev_args = [cuda.from_cuda_array_interface(a.__cuda_array_interface__, owner=a, sync=False)
                if hasattr(a, "__cuda_array_interface__") else a for a in args]
    _opt_in_shared(kernel, dev_args, smem)
    ptr = xp.cuda.get_current_stream().ptr
    stream = cuda.external_stream(ptr) if ptr else 0
    kernel[n_blocks, threads, stream, smem](*dev_args)


def _opt_in_shared(kernel, dev_args, smem):
    """Above 48 KiB of dynamic shared memory a kernel must opt in (cuFuncSetAttribute); ValueError past the GPU's limit."""
    if smem <= SHARED_LIMIT_DEFAULT:
        return
    from numba.cuda.cudadrv import driver as drv  # noqa: PLC0415
    dev = cuda.get_current_device()
    limit = dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    if smem > limit:
        raise ValueError(f"q: head size d and value size dv too large for the CUDA mesa kernel: it needs {smem} "
                         f"bytes of shared memory per block, this GPU allows {limit}")
    compiled = kernel.specialize(*dev_args).overloads
    for kern in compiled.values():
        cufunc = kern._codelibrary.get_cufunc()
        attr = drv.binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        drv.driver.cuKernelSetAttribute(attr, int(smem), cufunc.handle, dev.id)


def _flat(x):
    return x.reshape(-1)


def forward(xp, q, k, v, lam, gamma, store_w, threads=None):
    """[M2]/[M4] on the kernels. q, k (B, H, T, d), v (B, H, T, dv) C-contiguous arrays of module xp, one dtype;
    lam, gamma (H,) (gamma None: [M2]). Returns out (B, H, T, dv), qt (B, H, T, d), w (B, H, T, d) for store_w
    (else an empty array). Inputs are assumed validated (``mesa_ref.ops.mesa.validate_mesa_inputs``)."""
    B, H, T, d = q.shape
    dv = v.shape[3]
    threads = _check_threads(default_threads(d, dv) if threads is None else threads)
    dt = q.dtype
    pyfn, fn = kernels(dt)["fwd"]
    has_gamma = gamma is not None
    lam = contiguous(xp, lam.astype(dt, copy=False))
    gam = contiguous(xp, gamma.astype(dt, copy=False)) if has_gamma else xp.ones(H, dtype=dt)
    q, k, v = (contiguous(xp, x) for x in (q, k, v))
    out = xp.empty((B, H, T, dv), dtype=dt)
    qt = xp.empty((B, H, T, d), dtype=dt)
    w = xp.empty((B, H, T, d) if store_w else (1,), dtype=dt)
    if B * H * T > 0:
        smem = shared_bytes("fwd", d, dv, has_gamma, dt.itemsize, threads)
        _launch(xp, fn, B * H, threads, smem,
                in_order(pyfn, q=_flat(q), k=_flat(k), v=_flat(v), lam=lam, gam=gam, H=H, T=T, d=d, dv=dv,
                         has_gamma=int(has_gamma), store_w=int(bool(store_w)), out=_flat(out), qt=_flat(qt),
                         wst=_flat(w)))
    return out, qt, (w if store_w else xp.empty(0, dtype=dt))


def backward(xp, dout, k, v, lam, gamma, store_w, qt, w, threads=None):
    """[M3]/[M4] on the kernels. dout (B, H, T, dv); k, v, qt, w as ``forward`` took and returned them.
    Returns dq, dk (B, H, T, d), dv (B, H, T, dv), dlam (H,), dgamma (H,) or None."""
    B, H, T, d = k.shape
    dv_ = v.shape[3]
    threads = _check_threads(default_threads(d, dv_) if threads is None else threads)
    dt = k.dtype
    pyfn, fn = kernels(dt)["bwd"]
    has_gamma = gamma is not None
    lam = contiguous(xp, lam.astype(dt, copy=False))
    gam = contiguous(xp, gamma.astype(dt, copy=False)) if has_gamma else xp.ones(H, dtype=dt)
    dout, k, v, qt = (contiguous(xp, x) for x in (dout, k, v, qt))
    dq = xp.empty((B, H, T, d), dtype=dt)
    dk = xp.empty((B, H, T, d), dtype=dt)
    dv = xp.empty((B, H, T, dv_), dtype=dt)
    dlam_n = xp.zeros(B * H, dtype=dt)
    dgam_n = xp.zeros(B * H, dtype=dt)
    wst = contiguous(xp, w) if store_w else xp.empty(1, dtype=dt)
    if B * H * T > 0:
        smem = shared_bytes("bwd", d, dv_, has_gamma, dt.itemsize, threads)
        _launch(xp, fn, B * H, threads, smem,
                in_order(pyfn, k=_flat(k), v=_flat(v), dout=_flat(dout), lam=lam, gam=gam, H=H, T=T, d=d, dv=dv_,
                         has_gamma=int(has_gamma), store_w=int(bool(store_w)), qt=_flat(qt), wst=_flat(wst),
                         dq=_flat(dq), dk=_flat(dk), dvo=_flat(dv), dlam_n=dlam_n, dgam_n=dgam_n))
    dlam = dlam_n.reshape(B, H).sum(axis=0)
    dgamma = dgam_n.reshape(B, H).sum(axis=0) if has_gamma else None
    return dq, dk, dv, dlam, dgamma
