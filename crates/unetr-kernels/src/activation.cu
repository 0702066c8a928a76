// Element-wise and row-wise activations: LeakyReLU, softmax over the last dimension.
#include "common.cuh"

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

#define ACTIVATION_ENTRIES(T, S)                                                                                        \
    extern "C" __global__ void leaky_relu_##S(const T* x, T* y, long long n, double slope) { leaky_relu(x, y, n, slope); } \
    extern "C" __global__ void softmax_##S(const T* x, T* y, long long rows, long long d) { softmax_rows(x, y, rows, d); }
FOR_EACH_DTYPE(ACTIVATION_ENTRIES)
