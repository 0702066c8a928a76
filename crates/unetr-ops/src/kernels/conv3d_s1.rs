//! Stride-1 3D convolution as an implicit GEMM over a channels-last, zero-padded copy of the input.
//!
//! With the input stored as Xp[position, channel] on the padded grid, the im2col rows of the taps
//! (kz, ky, 0..kw) for one output column q are the kw * ci consecutive values starting at
//! Xp[q + kz*Hp*Wp + ky*Wp, 0]: a plain strided view. So a conv is kd * kh GEMMs with K = kw * ci over
//! such views, and nothing like im2col is ever built (gemm packs its panels straight from Xp).
//! Outputs are computed on "virtual" columns q = (oz * Hp + oy) * Wp + ox of the padded grid; the few
//! columns with oy >= Ho or ox >= Wo are computed and dropped. Extra memory: the padded input plus one
//! small tile per thread.
//!
//! The forward picks one of four kernels over these views (`Kernel`): in f32 on AVX-512, Winograd
//! F(2, 3) (`winograd`, 3x3x3 padding 1, 16+ input and <= 64 output channels), else positions in lanes
//! (`spatial_avx512`, <= 16 output channels, channels-first copy), else channels in lanes
//! (`direct_avx512`); otherwise (f64, no AVX-512) the GEMMs. The input is padded one depth slab at a time.

use super::conv3d::ConvGeom;
use super::{
    as_f32, direct_avx512, matmul, spatial_avx512, threads, winograd, with_scratch, Elem, Mat, SyncPtr,
};
use rayon::prelude::*;

/// Columns per tile: the [co x cols] accumulator stays in L2 across the kd * kh GEMMs.
const TILE_COLS: usize = 4096;

struct Plan {
    hp: usize,
    wp: usize,

    /// Length of a channels-last padded sample, with slack for the last tile's over-reads.
    xp_len: usize,
    /// Virtual output columns per sample.
    q: usize,
    /// Tile width in columns (whole padded rows).
    cols: usize,
}

fn plan(g: &ConvGeom) -> Plan {
    let [d, h, w] = g.input;
    let [pd, ph, pw] = g.padding;
    let (dp, hp, wp) = (d + 2 * pd, h + 2 * ph, w + 2 * pw);
    let vp = dp * hp * wp;
    let q = g.output[0] * hp * wp;
    let rows_per_tile = (TILE_COLS / wp).max(1);
    // Enough tiles for every thread, but no tile narrower than one padded row.
    let want = (4 * threads()).div_ceil(g.n.max(1));
    let rows = rows_per_tile.min((q / wp).div_ceil(want)).max(1);
    let cols = rows * wp;
    // Over-reads: the last tile's columns rounded up to the microkernel's block (< 16), plus the taps.
    let slack = ((g.kernel[1] - 1) * wp + g.kernel[2] + cols + 16) * g.ci;
    Plan {
        hp,
        wp,
        xp_len: vp * g.ci + slack,
        q,
        cols,
    }
}

/// Channels-last, zero-padded copy of `planes` padded planes of one sample from padded plane `zp0`:
/// xp[(((zp - zp0) * hp) + y) * wp + x][c], with the plan's slack after them.
fn pad_slab<T: Elem>(x: &[T], g: &ConvGeom, p: &Plan, zp0: usize, planes: usize) -> Vec<T> {
    let [d, h, w] = g.input;
    let [pd, ph, pw] = g.padding;
    let ci = g.ci;
    let plane = p.hp * p.wp * ci;
    let slack = p.xp_len - (d + 2 * pd) * plane;
    uninit_planes(planes, plane, slack, |j, dst: *mut T| {
        let zp = zp0 + j;
        if zp < pd || zp >= pd + d {
            return false; // a padding plane: zeros
        }
        let z = zp - pd;
        // SAFETY: dst holds one plane; every element is written exactly once below.
        unsafe {
            std::ptr::write_bytes(dst, 0, ph * p.wp * ci);
            for y in 0..h {
                let row = dst.add((y + ph) * p.wp * ci);
                std::ptr::write_bytes(row, 0, pw * ci);
                for c in 0..ci {
                    let src = &x[((c * d + z) * h + y) * w..][..w];
                    for (xi, &v) in src.iter().enumerate() {
                        row.add((pw + xi) * ci + c).write(v);
                    }
                }
                std::ptr::write_bytes(row.add((pw + w) * ci), 0, (p.wp - pw - w) * ci);
            }
            std::ptr::write_bytes(dst.add((h + ph) * p.wp * ci), 0, (p.hp - ph - h) * p.wp * ci);
        }
        true
    })
}

