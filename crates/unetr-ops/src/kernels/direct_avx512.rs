//! AVX-512 direct-convolution microkernel for stride-1 convs on the channels-last padded input of
//! `conv3d_s1`: output channels live in vector lanes (16 per zmm, as oneDNN's nCdhw16c blocking), so
//! each FMA takes one output-channel vector of weights and one input value broadcast from memory.
//! A block of P output positions x NB*16 channels stays in registers for the whole reduction over
//! kd * kh * kw * ci taps. Generic GEMM libraries lose most of their speed on UNETR's shapes
//! (M = 16..128 output channels, K = 48..768 per tap row), which is why this exists.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

pub use super::avx512 as available;

/// Register blocking for `co_pad` output channels: (positions, 16-channel vectors).
pub fn blocking(co_pad: usize) -> (usize, usize) {
    if co_pad % 64 == 0 {
        (6, 4)
    } else if co_pad % 32 == 0 {
        (12, 2)
    } else {
        (14, 1)
    }
}

/// Weights [co, ci, kd, kh, kw] -> per channel group of nb*16: [kd*kh][kw*ci][nb*16], zero-padded channels.
pub fn pack_weights(
    w: &[f32],
    co: usize,
    ci: usize,
    k: [usize; 3],
    co_pad: usize,
    nb: usize,
) -> Vec<f32> {
    let [kd, kh, kw] = k;
    let (taps, kk, gw) = (kd * kh, kw * ci, nb * 16);
    let mut out = vec![0.0f32; co_pad * taps * kk];
    for o in 0..co {
        let (g, lane) = (o / gw, o % gw);
        for i in 0..ci {
            for kz in 0..kd {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let t = kz * kh + ky;
                        let r = kx * ci + i;
                        out[((g * taps + t) * kk + r) * gw + lane] =
                            w[(((o * ci + i) * kd + kz) * kh + ky) * kw + kx];
                    }
                }
            }
        }
    }
    out
}

/// acc[p][c] = sum over taps t, r of wg[t][r][c] * xp[offs[t] + p * ci + r] for p < P, c < NB*16;
/// written channels-last to out[p * out_rs + c] (vector stores).
///
/// # Safety
/// AVX-512F available; every read and write in bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro<const P: usize, const NB: usize, const CI: usize>(
    xp: *const f32,
    ci_rt: usize,
    offs: &[usize],
    kk: usize,
    wg: *const f32,
    out: *mut f32,
    out_rs: usize,
    accumulate: bool,
) {
    // A compile-time channel count turns p * ci into constant displacements of the broadcast loads;
    // with a run-time one LLVM chains address adds between the FMAs and halves their throughput.
    let ci = if CI > 0 { CI } else { ci_rt };
    let mut acc = [[_mm512_setzero_ps(); NB]; P];
    if accumulate {
        for (p, a) in acc.iter_mut().enumerate() {
            for (b, v) in a.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(out.add(p * out_rs + b * 16));
            }
        }
    }
    for (t, &off) in offs.iter().enumerate() {
        let xb = xp.add(off);
        let wb = wg.add(t * kk * NB * 16);
        for r in 0..kk {
            let mut w = [_mm512_setzero_ps(); NB];
            for (b, wv) in w.iter_mut().enumerate() {
                *wv = _mm512_loadu_ps(wb.add((r * NB + b) * 16));
            }
            for (p, a) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*xb.add(p * ci + r));
                for b in 0..NB {
                    a[b] = _mm512_fmadd_ps(w[b], x, a[b]);
                }
            }
        }
    }
    for (p, a) in acc.iter().enumerate() {
        for (b, v) in a.iter().enumerate() {
            _mm512_storeu_ps(out.add(p * out_rs + b * 16), *v);
        }
    }
}

/// One tile: `cols` (a multiple of the blocking's P) virtual output columns starting at `xp`
/// (already offset to the tile's first column), all channel groups, into out[col][c] (row stride `out_rs`
/// >= co_pad): channels-last, transposed to NCDHW by the caller.
///
/// # Safety
/// AVX-512F available; `xp` readable for every tap offset plus `cols * ci`; `out` holds co_pad rows.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile(
    xp: *const f32,
    ci: usize,
    offs: &[usize],
    kk: usize,
    packed: &[f32],
    co_pad: usize,
    cols: usize,
    out: *mut f32,
    out_rs: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let (p, nb) = blocking(co_pad);
        let gw = nb * 16;
        let per_group = offs.len() * kk * gw;
        // Taps per pass: the weights of one pass (kk * gw floats per tap) stay within ~256 KB of L2
        // while the pass sweeps all columns; wide layers (256 -> 128) otherwise stream MBs per block.
        let chunk = ((256 << 10) / (kk * gw * 4)).clamp(1, offs.len());
        for g in 0..co_pad / gw {
            let og = out.add(g * gw);
            for t0 in (0..offs.len()).step_by(chunk) {
                let t1 = (t0 + chunk).min(offs.len());
                let offs = &offs[t0..t1];
                let wg = packed.as_ptr().add(g * per_group + t0 * kk * gw);
                let acc = t0 > 0;
                let mut c = 0;
                while c < cols {
                    let x = xp.add(c * ci);
                    let o = og.add(c * out_rs);
                    macro_rules! by_ci {
                        ($p:literal, $nb:literal) => {
                            match ci {
                                1 => micro::<$p, $nb, 1>(x, ci, offs, kk, wg, o, out_rs, acc),
                                2 => micro::<$p, $nb, 2>(x, ci, offs, kk, wg, o, out_rs, acc),
                                4 => micro::<$p, $nb, 4>(x, ci, offs, kk, wg, o, out_rs, acc),
                                8 => micro::<$p, $nb, 8>(x, ci, offs, kk, wg, o, out_rs, acc),
                                16 => micro::<$p, $nb, 16>(x, ci, offs, kk, wg, o, out_rs, acc),
                                32 => micro::<$p, $nb, 32>(x, ci, offs, kk, wg, o, out_rs, acc),
                                64 => micro::<$p, $nb, 64>(x, ci, offs, kk, wg, o, out_rs, acc),
                                128 => micro::<$p, $nb, 128>(x, ci, offs, kk, wg, o, out_rs, acc),
                                256 => micro::<$p, $nb, 256>(x, ci, offs, kk, wg, o, out_rs, acc),
                                _ => micro::<$p, $nb, 0>(x, ci, offs, kk, wg, o, out_rs, acc),
                            }
                        };
                    }
                    match (p, nb) {
                        (6, 4) => by_ci!(6, 4),
                        (12, 2) => by_ci!(12, 2),
                        _ => by_ci!(14, 1),
                    }
                    c += p;
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (xp, ci, offs, kk, packed, co_pad, cols, out, out_rs);
        unreachable!("direct_avx512::tile called without AVX-512");
    }
}
