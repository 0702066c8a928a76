// Shared by every kernel module of unetr-kernels: dtype loads and stores, accumulator types, grid-stride loops,
// block reductions. No system headers, so that the same sources compile under nvcc and NVRTC.
// bf16 is handled as raw 16-bit storage: loads and stores convert to f32, accumulation is in f32 (f64 in f64).
#pragma once

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

// Every entry point exists for f32, f64 and bf16 (suffixes _f32, _f64, _bf16).
#define FOR_EACH_DTYPE(M) M(float, f32) M(double, f64) M(bf16_t, bf16)