/// A buffer of `planes` planes of `plane` elements plus `slack` zeros, each plane filled by
/// `fill(j, ptr)` (which writes all of it and returns true, or returns false for an all-zero plane), in
/// parallel. No up-front zeroing: the padded copies are 30-120 MB per conv and a memset of them cost as
/// much as the copy.
fn uninit_planes<T: Elem>(planes: usize, plane: usize, slack: usize, fill: impl Fn(usize, *mut T) -> bool + Sync) -> Vec<T> {
    let n = planes * plane + slack;
    let mut xp: Vec<T> = Vec::with_capacity(n);
    let base = SyncPtr(xp.as_mut_ptr());
    (0..planes).into_par_iter().for_each(|j| {
        // SAFETY: plane j is [j * plane, (j + 1) * plane) of the capacity, written by this task only.
        let dst = unsafe { base.ptr().add(j * plane) };
        if !fill(j, dst) {
            unsafe { std::ptr::write_bytes(dst, 0, plane) };
        }
    });
    // SAFETY: the planes were written above, the slack here; the bit pattern 0 is 0.0 in every float type.
    unsafe {
        std::ptr::write_bytes(base.ptr().add(planes * plane), 0, slack);
        xp.set_len(n);
    }
    xp
}

/// Channels-first, zero-padded copy of `planes` padded planes of one sample from padded plane `zp0`:
/// xp[c * cs + ((zp - zp0) * hp + y) * wp + x], returned with the channel stride cs. The slack after
/// the last channel covers the over-reads of `spatial_avx512` (tiles rounded up to its block, plus
/// the taps); reads past a channel's end land in the next channel, only for dropped columns.
fn pad_slab_cf<T: Elem>(
    x: &[T],
    g: &ConvGeom,
    p: &Plan,
    zp0: usize,
    planes: usize,
) -> (Vec<T>, usize) {
    let [d, h, w] = g.input;
    let [pd, ph, pw] = g.padding;
    let plane = p.hp * p.wp;
    let cs = planes * plane;
    let slack = spatial_avx512::COLS + g.kernel[1] * p.wp + g.kernel[2] + 16;
    let xp = uninit_planes(g.ci * planes, plane, slack, |i, dst: *mut T| {
        let (c, zp) = (i / planes, zp0 + i % planes);
        if zp < pd || zp >= pd + d {
            return false; // a padding plane: zeros
        }
        let z = zp - pd;
        // SAFETY: dst holds one plane; every element is written exactly once below.
        unsafe {
            std::ptr::write_bytes(dst, 0, ph * p.wp + pw);
            for y in 0..h {
                let row = dst.add((y + ph) * p.wp + pw);
                std::ptr::copy_nonoverlapping(x[((c * d + z) * h + y) * w..][..w].as_ptr(), row, w);
                // the right padding of this row and the left padding of the next
                let gap = if y + 1 < h { p.wp - w } else { p.wp - pw - w };
                std::ptr::write_bytes(row.add(w), 0, gap);
            }
            std::ptr::write_bytes(dst.add((h + ph) * p.wp), 0, (p.hp - ph - h) * p.wp);
        }
        true
    });
    (xp, cs)
}

