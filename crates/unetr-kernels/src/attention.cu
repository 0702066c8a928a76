// Fused multi-head attention, forward and backward.
#include "common.cuh"

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

#define ATTENTION_ENTRIES(T, S)                                                                                         \
    extern "C" __global__ void attn_fwd_##S(const T* q, const T* k, const T* v, T* o, float* lse, int bh, int L, int Lk, int dh, double scale) { attn_fwd(q, k, v, o, lse, bh, L, Lk, dh, scale); } \
    extern "C" __global__ void attn_bwd_q_##S(const T* q, const T* k, const T* v, const T* o, const T* dout, const float* lse, T* dq, float* delta, int bh, int L, int Lk, int dh, double scale) { attn_bwd_q(q, k, v, o, dout, lse, dq, delta, bh, L, Lk, dh, scale); } \
    extern "C" __global__ void attn_bwd_kv_##S(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dk, T* dv, int bh, int L, int Lk, int dh, double scale) { attn_bwd_kv(q, k, v, dout, lse, delta, dk, dv, bh, L, Lk, dh, scale); }
FOR_EACH_DTYPE(ATTENTION_ENTRIES)
