// Group normalisation (instance, batch and layer norm), optionally fused with LeakyReLU: forward and backward.
#include "common.cuh"

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

#define NORM_ENTRIES(T, S)                                                                                              \
    extern "C" __global__ void norm_fwd_##S(const T* x, T* y, long long groups, long long segs, long long len, double eps, int act, double slope) { norm_fwd(x, y, groups, segs, len, eps, act, slope); } \
    extern "C" __global__ void norm_bwd_##S(const T* x, const T* dy, T* dx, long long groups, long long segs, long long len, double eps, int act, double slope) { norm_bwd(x, dy, dx, groups, segs, len, eps, act, slope); }
FOR_EACH_DTYPE(NORM_ENTRIES)