/// Output planes per slab of the forward: the padded channels-last copy then holds one slab plus the
/// kernel's halo (about 32 MB) instead of the whole sample (120 MB for UNETR's 32-channel 96^3 convs),
/// which bounds the forward's extra memory; the halo planes are copied twice, a few percent of the copy.
fn slab_planes<T: Elem>(g: &ConvGeom, p: &Plan) -> usize {
    let plane_bytes = p.hp * p.wp * g.ci * std::mem::size_of::<T>();
    ((32usize << 20) / plane_bytes.max(1))
        .saturating_sub(g.kernel[0] - 1)
        .clamp(1, g.output[0].max(1))
}

/// Weight [co, ci, kd, kh, kw] -> [kd * kh][co][kw * ci]: the A matrix of each (kz, ky) GEMM.
fn weight_taps<T: Elem>(w: &[T], g: &ConvGeom) -> Vec<T> {
    let [kd, kh, kw] = g.kernel;
    let (ci, co) = (g.ci, g.co);
    let mut out = vec![T::zero(); w.len()];
    for o in 0..co {
        for i in 0..ci {
            for kz in 0..kd {
                for ky in 0..kh {
                    for kx in 0..kw {
                        out[((kz * kh + ky) * co + o) * kw * ci + kx * ci + i] =
                            w[(((o * ci + i) * kd + kz) * kh + ky) * kw + kx];
                    }
                }
            }
        }
    }
    out
}

/// The inverse of [`weight_taps`].
fn taps_to_weight<T: Elem>(t: &[T], g: &ConvGeom) -> Vec<T> {
    let [kd, kh, kw] = g.kernel;
    let (ci, co) = (g.ci, g.co);
    let mut out = vec![T::zero(); t.len()];
    for o in 0..co {
        for i in 0..ci {
            for kz in 0..kd {
                for ky in 0..kh {
                    for kx in 0..kw {
                        out[(((o * ci + i) * kd + kz) * kh + ky) * kw + kx] =
                            t[((kz * kh + ky) * co + o) * kw * ci + kx * ci + i];
                    }
                }
            }
        }
    }
    out
}

/// Tiles as (sample, first virtual column, columns).
fn tiles(g: &ConvGeom, p: &Plan) -> Vec<(usize, usize, usize)> {
    let mut t = Vec::new();
    for n in 0..g.n {
        let mut q0 = 0;
        while q0 < p.q {
            t.push((n, q0, p.cols.min(p.q - q0)));
            q0 += p.cols;
        }
    }
    t
}

/// Calls `f(row_in_tile, oz, oy)` for every valid output row inside the tile's columns.
fn valid_rows(
    g: &ConvGeom,
    p: &Plan,
    q0: usize,
    cols: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    for j in 0..cols / p.wp {
        let r = q0 / p.wp + j;
        let (oz, oy) = (r / p.hp, r % p.hp);
        if oy < g.output[1] && oz < g.output[0] {
            f(j, oz, oy);
        }
    }
}

/// Whether this path applies: stride 1 (any kernel and padding).
pub fn applies(g: &ConvGeom) -> bool {
    g.stride == [1; 3]
}

pub fn fwd<T: Elem>(x: &[T], w: &[T], g: &ConvGeom) -> Vec<T> {
    fwd_slabs(x, w, g, slab_planes::<T>(g, &plan(g)))
}

/// How a forward computes its tiles.
enum Kernel<T> {
    /// f32, AVX-512, many output channels: `direct_avx512` (channels in lanes) on the channels-last copy.
    Channels {
        packed: Vec<f32>,
        co_pad: usize,
        pb: usize,
    },
    /// f32, AVX-512, few output channels: `spatial_avx512` (positions in lanes) on the channels-first copy.
    Spatial { packed: Vec<f32> },
    /// f32, AVX-512, 3x3x3 padding 1, even sizes, <= 64 output channels: Winograd F(2, 3) on the
    /// channels-first copy.
    Winograd { u: Vec<f32> },
    /// Anything else: GEMMs over views of the channels-last copy.
    Gemm { taps: Vec<T> },
}

