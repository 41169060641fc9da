// CUDA kernels for the mesa-layer, [M2]-[M4] (docs/math.md section 3), loaded by mesa_fast/cuda/mesa.py
// with cupy.RawModule (NVRTC). The CUDA twin of mesa_fast/numba_kernels/mesa.py; both re-express
// mesa_ref.ops.mesa.mesa_forward / mesa_backward. What differs from the reference:
//
//   * One thread block per sequence n = b*H + h; R_t (d x d) and S_t (dv x d; S_t^T in the
//     backward) live in shared memory, and so do D_t, C_t (and D'_t, C'_t) of the reverse scan,
//     reusing the same space. Rows are spread over the warps; the 32 lanes of a warp split a row,
//     and a row's dot products are warp reductions (__shfl_down_sync, a fixed order: results are
//     deterministic run to run).
//   * One pass over R per token does the update and both products with the new rows:
//     q~_t = R_t q_t and c_{t+1} = R_t k_{t+1}. The rank-1 term is w w^T with
//     w_t = c_t sqrt(beta_t), beta_t = 1/(gamma + k_t.c_t) > 0, so R stays exactly symmetric.
//   * The forward keeps q~_t and, for "store", w_t (T d numbers per sequence) instead of R_t;
//     the backward sweeps forward in time (dq~_t = S_t^T g_t is a forward recursion), rebuilding
//     R_t from w_t ("store") or from R_0 = I/lam ("checkpoint") with the forward's own code, so
//     its R_t is bit-for-bit the forward's. u_t = R_t dq~_t is written to dq (dq_t = u_t) and
//     read back by the reverse scan.
//
// Arithmetic in the input type F (float or double, two entry points each); FMA contraction is
// left on (NVRTC's default), no fast-math. Layouts (C-contiguous): q, k, qt, w: (N, T, d);
// v, out, dout: (N, T, dv); lam, gam: (H,); dlam_n, dgam_n: (N,). blockDim.x: a multiple of 32.

template <typename F>
__device__ __forceinline__ F warp_sum(F x) {
    // the sum of x over the 32 lanes, valid in lane 0 (the whole warp must call this)
    for (int off = 16; off > 0; off >>= 1) x += __shfl_down_sync(0xffffffffu, x, off);
    return x;
}

struct Team {            // this thread's place in the block
    int tid, nthr, lane, warp, nwarp;
};

__device__ __forceinline__ Team team() {
    Team m;
    m.tid = threadIdx.x;
    m.nthr = blockDim.x;
    m.lane = threadIdx.x & 31;
    m.warp = threadIdx.x >> 5;
    m.nwarp = blockDim.x >> 5;
    return m;
}

// y = R x for a d x d matrix R (rows by warps); ends with __syncthreads()
template <typename F>
__device__ void matvec(const F* R, const F* x, F* y, int d, const Team& m) {
    for (int i = m.warp; i < d; i += m.nwarp) {
        F acc = F(0);
        for (int j = m.lane; j < d; j += 32) acc += R[i * d + j] * x[j];
        acc = warp_sum(acc);
        if (m.lane == 0) y[i] = acc;
    }
    __syncthreads();
}

// w = c sqrt(1 / (gamma + k.c))   [M2]/[M4]; scal: one scratch value; ends with __syncthreads()
template <typename F>
__device__ void rank1_factor(const F* kb, const F* c, F* w, F g, F* scal, int d, const Team& m) {
    if (m.warp == 0) {
        F s = F(0);
        for (int i = m.lane; i < d; i += 32) s += kb[i] * c[i];
        s = warp_sum(s);
        if (m.lane == 0) scal[0] = sqrt(F(1) / (g + s));
    }
    __syncthreads();
    for (int i = m.tid; i < d; i += m.nthr) w[i] = c[i] * scal[0];
    __syncthreads();
}

