// 3D convolution, direct: the forward, the input gradient (also the transposed convolution's forward) and the
// weight gradient. Layouts are the CPU kernels' (row-major NCDHW, contiguous).
#include "common.cuh"

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

#define CONV3D_ENTRIES(T, S)                                                                                            \
    extern "C" __global__ void conv3d_fwd_##S(const T* x, const T* w, T* y, Geom g) { conv_fwd(x, w, y, g); }          \
    extern "C" __global__ void conv3d_bwd_input_##S(const T* dy, const T* w, T* dx, Geom g) { conv_bwd_input(dy, w, dx, g); } \
    extern "C" __global__ void conv3d_bwd_weight_##S(const T* x, const T* dy, T* dw, Geom g) { conv_bwd_weight(x, dy, dw, g); }
FOR_EACH_DTYPE(CONV3D_ENTRIES)