fn fwd_slabs<T: Elem>(x: &[T], w: &[T], g: &ConvGeom, per_slab: usize) -> Vec<T> {
    let p = plan(g);
    let [kd, kh, kw] = g.kernel;
    let (iv, ov, kk) = (g.in_vol(), g.out_vol(), kw * g.ci);
    let kernel = match as_f32(w).filter(|_| direct_avx512::available()) {
        Some(w32) if winograd::applies(g) => Kernel::Winograd {
            u: winograd::pack(w32, g.co, g.ci),
        },
        Some(w32) if spatial_avx512::preferred(g.co) => Kernel::Spatial {
            packed: spatial_avx512::pack_weights(w32, g.co, g.ci, kd * kh * kw),
        },
        Some(w32) => {
            let co_pad = g.co.next_multiple_of(16);
            let (pb, nb) = direct_avx512::blocking(co_pad);
            Kernel::Channels {
                packed: direct_avx512::pack_weights(w32, g.co, g.ci, g.kernel, co_pad, nb),
                co_pad,
                pb,
            }
        }
        None => Kernel::Gemm {
            taps: weight_taps(w, g),
        },
    };
    // Written in full by the tiles' valid rows; no zeroing first.
    let mut y: Vec<T> = Vec::with_capacity(g.n * g.co * ov);
    let yp = SyncPtr(y.as_mut_ptr());
    let [_, ho, wo] = g.output;
    // Offsets of the (kz, ky) taps on the channels-last copy, in floats.
    let offs: Vec<usize> = (0..kd * kh)
        .map(|t| ((t / kh) * p.hp * p.wp + (t % kh) * p.wp) * g.ci)
        .collect();
    // Offsets of every (kz, ky, kx) tap on one channel of the channels-first copy.
    let offs_cf: Vec<usize> = (0..kd * kh * kw)
        .map(|t| (t / (kh * kw)) * p.hp * p.wp + (t / kw % kh) * p.wp + t % kw)
        .collect();
    // Winograd tiles are two planes deep: slabs of an even number of planes.
    let per_slab = if matches!(kernel, Kernel::Winograd { .. }) { per_slab + per_slab % 2 } else { per_slab };
    // Sample by sample, slab by slab (see `slab_planes`); the tiles of a slab run in parallel.
    let plane_q = p.hp * p.wp;
    let mut slabs = Vec::new();
    for n in 0..g.n {
        for oz0 in (0..g.output[0]).step_by(per_slab) {
            slabs.push((n, oz0, (oz0 + per_slab).min(g.output[0])));
        }
    }
    for (n, oz0, oz1) in slabs {
        let xn = &x[n * g.ci * iv..(n + 1) * g.ci * iv];
        let planes = oz1 - oz0 + kd - 1;
        let (xp, cs) = match kernel {
            Kernel::Spatial { .. } | Kernel::Winograd { .. } => pad_slab_cf(xn, g, &p, oz0, planes),
            _ => (pad_slab(xn, g, &p, oz0, planes), 0),
        };
        if let Kernel::Winograd { u } = &kernel {
            // SAFETY: T is f32 here (the weights were).
            let (xp32, yp32) = unsafe {
                (std::slice::from_raw_parts(xp.as_ptr() as *const f32, xp.len()), SyncPtr(yp.ptr() as *mut f32))
            };
            winograd::slab(xp32, cs, p.hp, p.wp, g, n, oz0, oz1, u, &yp32);
            continue;
        }
        let (q_lo, q_hi) = (oz0 * plane_q, oz1 * plane_q);
        // Whole padded rows per tile, enough tiles for every thread, at most the plan's width.
        let rows = (p.cols / p.wp)
            .min(((q_hi - q_lo) / p.wp).div_ceil(4 * threads()))
            .max(1);
        let step = rows * p.wp;
        let slab_tiles: Vec<(usize, usize)> = (q_lo..q_hi)
            .step_by(step)
            .map(|q0| (q0, step.min(q_hi - q0)))
            .collect();
        slab_tiles.into_par_iter().for_each(|(q0, cols)| {
            let (len, ld) = match &kernel {
                Kernel::Channels { co_pad, pb, .. } => (co_pad * cols.next_multiple_of(*pb), 0),
                Kernel::Spatial { .. } => {
                    let ld = cols.next_multiple_of(spatial_avx512::COLS);
                    (g.co * ld, ld)
                }
                Kernel::Gemm { .. } => (g.co * cols, cols),
                Kernel::Winograd { .. } => unreachable!("Winograd slabs are done above"),
            };
            with_scratch(len, |acc: &mut [T]| {
                match &kernel {
                    Kernel::Channels { packed, co_pad, pb } => {
                        let xs = &xp[(q0 - q_lo) * g.ci..];
                        // SAFETY: T is f32 here (as_f32 succeeded); bounds: see `plan`'s slack.
                        unsafe {
                            direct_avx512::tile(
                                xs.as_ptr() as *const f32,
                                g.ci,
                                &offs,
                                kk,
                                packed,
                                *co_pad,
                                cols.next_multiple_of(*pb),
                                acc.as_mut_ptr() as *mut f32,
                                *co_pad,
                            )
                        };
                        // acc is channels-last [col][co_pad]: transpose the valid rows into NCDHW.
                        valid_rows(g, &p, q0, cols, |j, oz, oy| {
                            let src = &acc[j * p.wp * co_pad..];
                            for c in 0..g.co {
                                let dst = unsafe {
                                    yp.slice(
                                        ((n * g.co + c) * g.output[0] + oz) * ho * wo + oy * wo,
                                        wo,
                                    )
                                };
                                for (x, d) in dst.iter_mut().enumerate() {
                                    *d = src[x * co_pad + c];
                                }
                            }
                        });
                        return;
                    }
                    Kernel::Spatial { packed } => {
                        // SAFETY: T is f32 here; bounds: see `pad_slab_cf`'s slack.
                        unsafe {
                            spatial_avx512::tile(
                                xp[q0 - q_lo..].as_ptr() as *const f32,
                                cs,
                                g.ci,
                                &offs_cf,
                                packed,
                                g.co,
                                ld,
                                acc.as_mut_ptr() as *mut f32,
                                ld,
                                false,
                            )
                        };
                    }
                    Kernel::Winograd { .. } => unreachable!("Winograd slabs are done above"),
                    Kernel::Gemm { taps } => {
                        let xs = &xp[(q0 - q_lo) * g.ci..];
                        for (t, &off) in offs.iter().enumerate() {
                            let a = Mat::rows(taps[t * g.co * kk..].as_ptr(), kk);
                            let b = Mat {
                                ptr: xs[off..].as_ptr(),
                                rs: 1,
                                cs: g.ci as isize,
                            };
                            unsafe { matmul(g.co, cols, kk, acc.as_mut_ptr(), cols, a, b, t > 0) };
                        }
                    }
                }
                // acc is [co][ld]: copy the valid rows out.
                valid_rows(g, &p, q0, cols, |j, oz, oy| {
                    for c in 0..g.co {
                        // SAFETY: each valid output row belongs to exactly one tile.
                        let dst = unsafe {
                            yp.slice(((n * g.co + c) * g.output[0] + oz) * ho * wo + oy * wo, wo)
                        };
                        dst.copy_from_slice(&acc[c * ld + j * p.wp..][..wo]);
                    }
                });
            })
        });
    }
    // SAFETY: every output row (n, c, oz, oy) is a valid row of exactly one tile, which wrote all of it.
    unsafe { y.set_len(g.n * g.co * ov) };
    y
}