// One pass over R (rows by warps):  R_ij <- (R_ij - w_i w_j) / gamma  (no gamma: R_ij - w_i w_j)
// xo_i = sum_j R_ij x_j and, if want_y, yo_i = sum_j R_ij y_j with the updated entries.
// The caller synchronises afterwards.
template <typename F>
__device__ void r_pass(F* R, const F* w, F ig, int has_gamma, const F* x, const F* y, F* xo, F* yo,
                       int d, bool want_y, const Team& m) {
    for (int i = m.warp; i < d; i += m.nwarp) {
        const F wi = w[i];
        F* Ri = R + i * d;
        F ax = F(0), ay = F(0);
        for (int j = m.lane; j < d; j += 32) {
            F r = Ri[j] - wi * w[j];
            if (has_gamma) r *= ig;
            Ri[j] = r;
            ax += r * x[j];
            if (want_y) ay += r * y[j];
        }
        ax = warp_sum(ax);
        ay = warp_sum(ay);
        if (m.lane == 0) {
            xo[i] = ax;
            if (want_y) yo[i] = ay;
        }
    }
}

// One pass over an nrow x ncol accumulator S (rows by warps):
//   S_ab <- gamma S_ab + p_a x_b (no gamma: S_ab + p_a x_b);  out_a = sum_b S_ab z_b
// Forward: S_t (dv x d), p = v_t, x = k_t, z = q~_t;  backward: S_t^T (d x dv), p = k_t, x = v_t,
// z = g_t. The caller synchronises afterwards.
template <typename F>
__device__ void s_pass(F* S, F g, int has_gamma, const F* p, const F* x, const F* z, F* out,
                       int nrow, int ncol, const Team& m) {
    for (int a = m.warp; a < nrow; a += m.nwarp) {
        const F pa = p[a];
        F* Sa = S + a * ncol;
        F acc = F(0);
        for (int b = m.lane; b < ncol; b += 32) {
            const F s = has_gamma ? g * Sa[b] + pa * x[b] : Sa[b] + pa * x[b];
            Sa[b] = s;
            acc += s * z[b];
        }
        acc = warp_sum(acc);
        if (m.lane == 0) out[a] = acc;
    }
}

// ---------------------------------------------------------------------------------------------
// forward: shared memory R (d*d) | S (dv*d) | kb kn qb c w qtb (6 d) | vb (dv) | scal (8)
// ---------------------------------------------------------------------------------------------
template <typename F>
__device__ void mesa_fwd_impl(const F* __restrict__ q, const F* __restrict__ k, const F* __restrict__ v,
                              const F* __restrict__ lam, const F* __restrict__ gam,
                              int H, int T, int d, int dv, int has_gamma, int store_w,
                              F* __restrict__ out, F* __restrict__ qt, F* __restrict__ wst) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    F* R = reinterpret_cast<F*>(smem_raw);
    F* S = R + d * d;
    F* kb = S + dv * d;        // k_t
    F* kn = kb + d;            // k_{t+1}
    F* qb = kn + d;            // q_t
    F* c = qb + d;             // c_t = R_{t-1} k_t
    F* w = c + d;              // w_t
    F* qtb = w + d;            // q~_t
    F* vb = qtb + d;           // v_t
    F* scal = vb + dv;

    const Team m = team();
    const int n = blockIdx.x;
    const int h = n % H;
    const F lamv = lam[h];
    const F g = has_gamma ? gam[h] : F(1);
    const F ig = F(1) / g;
    const long long bk = (long long)n * T * d;     // sequence n in q, k, qt, wst
    const long long bv = (long long)n * T * dv;    // sequence n in v, out

    for (int e = m.tid; e < d * d; e += m.nthr) R[e] = (e / d == e % d) ? F(1) / lamv : F(0);   // R_0 = I/lam
    for (int e = m.tid; e < dv * d; e += m.nthr) S[e] = F(0);
    for (int i = m.tid; i < d; i += m.nthr) kb[i] = k[bk + i];
    __syncthreads();
    matvec(R, kb, c, d, m);                                     // c_1 = R_0 k_1
    for (int t = 0; t < T; ++t) {
        const bool last = (t + 1 == T);
        for (int i = m.tid; i < d; i += m.nthr) {
            qb[i] = q[bk + (long long)t * d + i];
            kn[i] = last ? F(0) : k[bk + (long long)(t + 1) * d + i];
        }
        for (int a = m.tid; a < dv; a += m.nthr) vb[a] = v[bv + (long long)t * dv + a];
        rank1_factor(kb, c, w, g, scal, d, m);                  // w_t (synchronises)
        if (store_w)
            for (int i = m.tid; i < d; i += m.nthr) wst[bk + (long long)t * d + i] = w[i];
        r_pass(R, w, ig, has_gamma, qb, kn, qtb, c, d, !last, m);   // R_t, q~_t, c_{t+1}
        __syncthreads();
        s_pass(S, g, has_gamma, vb, kb, qtb, out + bv + (long long)t * dv, dv, d, m);   // S_t, o_t
        for (int i = m.tid; i < d; i += m.nthr) qt[bk + (long long)t * d + i] = qtb[i];
        __syncthreads();
        F* tmp = kb; kb = kn; kn = tmp;
    }
}

