// CUDA kernels of unetr-ops, compiled at run time by NVRTC (no headers needed: bf16 is handled as raw
// 16-bit storage). Every kernel exists for f32, f64 and bf16 (suffixes _f32, _f64, _bf16); bf16 loads and
// stores convert to f32 and accumulate in f32, f64 accumulates in f64.
//
// Layouts are the CPU kernels' (row-major NCDHW, contiguous); the CPU results are the reference
// (`cargo xtask gpu-check`). tests/nvrtc.rs compiles this file to PTX on a machine without a GPU.

typedef unsigned short bf16_t;
#define NEG_INF (-__int_as_float(0x7f800000))  // no math.h under NVRTC

__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ double ld(const double* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16_t* p, long long i) { return __uint_as_float(((unsigned)p[i]) << 16); }
__device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(double* p, long long i, double v) { p[i] = v; }
__device__ __forceinline__ void st(bf16_t* p, long long i, float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = (bf16_t)0x7fc0; return; }  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                        // round to nearest even
    p[i] = (bf16_t)(u >> 16);
}

template <typename T> struct Acc { typedef float t; };
template <> struct Acc<double> { typedef double t; };

// Grid-stride loops: launch configurations stay valid for any size.
#define GRID_LOOP(i, n) for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// ---------------------------------------------------------------------------------------------------------
// Convolution geometry (mirrors kernels::conv3d::ConvGeom): x [n, ci, in], w [co, ci, k], y [n, co, out].
struct Geom {
    int n, ci, co;
    int in0, in1, in2;
    int k0, k1, k2;
    int s0, s1, s2;
    int p0, p1, p2;
    int o0, o1, o2;
};

// y = conv(x, w): one thread per output element.
template <typename T> __device__ void conv_fwd(const T* x, const T* w, T* y, Geom g) {
    const long long total = (long long)g.n * g.co * g.o0 * g.o1 * g.o2;
    const long long in_vol = (long long)g.in0 * g.in1 * g.in2, k_vol = g.k0 * g.k1 * g.k2;
    GRID_LOOP(idx, total) {
        long long r = idx;
        const int c2 = r % g.o2; r /= g.o2;
        const int c1 = r % g.o1; r /= g.o1;
        const int c0 = r % g.o0; r /= g.o0;
        const int co = r % g.co;
        const int n = r / g.co;
        typename Acc<T>::t acc = 0;
        for (int ci = 0; ci < g.ci; ++ci) {
            const long long xb = ((long long)n * g.ci + ci) * in_vol, wb = ((long long)co * g.ci + ci) * k_vol;
            for (int a = 0; a < g.k0; ++a) {
                const int i0 = c0 * g.s0 - g.p0 + a;
                if (i0 < 0 || i0 >= g.in0) continue;
                for (int b = 0; b < g.k1; ++b) {
                    const int i1 = c1 * g.s1 - g.p1 + b;
                    if (i1 < 0 || i1 >= g.in1) continue;
                    for (int c = 0; c < g.k2; ++c) {
                        const int i2 = c2 * g.s2 - g.p2 + c;
                        if (i2 < 0 || i2 >= g.in2) continue;
                        acc += ld(x, xb + ((long long)i0 * g.in1 + i1) * g.in2 + i2) * ld(w, wb + (a * g.k1 + b) * g.k2 + c);
                    }
                }
            }
        }
        st(y, idx, acc);
    }
}