pub fn bwd_weight<T: Elem>(x: &[T], dy: &[T], g: &ConvGeom) -> Vec<T> {
    let p = plan(g);
    let [kd, kh, kw] = g.kernel;
    let (iv, kk) = (g.in_vol(), kw * g.ci);
    let [_, ho, wo] = g.output;
    let xps: Vec<Vec<T>> = (0..g.n)
        .map(|n| {
            pad_slab(
                &x[n * g.ci * iv..(n + 1) * g.ci * iv],
                g,
                &p,
                0,
                g.input[0] + 2 * g.padding[0],
            )
        })
        .collect();
    let tiles = tiles(g, &p);
    let nt = threads().min(tiles.len()).max(1);
    let wlen = kd * kh * g.co * kk;
    // Static partition and in-order reduction: bit-identical results run to run.
    let partials: Vec<Vec<T>> = (0..nt)
        .into_par_iter()
        .map(|t| {
            let mut dw = vec![T::zero(); wlen];
            let mut dyt: Vec<T> = Vec::new();
            for &(n, q0, cols) in tiles.iter().skip(t).step_by(nt) {
                // dy on the tile's virtual columns, zero where the column is not a real output.
                dyt.clear();
                dyt.resize(g.co * cols, T::zero());
                valid_rows(g, &p, q0, cols, |j, oz, oy| {
                    for c in 0..g.co {
                        let src =
                            &dy[((n * g.co + c) * g.output[0] + oz) * ho * wo + oy * wo..][..wo];
                        dyt[c * cols + j * p.wp..][..wo].copy_from_slice(src);
                    }
                });
                for kz in 0..kd {
                    for ky in 0..kh {
                        let off = (q0 + kz * p.hp * p.wp + ky * p.wp) * g.ci;
                        let bt = Mat {
                            ptr: xps[n][off..].as_ptr(),
                            rs: g.ci as isize,
                            cs: 1,
                        };
                        let dst = dw[(kz * kh + ky) * g.co * kk..].as_mut_ptr();
                        unsafe {
                            matmul(
                                g.co,
                                kk,
                                cols,
                                dst,
                                kk,
                                Mat::rows(dyt.as_ptr(), cols),
                                bt,
                                true,
                            )
                        };
                    }
                }
            }
            dw
        })
        .collect();
    let mut it = partials.into_iter();
    let mut acc = it.next().unwrap_or_else(|| vec![T::zero(); wlen]);
    for p in it {
        acc.iter_mut().zip(p).for_each(|(a, b)| *a = *a + b);
    }
    taps_to_weight(&acc, g)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any slab height gives the output of one slab (halo planes, padding planes, slab ends).
    #[test]
    fn slabs_do_not_change_the_result() {
        for (ci, co, pad, input) in [
            (3usize, 5usize, 1usize, [7usize, 5, 6]),
            (16, 16, 1, [6, 4, 5]),
            (2, 17, 0, [5, 6, 4]),
        ] {
            let output = ConvGeom::out_size(input, [3; 3], [1; 3], [pad; 3]).unwrap();
            let g = ConvGeom {
                n: 2,
                ci,
                co,
                input,
                kernel: [3; 3],
                stride: [1; 3],
                padding: [pad; 3],
                output,
            };
            let x: Vec<f32> = (0..2 * ci * input.iter().product::<usize>())
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..co * ci * 27)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 97.0)
                .collect();
            let whole = fwd_slabs(&x, &w, &g, g.output[0]);
            for per in 1..g.output[0] {
                // (the GEMM path may sum in another order for another tile width: rounding only)
                let err = fwd_slabs(&x, &w, &g, per)
                    .iter()
                    .zip(&whole)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    err < 1e-5,
                    "ci {ci} co {co} pad {pad}: {per} planes per slab, max error {err}"
                );
            }
        }
    }
}