// ---------------------------------------------------------------------------------------------
// backward: shared memory
//   forward sweep: R (d*d) | S^T (d*dv)
//   reverse scan:  D (d*dv) | C (d*d) | D' (d*dv) | C' (d*d)   (primes with gamma only; same space)
//   then vectors:  kb kn c w ab uv qtv dkv prow prow2 (10 d) | vb gb (2 dv) | scal (8)
// ---------------------------------------------------------------------------------------------
template <typename F>
__device__ void mesa_bwd_impl(const F* __restrict__ k, const F* __restrict__ v, const F* __restrict__ dout,
                              const F* __restrict__ lam, const F* __restrict__ gam,
                              int H, int T, int d, int dv, int has_gamma, int store_w,
                              const F* __restrict__ qt, const F* __restrict__ wst,
                              F* __restrict__ dq, F* __restrict__ dk, F* __restrict__ dvo,
                              F* __restrict__ dlam_n, F* __restrict__ dgam_n) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    F* sm = reinterpret_cast<F*>(smem_raw);
    const int mats = (has_gamma ? 2 : 1) * (d * d + d * dv);
    F* R = sm;                 // forward sweep
    F* ST = R + d * d;
    F* D = sm;                 // reverse scan (reuses R, S^T)
    F* C = D + d * dv;
    F* D1 = C + d * d;         // gamma only
    F* C1 = D1 + d * dv;       // gamma only
    F* kb = sm + mats;
    F* kn = kb + d;
    F* c = kn + d;
    F* w = c + d;
    F* ab = w + d;             // dq~_t = S_t^T g_t
    F* uv = ab + d;            // u_t
    F* qtv = uv + d;           // q~_t
    F* dkv = qtv + d;          // D_t v_t
    F* prow = dkv + d;         // (D'_t v_t)_i
    F* prow2 = prow + d;       // (C'_t k_t)_i
    F* vb = prow2 + d;
    F* gb = vb + dv;
    F* scal = gb + dv;

    const Team m = team();
    const int n = blockIdx.x;
    const int h = n % H;
    const F lamv = lam[h];
    const F g = has_gamma ? gam[h] : F(1);
    const F ig = F(1) / g;
    const long long bk = (long long)n * T * d;
    const long long bv = (long long)n * T * dv;

    // 1. forward sweep: S_t^T, dq~_t = S_t^T g_t, R_t rebuilt, u_t = R_t dq~_t -> dq     [M3]
    for (int e = m.tid; e < d * d; e += m.nthr) R[e] = (e / d == e % d) ? F(1) / lamv : F(0);
    for (int e = m.tid; e < d * dv; e += m.nthr) ST[e] = F(0);
    for (int i = m.tid; i < d; i += m.nthr) kb[i] = k[bk + i];
    __syncthreads();
    if (!store_w) matvec(R, kb, c, d, m);                       // c_1 = R_0 k_1, as in the forward
    for (int t = 0; t < T; ++t) {
        const bool last = (t + 1 == T);
        for (int a = m.tid; a < dv; a += m.nthr) {
            vb[a] = v[bv + (long long)t * dv + a];
            gb[a] = dout[bv + (long long)t * dv + a];
        }
        for (int i = m.tid; i < d; i += m.nthr) {
            kn[i] = last ? F(0) : k[bk + (long long)(t + 1) * d + i];
            if (store_w) w[i] = wst[bk + (long long)t * d + i];
        }
        __syncthreads();
        s_pass(ST, g, has_gamma, kb, vb, gb, ab, d, dv, m);    // [M3] dq~_t = S_t^T g_t
        if (!store_w) rank1_factor(kb, c, w, g, scal, d, m);   // the forward's w_t (synchronises)
        else __syncthreads();
        r_pass(R, w, ig, has_gamma, ab, kn, uv, c, d, (!store_w) && (!last), m);   // R_t, u_t, c_{t+1}
        __syncthreads();
        for (int i = m.tid; i < d; i += m.nthr) dq[bk + (long long)t * d + i] = uv[i];   // dq_t = u_t
        F* tmp = kb; kb = kn; kn = tmp;
        __syncthreads();
    }

    // 2. reverse scan: D_t, C_t (and D'_t, C'_t)                                           [M3]/[M4]
    for (int e = m.tid; e < mats; e += m.nthr) sm[e] = F(0);
    F dla = F(0), dga = F(0);                                   // meaningful in thread 0 only
    __syncthreads();
    for (int t = T - 1; t >= 0; --t) {
        for (int i = m.tid; i < d; i += m.nthr) {
            kb[i] = k[bk + (long long)t * d + i];
            qtv[i] = qt[bk + (long long)t * d + i];
            uv[i] = dq[bk + (long long)t * d + i];                // written by this block in the sweep
        }
        for (int a = m.tid; a < dv; a += m.nthr) {
            vb[a] = v[bv + (long long)t * dv + a];
            gb[a] = dout[bv + (long long)t * dv + a];
        }
        __syncthreads();
        // D pass (rows by warps): D_t = gamma D_{t+1} + q~_t g_t^T; (D_t v_t)_i; D'_t, (D'_t v_t)_i
        for (int i = m.warp; i < d; i += m.nwarp) {
            const F qi = qtv[i];
            F* Di = D + i * dv;
            F* D1i = D1 + i * dv;
            F e = F(0), p = F(0);
            for (int a = m.lane; a < dv; a += 32) {
                const F o = Di[a];
                F nw;
                if (has_gamma) {
                    const F f = g * D1i[a] + o;                  // [M4] D'_t = gamma D'_{t+1} + D_{t+1}
                    D1i[a] = f;
                    p += f * vb[a];
                    nw = g * o + qi * gb[a];                      // [M4] D_t
                } else {
                    nw = o + qi * gb[a];                          // [M3] D_t
                }
                Di[a] = nw;
                e += nw * vb[a];
            }
            e = warp_sum(e);
            p = warp_sum(p);
            if (m.lane == 0) {
                dkv[i] = e;
                prow[i] = p;
            }
        }
        __syncthreads();
        // dv_t = D_t^T k_t (thread per column) and the C pass (rows by warps) touch different arrays
        for (int a = m.tid; a < dv; a += m.nthr) {
            F s = F(0);
            for (int i = 0; i < d; ++i) s += kb[i] * D[i * dv + a];
            dvo[bv + (long long)t * dv + a] = s;                   // [M3] dv_t = D_t^T k_t
        }
        for (int i = m.warp; i < d; i += m.nwarp) {
            const F qi = qtv[i], ui = uv[i];
            F* Ci = C + i * d;
            F* C1i = C1 + i * d;
            F e = F(0), p = F(0);
            for (int j = m.lane; j < d; j += 32) {
                const F mm = ui * qtv[j] + qi * uv[j];
                const F o = Ci[j];
                F nw;
                if (has_gamma) {
                    const F f = g * C1i[j] + o;                  // [M4] C'_t = gamma C'_{t+1} + C_{t+1}
                    C1i[j] = f;
                    p += f * kb[j];
                    nw = g * o + mm;                              // [M4] C_t
                } else {
                    nw = o + mm;                                  // [M3] C_t
                }
                Ci[j] = nw;
                e += nw * kb[j];
            }
            e = warp_sum(e);
            p = warp_sum(p);
            if (m.lane == 0) {
                dk[bk + (long long)t * d + i] = dkv[i] - e;          // [M3] dk_t = D_t v_t - C_t k_t
                prow2[i] = p;
            }
        }
        __syncthreads();
        if (m.warp == 0) {                                      // the per-token scalars
            F qu = F(0), kdv = F(0), kck = F(0);
            for (int i = m.lane; i < d; i += 32) {
                qu += qtv[i] * uv[i];
                kdv += kb[i] * prow[i];
                kck += kb[i] * prow2[i];
            }
            qu = warp_sum(qu);
            kdv = warp_sum(kdv);
            kck = warp_sum(kck);
            if (m.lane == 0) {
                if (has_gamma) {
                    const F gt = pow(g, F(t));                    // gamma^{t-1} for 1-based t = t+1
                    dla -= gt * g * qu;                           // [M4] -gamma^t q~.u
                    dga += kdv - F(0.5) * kck;                    // [M4] k.D'v - k.C'k/2
                    dga -= lamv * F(t + 1) * gt * qu;             // [M4] -lam t gamma^{t-1} q~.u
                } else {
                    dla -= qu;                                    // [M3] -q~.u
                }
            }
        }
        __syncthreads();
    }
    if (m.tid == 0) {
        dlam_n[n] = dla;
        dgam_n[n] = dga;
    }
}

