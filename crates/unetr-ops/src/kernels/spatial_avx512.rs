//! AVX-512 direct-convolution microkernel with output *positions* in vector lanes, for stride-1 convs
//! with few output channels (UNETR's 16-channel stages at 96^3, the costliest convs of the model).
//!
//! `direct_avx512` puts output channels in lanes: with 16 channels each input value it broadcasts feeds
//! one FMA, so the loads (one per FMA) cap it at about 65% of the FMA peak. Here a block is 48
//! consecutive virtual output columns (three vectors) x up to 8 output channels: per tap and input
//! channel it loads three input vectors and broadcasts 8 weights for 24 FMAs, which leaves the FMA
//! units, not the loads, as the limit. The input is the channels-first padded copy xp[c][q] of
//! `conv3d_s1` (virtual columns q on the padded grid), so a tap is a plain offset and the input
//! vectors are unaligned loads.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Virtual output columns per microkernel call (three 16-lane vectors).
pub const COLS: usize = 48;
/// Output channels per group (broadcast weights per FMA row).
const GROUP: usize = 8;

/// Whether this kernel beats the channels-in-lanes one: few output channels, so that a channel
/// vector would be mostly one FMA per load (measured with `examples/conv_shapes.rs`).
pub fn preferred(co: usize) -> bool {
    co <= 16
}

/// Output-channel groups as (first channel, channels), at most 8 each.
pub fn groups(co: usize) -> Vec<(usize, usize)> {
    (0..co)
        .step_by(GROUP)
        .map(|c0| (c0, GROUP.min(co - c0)))
        .collect()
}

/// Weights [co, ci, taps] -> per group (c0, n): [ci][taps][n] at offset c0 * ci * taps.
pub fn pack_weights(w: &[f32], co: usize, ci: usize, taps: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; co * ci * taps];
    for (c0, n) in groups(co) {
        let dst = &mut out[c0 * ci * taps..][..n * ci * taps];
        for j in 0..n {
            for i in 0..ci {
                for t in 0..taps {
                    dst[(i * taps + t) * n + j] = w[((c0 + j) * ci + i) * taps + t];
                }
            }
        }
    }
    out
}

/// acc[j][v] = sum over channels c < nc and taps t of wg[c][t][j] * xp[c * cs + offs[t] + 16 v + lane],
/// for j < N, stored to out[j * out_rs + 16 v + lane] (added to what is there when `accumulate`).
///
/// # Safety
/// AVX-512F available; every read and write in bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const N: usize>(
    xp: *const f32,
    cs: usize,
    nc: usize,
    offs: &[usize],
    wg: *const f32,
    out: *mut f32,
    out_rs: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 3]; N];
    if accumulate {
        for (j, a) in acc.iter_mut().enumerate() {
            for (v, r) in a.iter_mut().enumerate() {
                *r = _mm512_loadu_ps(out.add(j * out_rs + v * 16));
            }
        }
    }
    let taps = offs.len();
    for c in 0..nc {
        let xc = xp.add(c * cs);
        let wc = wg.add(c * taps * N);
        for (t, &off) in offs.iter().enumerate() {
            let xb = xc.add(off);
            // The next-but-one block's lines of this input row: a tap row's lines are used by only
            // this block and the next, and the hardware prefetchers do not follow 9 * ci streams.
            _mm_prefetch::<_MM_HINT_T0>(xb.add(2 * COLS) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(xb.add(2 * COLS + 16) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(xb.add(2 * COLS + 32) as *const i8);
            let x0 = _mm512_loadu_ps(xb);
            let x1 = _mm512_loadu_ps(xb.add(16));
            let x2 = _mm512_loadu_ps(xb.add(32));
            let wt = wc.add(t * N);
            for (j, a) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*wt.add(j));
                a[0] = _mm512_fmadd_ps(x0, w, a[0]);
                a[1] = _mm512_fmadd_ps(x1, w, a[1]);
                a[2] = _mm512_fmadd_ps(x2, w, a[2]);
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        for (v, r) in a.iter().enumerate() {
            _mm512_storeu_ps(out.add(j * out_rs + v * 16), *r);
        }
    }
}

/// One tile of `cols` (a multiple of [`COLS`]) virtual columns starting at `xp` (channel 0 of the
/// tile's first column; channel c at `xp + c * cs`), all output channels, into out[co][col] with row
/// stride `out_rs` (added to what is there when `accumulate`).
///
/// # Safety
/// AVX-512F available; `xp` readable at every channel, tap offset and column; `out` holds co rows.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile(
    xp: *const f32,
    cs: usize,
    ci: usize,
    offs: &[usize],
    packed: &[f32],
    co: usize,
    cols: usize,
    out: *mut f32,
    out_rs: usize,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let taps = offs.len();
        let groups = groups(co);
        // Input channels per pass: the weights of one pass for all groups (chunk * taps * co floats)
        // stay in L1 (~16 KB) beside the block's input lines, which every group then reads from L1.
        let chunk = ((16 << 10) / (taps * co * 4)).clamp(1, ci);
        for i0 in (0..ci).step_by(chunk) {
            let nc = chunk.min(ci - i0);
            let x = xp.add(i0 * cs);
            let acc = accumulate || i0 > 0;
            let mut c = 0;
            while c < cols {
                let xc = x.add(c);
                for &(c0, n) in &groups {
                    let w = packed.as_ptr().add(c0 * ci * taps + i0 * taps * n);
                    let o = out.add(c0 * out_rs + c);
                    match n {
                        8 => micro::<8>(xc, cs, nc, offs, w, o, out_rs, acc),
                        7 => micro::<7>(xc, cs, nc, offs, w, o, out_rs, acc),
                        6 => micro::<6>(xc, cs, nc, offs, w, o, out_rs, acc),
                        5 => micro::<5>(xc, cs, nc, offs, w, o, out_rs, acc),
                        4 => micro::<4>(xc, cs, nc, offs, w, o, out_rs, acc),
                        3 => micro::<3>(xc, cs, nc, offs, w, o, out_rs, acc),
                        2 => micro::<2>(xc, cs, nc, offs, w, o, out_rs, acc),
                        _ => micro::<1>(xc, cs, nc, offs, w, o, out_rs, acc),
                    }
                }
                c += COLS;
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (xp, cs, ci, offs, packed, co, cols, out, out_rs, accumulate);
        unreachable!("spatial_avx512::tile called without AVX-512");
    }
}