// dx = conv^T(dy, w) (also the transposed convolution): one thread per input element.
template <typename T> __device__ void conv_bwd_input(const T* dy, const T* w, T* dx, Geom g) {
    const long long total = (long long)g.n * g.ci * g.in0 * g.in1 * g.in2;
    const long long out_vol = (long long)g.o0 * g.o1 * g.o2, k_vol = g.k0 * g.k1 * g.k2;
    GRID_LOOP(idx, total) {
        long long r = idx;
        const int i2 = r % g.in2; r /= g.in2;
        const int i1 = r % g.in1; r /= g.in1;
        const int i0 = r % g.in0; r /= g.in0;
        const int ci = r % g.ci;
        const int n = r / g.ci;
        typename Acc<T>::t acc = 0;
        for (int a = 0; a < g.k0; ++a) {
            const int t0 = i0 + g.p0 - a;
            if (t0 < 0 || t0 % g.s0) continue;
            const int c0 = t0 / g.s0;
            if (c0 >= g.o0) continue;
            for (int b = 0; b < g.k1; ++b) {
                const int t1 = i1 + g.p1 - b;
                if (t1 < 0 || t1 % g.s1) continue;
                const int c1 = t1 / g.s1;
                if (c1 >= g.o1) continue;
                for (int c = 0; c < g.k2; ++c) {
                    const int t2 = i2 + g.p2 - c;
                    if (t2 < 0 || t2 % g.s2) continue;
                    const int c2 = t2 / g.s2;
                    if (c2 >= g.o2) continue;
                    const long long o = ((long long)c0 * g.o1 + c1) * g.o2 + c2;
                    for (int co = 0; co < g.co; ++co)
                        acc += ld(dy, ((long long)n * g.co + co) * out_vol + o) * ld(w, ((long long)co * g.ci + ci) * k_vol + (a * g.k1 + b) * g.k2 + c);
                }
            }
        }
        st(dx, idx, acc);
    }
}

// Block-wide sum of one value per thread (blockDim.x a power of two <= 1024); result valid in thread 0.
template <typename A> __device__ A block_sum(A v) {
    __shared__ A buf[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) buf[threadIdx.x >> 5] = v;
    __syncthreads();
    v = threadIdx.x < (blockDim.x >> 5) ? buf[threadIdx.x] : (A)0;
    if (threadIdx.x < 32)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    __syncthreads();
    return v;
}