extern "C" {

__global__ void mesa_fwd_f32(const float* q, const float* k, const float* v, const float* lam,
                             const float* gam, int H, int T, int d, int dv, int has_gamma, int store_w,
                             float* out, float* qt, float* wst) {
    mesa_fwd_impl<float>(q, k, v, lam, gam, H, T, d, dv, has_gamma, store_w, out, qt, wst);
}

__global__ void mesa_fwd_f64(const double* q, const double* k, const double* v, const double* lam,
                             const double* gam, int H, int T, int d, int dv, int has_gamma, int store_w,
                             double* out, double* qt, double* wst) {
    mesa_fwd_impl<double>(q, k, v, lam, gam, H, T, d, dv, has_gamma, store_w, out, qt, wst);
}

__global__ void mesa_bwd_f32(const float* k, const float* v, const float* dout, const float* lam,
                             const float* gam, int H, int T, int d, int dv, int has_gamma, int store_w,
                             const float* qt, const float* wst, float* dq, float* dk, float* dvo,
                             float* dlam_n, float* dgam_n) {
    mesa_bwd_impl<float>(k, v, dout, lam, gam, H, T, d, dv, has_gamma, store_w, qt, wst,
                         dq, dk, dvo, dlam_n, dgam_n);
}

__global__ void mesa_bwd_f64(const double* k, const double* v, const double* dout, const double* lam,
                             const double* gam, int H, int T, int d, int dv, int has_gamma, int store_w,
                             const double* qt, const double* wst, double* dq, double* dk, double* dvo,
                             double* dlam_n, double* dgam_n) {
    mesa_bwd_impl<double>(k, v, dout, lam, gam, H, T, d, dv, has_gamma, store_w, qt, wst,
                          dq, dk, dvo, dlam_n, dgam_n);
}

}  // extern "C"