// dw = sum over batch and output positions of dy * x: one block per weight element.
template <typename T> __device__ void conv_bwd_weight(const T* x, const T* dy, T* dw, Geom g) {
    const long long k_vol = g.k0 * g.k1 * g.k2, total_w = (long long)g.co * g.ci * k_vol;
    const long long out_vol = (long long)g.o0 * g.o1 * g.o2, in_vol = (long long)g.in0 * g.in1 * g.in2;
    for (long long widx = blockIdx.x; widx < total_w; widx += gridDim.x) {
        long long r = widx;
        const int c = r % g.k2; r /= g.k2;
        const int b = r % g.k1; r /= g.k1;
        const int a = r % g.k0; r /= g.k0;
        const int ci = r % g.ci;
        const int co = r / g.ci;
        typename Acc<T>::t acc = 0;
        for (long long j = threadIdx.x; j < (long long)g.n * out_vol; j += blockDim.x) {
            const int n = j / out_vol;
            long long o = j % out_vol;
            const int c2 = o % g.o2; o /= g.o2;
            const int c1 = o % g.o1;
            const int c0 = o / g.o1;
            const int i0 = c0 * g.s0 - g.p0 + a, i1 = c1 * g.s1 - g.p1 + b, i2 = c2 * g.s2 - g.p2 + c;
            if (i0 < 0 || i0 >= g.in0 || i1 < 0 || i1 >= g.in1 || i2 < 0 || i2 >= g.in2) continue;
            acc += ld(dy, ((long long)n * g.co + co) * out_vol + j % out_vol) * ld(x, ((long long)n * g.ci + ci) * in_vol + ((long long)i0 * g.in1 + i1) * g.in2 + i2);
        }
        acc = block_sum(acc);
        if (threadIdx.x == 0) st(dw, widx, acc);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Normalisation over groups (mirrors kernels::norm::Groups): group g holds elements (s * groups + g) * len + j
// for s < segs, j < len. Instance norm: groups = N*C, segs = 1; batch norm: groups = C, segs = N; layer norm:
// rows. Optional LeakyReLU after the normalisation (`act`). One block per group.
template <typename T> __device__ void group_stats(const T* x, long long groups, long long segs, long long len, long long g, typename Acc<T>::t* mean, typename Acc<T>::t* var) {
    typedef typename Acc<T>::t A;
    __shared__ A sh[2];
    A s = 0;
    for (long long s_ = 0; s_ < segs; ++s_)
        for (long long j = threadIdx.x; j < len; j += blockDim.x) s += ld(x, (s_ * groups + g) * len + j);
    s = block_sum(s);
    if (threadIdx.x == 0) sh[0] = s / (A)(segs * len);
    __syncthreads();
    const A m = sh[0];
    A q = 0;  // two passes: the variance of shifted data, as the CPU kernel
    for (long long s_ = 0; s_ < segs; ++s_)
        for (long long j = threadIdx.x; j < len; j += blockDim.x) {
            const A d = ld(x, (s_ * groups + g) * len + j) - m;
            q += d * d;
        }
    q = block_sum(q);
    if (threadIdx.x == 0) sh[1] = q / (A)(segs * len);
    __syncthreads();
    *mean = m;
    *var = sh[1];
    __syncthreads();
}

template <typename T> __device__ void norm_fwd(const T* x, T* y, long long groups, long long segs, long long len, double eps, int act, double slope) {
    typedef typename Acc<T>::t A;
    for (long long g = blockIdx.x; g < groups; g += gridDim.x) {
        A mean, var;
        group_stats(x, groups, segs, len, g, &mean, &var);
        const A rstd = (A)1 / sqrt(var + (A)eps);
        for (long long s_ = 0; s_ < segs; ++s_)
            for (long long j = threadIdx.x; j < len; j += blockDim.x) {
                const long long i = (s_ * groups + g) * len + j;
                A v = (ld(x, i) - mean) * rstd;
                if (act && v < (A)0) v *= (A)slope;
                st(y, i, v);
            }
    }
}

// dx = rstd * (d - mean(d) - xhat * mean(d * xhat)), d = dy (times slope where xhat < 0 with act).
template <typename T> __device__ void norm_bwd(const T* x, const T* dy, T* dx, long long groups, long long segs, long long len, double eps, int act, double slope) {
    typedef typename Acc<T>::t A;
    __shared__ A sh[2];
    for (long long g = blockIdx.x; g < groups; g += gridDim.x) {
        A mean, var;
        group_stats(x, groups, segs, len, g, &mean, &var);
        const A rstd = (A)1 / sqrt(var + (A)eps);
        A s1 = 0, s2 = 0;
        for (long long s_ = 0; s_ < segs; ++s_)
            for (long long j = threadIdx.x; j < len; j += blockDim.x) {
                const long long i = (s_ * groups + g) * len + j;
                const A xh = (ld(x, i) - mean) * rstd;
                A d = ld(dy, i);
                if (act && xh < (A)0) d *= (A)slope;
                s1 += d;
                s2 += d * xh;
            }
        s1 = block_sum(s1);
        if (threadIdx.x == 0) sh[0] = s1 / (A)(segs * len);
        s2 = block_sum(s2);
        if (threadIdx.x == 0) sh[1] = s2 / (A)(segs * len);
        __syncthreads();
        const A m1 = sh[0], m2 = sh[1];
        for (long long s_ = 0; s_ < segs; ++s_)
            for (long long j = threadIdx.x; j < len; j += blockDim.x) {
                const long long i = (s_ * groups + g) * len + j;
                const A xh = (ld(x, i) - mean) * rstd;
                A d = ld(dy, i);
                if (act && xh < (A)0) d *= (A)slope;
                st(dx, i, rstd * (d - m1 - xh * m2));
            }
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------------------------
template <typename T> __device__ void leaky_relu(const T* x, T* y, long long n, double slope) {
    typedef typename Acc<T>::t A;
    GRID_LOOP(i, n) {
        const A v = ld(x, i);
        st(y, i, v > (A)0 ? v : v * (A)slope);
    }
}

// Softmax over rows of length d: one block per row.
template <typename T> __device__ void softmax_rows(const T* x, T* y, long long rows, long long d) {
    typedef typename Acc<T>::t A;
    __shared__ A sh;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long b = r * d;
        A m = NEG_INF;
        for (long long j = threadIdx.x; j < d; j += blockDim.x) m = fmax(m, (A)ld(x, b + j));
        for (int o = 16; o > 0; o >>= 1) m = fmax(m, __shfl_down_sync(0xffffffffu, m, o));
        __shared__ A mb[32];
        if ((threadIdx.x & 31) == 0) mb[threadIdx.x >> 5] = m;
        __syncthreads();
        if (threadIdx.x == 0) {
            A t = mb[0];
            for (int w = 1; w < (int)(blockDim.x >> 5); ++w) t = fmax(t, mb[w]);
            sh = t;
        }
        __syncthreads();
        m = sh;
        A s = 0;
        for (long long j = threadIdx.x; j < d; j += blockDim.x) s += exp((A)ld(x, b + j) - m);
        s = block_sum(s);
        if (threadIdx.x == 0) sh = s;
        __syncthreads();
        s = sh;
        for (long long j = threadIdx.x; j < d; j += blockDim.x) st(y, b + j, exp((A)ld(x, b + j) - m) / s);
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------------------------
// Fused attention (flash-style: scores never leave registers; online softmax). q [BH, L, Dh], k/v [BH, Lk, Dh],
// o [BH, L, Dh], lse [BH, L] (log-sum-exp of the scaled scores, kept for the backward). One thread per query
// row; Dh <= 128.
#define MAX_DH 128
template <typename T> __device__ void attn_fwd(const T* q, const T* k, const T* v, T* o, float* lse, int bh, int L, int Lk, int dh, double scale) {
    typedef typename Acc<T>::t A;
    GRID_LOOP(row, (long long)bh * L) {
        const long long h = row / L;
        A qr[MAX_DH], acc[MAX_DH];
        for (int d = 0; d < dh; ++d) { qr[d] = ld(q, row * dh + d) * (A)scale; acc[d] = 0; }
        A m = NEG_INF, l = 0;
        for (int j = 0; j < Lk; ++j) {
            const long long kb = (h * Lk + j) * dh;
            A s = 0;
            for (int d = 0; d < dh; ++d) s += qr[d] * ld(k, kb + d);
            const A mn = fmax(m, s), corr = exp(m - mn), p = exp(s - mn);
            l = l * corr + p;
            for (int d = 0; d < dh; ++d) acc[d] = acc[d] * corr + p * ld(v, kb + d);
            m = mn;
        }
        for (int d = 0; d < dh; ++d) st(o, row * dh + d, acc[d] / l);
        lse[row] = (float)(m + log(l));
    }
}

// Backward, recomputing P from q, k and lse: delta_i = sum_d dO_i * O_i;
// dq_i = scale * sum_j P_ij (dO_i . v_j - delta_i) k_j  (one thread per query row);
// dk_j = scale * sum_i P_ij (dO_i . v_j - delta_i) q_i, dv_j = sum_i P_ij dO_i  (one thread per key row).
template <typename T> __device__ void attn_bwd_q(const T* q, const T* k, const T* v, const T* o, const T* dout, const float* lse, T* dq, float* delta, int bh, int L, int Lk, int dh, double scale) {
    typedef typename Acc<T>::t A;
    GRID_LOOP(row, (long long)bh * L) {
        const long long h = row / L;
        A qr[MAX_DH], dor[MAX_DH], acc[MAX_DH];
        A dl = 0;
        for (int d = 0; d < dh; ++d) {
            qr[d] = ld(q, row * dh + d) * (A)scale;
            dor[d] = ld(dout, row * dh + d);
            dl += dor[d] * (A)ld(o, row * dh + d);
            acc[d] = 0;
        }
        delta[row] = (float)dl;
        const A ls = lse[row];
        for (int j = 0; j < Lk; ++j) {
            const long long kb = (h * Lk + j) * dh;
            A s = 0, dp = 0;
            for (int d = 0; d < dh; ++d) { s += qr[d] * ld(k, kb + d); dp += dor[d] * ld(v, kb + d); }
            const A ds = exp(s - ls) * (dp - dl);
            for (int d = 0; d < dh; ++d) acc[d] += ds * ld(k, kb + d);
        }
        for (int d = 0; d < dh; ++d) st(dq, row * dh + d, acc[d] * (A)scale);
    }
}

template <typename T> __device__ void attn_bwd_kv(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dk, T* dv, int bh, int L, int Lk, int dh, double scale) {
    typedef typename Acc<T>::t A;
    GRID_LOOP(krow, (long long)bh * Lk) {
        const long long h = krow / Lk;
        A kr[MAX_DH], vr[MAX_DH], gk[MAX_DH], gv[MAX_DH];
        for (int d = 0; d < dh; ++d) { kr[d] = ld(k, krow * dh + d); vr[d] = ld(v, krow * dh + d); gk[d] = 0; gv[d] = 0; }
        for (int i = 0; i < L; ++i) {
            const long long qb = (h * L + i) * dh;
            A s = 0, dp = 0;
            for (int d = 0; d < dh; ++d) { s += ld(q, qb + d) * kr[d]; dp += ld(dout, qb + d) * vr[d]; }
            const A p = exp(s * (A)scale - (A)lse[h * L + i]);
            const A ds = p * (dp - (A)delta[h * L + i]);
            for (int d = 0; d < dh; ++d) { gv[d] += p * ld(dout, qb + d); gk[d] += ds * ld(q, qb + d); }
        }
        for (int d = 0; d < dh; ++d) { st(dk, krow * dh + d, gk[d] * (A)scale); st(dv, krow * dh + d, gv[d]); }
    }
}

// ---------------------------------------------------------------------------------------------------------
// extern "C" entry points, one per kernel and dtype.
#define ENTRIES(T, S)                                                                                                   \
    extern "C" __global__ void conv3d_fwd_##S(const T* x, const T* w, T* y, Geom g) { conv_fwd(x, w, y, g); }          \
    extern "C" __global__ void conv3d_bwd_input_##S(const T* dy, const T* w, T* dx, Geom g) { conv_bwd_input(dy, w, dx, g); } \
    extern "C" __global__ void conv3d_bwd_weight_##S(const T* x, const T* dy, T* dw, Geom g) { conv_bwd_weight(x, dy, dw, g); } \
    extern "C" __global__ void norm_fwd_##S(const T* x, T* y, long long groups, long long segs, long long len, double eps, int act, double slope) { norm_fwd(x, y, groups, segs, len, eps, act, slope); } \
    extern "C" __global__ void norm_bwd_##S(const T* x, const T* dy, T* dx, long long groups, long long segs, long long len, double eps, int act, double slope) { norm_bwd(x, dy, dx, groups, segs, len, eps, act, slope); } \
    extern "C" __global__ void leaky_relu_##S(const T* x, T* y, long long n, double slope) { leaky_relu(x, y, n, slope); } \
    extern "C" __global__ void softmax_##S(const T* x, T* y, long long rows, long long d) { softmax_rows(x, y, rows, d); } \
    extern "C" __global__ void attn_fwd_##S(const T* q, const T* k, const T* v, T* o, float* lse, int bh, int L, int Lk, int dh, double scale) { attn_fwd(q, k, v, o, lse, bh, L, Lk, dh, scale); } \
    extern "C" __global__ void attn_bwd_q_##S(const T* q, const T* k, const T* v, const T* o, const T* dout, const float* lse, T* dq, float* delta, int bh, int L, int Lk, int dh, double scale) { attn_bwd_q(q, k, v, o, dout, lse, dq, delta, bh, L, Lk, dh, scale); } \
    extern "C" __global__ void attn_bwd_kv_##S(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dk, T* dv, int bh, int L, int Lk, int dh, double scale) { attn_bwd_kv(q, k, v, dout, lse, delta, dk, dv, bh, L, Lk, dh, scale); }

ENTRIES(float, f32)
ENTRIES(double, f64)
ENTRIES(bf16_t, bf16)
