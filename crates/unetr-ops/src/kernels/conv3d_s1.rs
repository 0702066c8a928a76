//! Stride-1 3D convolution as an implicit GEMM over a channels-last, zero-padded copy of the input.
//!
//! With the input stored as Xp[position, channel] on the padded grid, the im2col rows of the taps
//! (kz, ky, 0..kw) for one output column q are the kw * ci consecutive values starting at
//! Xp[q + kz*Hp*Wp + ky*Wp, 0]: a plain strided view. So a conv is kd * kh GEMMs with K = kw * ci over
//! such views, and nothing like im2col is ever built (gemm packs its panels straight from Xp).
//! Outputs are computed on "virtual" columns q = (oz * Hp + oy) * Wp + ox of the padded grid; the few
//! columns with oy >= Ho or ox >= Wo are computed and dropped. Extra memory: one padded depth slab of the
//! input plus one small tile per thread.
//!
//! The forward picks one of four kernels over these views (`Kernel`): in f32 on AVX-512, Winograd
//! F(4, 3) or F(2, 3) (`winograd`, 3x3x3 padding 1, 16+ input and <= 64 output channels), else positions in lanes
//! (`spatial_avx512`, <= 16 output channels, channels-first copy), else channels in lanes
//! (`direct_avx512`); otherwise (f64, no AVX-512) the GEMMs. The input is padded one depth slab at a time
//! into one buffer, which carries the halo planes to the next slab; so a "same" convolution can write its
//! output over its input (`fwd_into`, the in-place inference ops), optionally with a 1x1x1 side conv of the
//! same input computed on the same slabs.

use super::conv3d::ConvGeom;
use super::{
    as_f32, direct_avx512, matmul, spatial_avx512, threads, winograd, with_scratch, Elem, Mat,
    SyncPtr,
};
use rayon::prelude::*;

/// Columns per tile: the [co x cols] accumulator stays in L2 across the kd * kh GEMMs.
const TILE_COLS: usize = 4096;

struct Plan {
    hp: usize,
    wp: usize,
    /// Tile width in columns (whole padded rows).
    cols: usize,
}

fn plan(g: &ConvGeom) -> Plan {
    let [_, h, w] = g.input;
    let [_, ph, pw] = g.padding;
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let q = g.output[0] * hp * wp;
    let rows_per_tile = (TILE_COLS / wp).max(1);
    // Enough tiles for every thread, but no tile narrower than one padded row.
    let want = (4 * threads()).div_ceil(g.n.max(1));
    let rows = rows_per_tile.min((q / wp).div_ceil(want)).max(1);
    Plan { hp, wp, cols: rows * wp }
}

/// One channel block of a forward's input, NCDHW and contiguous; a forward reads the concatenation of its
/// blocks along channels (a plain input is one block). A raw pointer, because a forward in place
/// ([`fwd_into`]) overwrites the blocks it reads.
#[derive(Clone, Copy)]
pub struct Part<T> {
    pub ptr: *const T,
    pub channels: usize,
}
unsafe impl<T> Send for Part<T> {}
unsafe impl<T> Sync for Part<T> {}

/// Channel `c` of sample `n` of the concatenated parts, `iv` values.
///
/// # Safety
/// The parts hold `n + 1` samples of `iv`-value channels, and nothing writes that channel meanwhile.
unsafe fn channel<T>(parts: &[Part<T>], iv: usize, n: usize, mut c: usize) -> &[T] {
    for p in parts {
        if c < p.channels {
            return std::slice::from_raw_parts(p.ptr.add((n * p.channels + c) * iv), iv);
        }
        c -= p.channels;
    }
    unreachable!("channel beyond the parts")
}

/// Fills padded planes `j0..planes` (from padded plane `zp0`) of sample `n` into a channels-last, zero-padded
/// slab: xp[(((zp - zp0) * hp) + y) * wp + x][c]. Planes below `j0` were carried over from the previous slab.
#[allow(clippy::too_many_arguments)]
fn pad_slab<T: Elem>(
    parts: &[Part<T>],
    n: usize,
    g: &ConvGeom,
    p: &Plan,
    zp0: usize,
    j0: usize,
    planes: usize,
    xp: &mut [T],
) {
    let [d, h, w] = g.input;
    let [pd, ph, pw] = g.padding;
    let ci = g.ci;
    let plane = p.hp * p.wp * ci;
    fill_planes(
        &mut xp[j0 * plane..planes * plane],
        plane,
        |j, dst: *mut T| {
            let zp = zp0 + j0 + j;
            if zp < pd || zp >= pd + d {
                return false; // a padding plane: zeros
            }
            let z = zp - pd;
            // SAFETY: dst holds one plane; every element is written exactly once below; the caller keeps the
            // source planes unchanged while this runs.
            unsafe {
                std::ptr::write_bytes(dst, 0, ph * p.wp * ci);
                for y in 0..h {
                    let row = dst.add((y + ph) * p.wp * ci);
                    std::ptr::write_bytes(row, 0, pw * ci);
                    for c in 0..ci {
                        let src = &channel(parts, d * h * w, n, c)[(z * h + y) * w..][..w];
                        for (xi, &v) in src.iter().enumerate() {
                            row.add((pw + xi) * ci + c).write(v);
                        }
                    }
                    std::ptr::write_bytes(row.add((pw + w) * ci), 0, (p.wp - pw - w) * ci);
                }
                std::ptr::write_bytes(
                    dst.add((h + ph) * p.wp * ci),
                    0,
                    (p.hp - ph - h) * p.wp * ci,
                );
            }
            true
        },
    )
}

/// Fills `buf`'s planes of `plane` elements by `fill(j, ptr)` (which writes all of plane j and returns true,
/// or returns false for an all-zero plane), in parallel.
fn fill_planes<T: Elem>(buf: &mut [T], plane: usize, fill: impl Fn(usize, *mut T) -> bool + Sync) {
    let base = SyncPtr(buf.as_mut_ptr());
    (0..buf.len() / plane).into_par_iter().for_each(|j| {
        // SAFETY: plane j is [j * plane, (j + 1) * plane) of buf, written by this task only.
        let dst = unsafe { base.ptr().add(j * plane) };
        if !fill(j, dst) {
            unsafe { std::ptr::write_bytes(dst, 0, plane) };
        }
    });
}

/// Fills padded planes `j0..planes` (from padded plane `zp0`) of sample `n` into a channels-first,
/// zero-padded slab: xp[c * cs + ((zp - zp0) * hp + y) * wp + x]. Planes below `j0` were carried over.
#[allow(clippy::too_many_arguments)]
fn pad_slab_cf<T: Elem>(
    parts: &[Part<T>],
    n: usize,
    g: &ConvGeom,
    p: &Plan,
    zp0: usize,
    j0: usize,
    planes: usize,
    cs: usize,
    xp: &mut [T],
) {
    let [d, h, w] = g.input;
    let [pd, ph, pw] = g.padding;
    let plane = p.hp * p.wp;
    let fresh = planes - j0;
    if fresh == 0 {
        return;
    }
    let base = SyncPtr(xp.as_mut_ptr());
    (0..g.ci * fresh).into_par_iter().for_each(|i| {
        let (c, j) = (i / fresh, j0 + i % fresh);
        // SAFETY: plane j of channel c lies inside xp (cs >= planes * plane) and is written by this task only.
        let dst = unsafe { base.ptr().add(c * cs + j * plane) };
        let zp = zp0 + j;
        if zp < pd || zp >= pd + d {
            unsafe { std::ptr::write_bytes(dst, 0, plane) }; // a padding plane
            return;
        }
        let z = zp - pd;
        // SAFETY: every element of the plane is written once below; the caller keeps the source planes
        // unchanged while this runs.
        unsafe {
            let src = channel(parts, d * h * w, n, c);
            std::ptr::write_bytes(dst, 0, ph * p.wp + pw);
            for y in 0..h {
                let row = dst.add((y + ph) * p.wp + pw);
                std::ptr::copy_nonoverlapping(src[(z * h + y) * w..][..w].as_ptr(), row, w);
                // the right padding of this row and the left padding of the next
                let gap = if y + 1 < h { p.wp - w } else { p.wp - pw - w };
                std::ptr::write_bytes(row.add(w), 0, gap);
            }
            std::ptr::write_bytes(dst.add((h + ph) * p.wp), 0, (p.hp - ph - h) * p.wp);
        }
    });
}

/// How a padded slab is stored: channels-first with channel stride `cs` ([`pad_slab_cf`]), or channels-last
/// ([`pad_slab`]).
#[derive(Clone, Copy)]
enum SlabLayout {
    ChannelsFirst { cs: usize },
    ChannelsLast,
}

/// Fills `xp` with the padded planes of output slab `oz0..oz1` of sample `n`: the last kd - 1 planes of the
/// previous slab (`prev_planes` planes; 0 before the first) are this slab's first and are moved, the others
/// padded from the input. Returns this slab's number of planes (the next call's `prev_planes`).
#[allow(clippy::too_many_arguments)]
fn next_slab<T: Elem>(
    parts: &[Part<T>],
    n: usize,
    g: &ConvGeom,
    p: &Plan,
    (oz0, oz1): (usize, usize),
    prev_planes: usize,
    layout: SlabLayout,
    xp: &mut [T],
) -> usize {
    let plane_q = p.hp * p.wp;
    let halo = g.kernel[0] - 1;
    let planes = oz1 - oz0 + halo;
    let carried = if prev_planes > 0 { halo } else { 0 };
    match layout {
        SlabLayout::ChannelsFirst { cs } => {
            if carried > 0 {
                for c in 0..g.ci {
                    let from = c * cs + (prev_planes - carried) * plane_q;
                    xp.copy_within(from..from + carried * plane_q, c * cs);
                }
            }
            pad_slab_cf(parts, n, g, p, oz0, carried, planes, cs, xp);
        }
        SlabLayout::ChannelsLast => {
            let from = (prev_planes - carried) * plane_q * g.ci;
            xp.copy_within(from..from + carried * plane_q * g.ci, 0);
            pad_slab(parts, n, g, p, oz0, carried, planes, xp);
        }
    }
    planes
}

/// Output planes per slab of the forward and the weight gradient: the padded copy holds one slab plus the kernel's halo (about
/// 8 MB), not the whole sample (120 MB for UNETR's 32-channel 96^3 convs), which bounds the forward's extra
/// memory. The halo planes are carried from slab to slab, not copied again.
fn slab_planes<T: Elem>(g: &ConvGeom, p: &Plan) -> usize {
    let plane_bytes = p.hp * p.wp * g.ci * std::mem::size_of::<T>();
    ((8usize << 20) / plane_bytes.max(1))
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
    fwd_slabs(x, w, g, default_slab::<T>(g))
}

/// Output planes per slab for `g` (see `slab_planes`).
pub fn default_slab<T: Elem>(g: &ConvGeom) -> usize {
    slab_planes::<T>(g, &plan(g))
}

fn fwd_slabs<T: Elem>(x: &[T], w: &[T], g: &ConvGeom, per_slab: usize) -> Vec<T> {
    assert_eq!(x.len(), g.n * g.ci * g.in_vol());
    // Written in full by the tiles' valid rows; no zeroing first.
    let mut y: Vec<T> = Vec::with_capacity(g.n * g.co * g.out_vol());
    // SAFETY: x holds the input, y room for the output; they do not overlap.
    unsafe {
        fwd_into(
            &[Part {
                ptr: x.as_ptr(),
                channels: g.ci,
            }],
            w,
            g,
            None,
            SyncPtr(y.as_mut_ptr()),
            per_slab,
        );
        y.set_len(g.n * g.co * g.out_vol());
    }
    y
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
    /// f32, AVX-512, 3x3x3 padding 1, whole tiles, <= 64 output channels: Winograd on the
    /// channels-first copy.
    Winograd { u: Vec<f32>, tile: winograd::Tile },
    /// Anything else: GEMMs over views of the channels-last copy.
    Gemm { taps: Vec<T> },
}

/// A second convolution of the same input computed by [`fwd_into`] on the same padded slabs: 1x1x1, no
/// padding, weight [co][ci], output NCDHW at `y` (the input's spatial size).
pub struct Side<'a, T> {
    pub w: &'a [T],
    pub co: usize,
    pub y: SyncPtr<T>,
}

/// Whether a forward of `g` may write its output over its input ([`fwd_into`]): a "same" convolution
/// (odd kernel, padding (k - 1) / 2, stride 1), so that output plane z depends on input planes up to z + p
/// only, and every plane is read into the padded slab before its slab's outputs are written.
pub fn in_place_ok(g: &ConvGeom) -> bool {
    applies(g) && (0..3).all(|i| g.kernel[i] == 2 * g.padding[i] + 1) && g.output == g.input
}

/// The forward of `g` over the channel concatenation of `parts`, written to `y` (NCDHW), plus the optional
/// `side` 1x1x1 convolution of the same input.
///
/// The outputs may overwrite the input (`y` or `side.y` pointing into the parts) when [`in_place_ok`]: the
/// input is read slab by slab into a padded copy, which carries the halo planes to the next slab, and a
/// slab's outputs are written after its planes were read, and only over planes no later slab reads from
/// the input. UNETR's decoder uses this to run a residual block's convolutions without new activations.
///
/// # Safety
/// `parts` hold `g.n` samples of their channels (summing to `g.ci`); `y` has room for `g.n * g.co * out_vol`
/// values and `side.y` for `g.n * side.co * in_vol`; outputs overlap the input only as said above, and
/// never each other.
pub unsafe fn fwd_into<T: Elem>(
    parts: &[Part<T>],
    w: &[T],
    g: &ConvGeom,
    side: Option<Side<T>>,
    yp: SyncPtr<T>,
    per_slab: usize,
) {
    let p = plan(g);
    let [kd, kh, kw] = g.kernel;
    let kk = kw * g.ci;
    debug_assert_eq!(parts.iter().map(|p| p.channels).sum::<usize>(), g.ci);
    let simd = as_f32(w).filter(|_| direct_avx512::available());
    let kernel = match (simd, winograd::Tile::choose(g)) {
        (Some(w32), Some(tile)) => Kernel::Winograd { u: winograd::pack(w32, g.co, g.ci, tile), tile },
        (Some(w32), None) if spatial_avx512::preferred(g.co) => Kernel::Spatial {
            packed: spatial_avx512::pack_weights(w32, g.co, g.ci, kd * kh * kw),
        },
        (Some(w32), None) => {
            let co_pad = g.co.next_multiple_of(16);
            let (pb, nb) = direct_avx512::blocking(co_pad);
            Kernel::Channels {
                packed: direct_avx512::pack_weights(w32, g.co, g.ci, g.kernel, co_pad, nb),
                co_pad,
                pb,
            }
        }
        (None, _) => Kernel::Gemm {
            taps: weight_taps(w, g),
        },
    };
    let cf = matches!(kernel, Kernel::Spatial { .. } | Kernel::Winograd { .. });
    // The side conv's weights for the positions-in-lanes kernel (it reads the channels-first copy).
    let side_packed = match (&side, simd) {
        (Some(sd), Some(_)) if cf => {
            as_f32(sd.w).map(|w| spatial_avx512::pack_weights(w, sd.co, g.ci, 1))
        }
        _ => None,
    };
    debug_assert!(!cf || side.is_none() || side_packed.is_some());
    let [_, ho, wo] = g.output;
    // Offsets of the (kz, ky) taps on the channels-last copy, in floats.
    let offs: Vec<usize> = (0..kd * kh)
        .map(|t| ((t / kh) * p.hp * p.wp + (t % kh) * p.wp) * g.ci)
        .collect();
    // Offsets of every (kz, ky, kx) tap on one channel of the channels-first copy.
    let offs_cf: Vec<usize> = (0..kd * kh * kw)
        .map(|t| (t / (kh * kw)) * p.hp * p.wp + (t / kw % kh) * p.wp + t % kw)
        .collect();
    // Winograd tiles are two or four planes deep: slabs of whole tiles.
    let per_slab = match &kernel {
        Kernel::Winograd { tile, .. } => per_slab.next_multiple_of(tile.edge()),
        _ => per_slab,
    };
    let plane_q = p.hp * p.wp;
    // One padded slab buffer for the whole forward, zeroed once: it has room for the largest slab plus
    // the kernels' over-reads (the tail of a tile rounded up to a block, the taps), which only feed
    // dropped columns. Channels-first: channel stride cs; channels-last: planes of plane_q * ci.
    let max_planes = per_slab.min(g.output[0]) + kd - 1;
    let cs = max_planes * plane_q;
    let len = if cf {
        g.ci * cs + spatial_avx512::COLS + kh * p.wp + kw + 16
    } else {
        max_planes * plane_q * g.ci + ((kh - 1) * p.wp + kw + p.cols + 16) * g.ci
    };
    let mut xp = vec![T::zero(); len];
    // The input position of output (oz, oy, ox) for the side conv, relative to a slab's first padded plane.
    let [pd, ph, pw] = g.padding;
    let center = pd * plane_q + ph * p.wp + pw;
    // Sample by sample, slab by slab (see `slab_planes`); the tiles of a slab run in parallel.
    for n in 0..g.n {
        let mut prev_planes = 0;
        let layout = if cf { SlabLayout::ChannelsFirst { cs } } else { SlabLayout::ChannelsLast };
        for oz0 in (0..g.output[0]).step_by(per_slab) {
            let oz1 = (oz0 + per_slab).min(g.output[0]);
            prev_planes = next_slab(parts, n, g, &p, (oz0, oz1), prev_planes, layout, &mut xp);
            let xp = &xp[..];
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
            // Copies the valid rows of a tile's accumulator acc[c][ld] (column j * wp + x = row j) to an output.
            let copy_out =
                |acc: &[T], ld: usize, co: usize, y: &SyncPtr<T>, q0: usize, cols: usize| {
                    valid_rows(g, &p, q0, cols, |j, oz, oy| {
                        for c in 0..co {
                            // SAFETY: each valid output row belongs to exactly one tile.
                            let dst = unsafe {
                                y.slice(((n * co + c) * g.output[0] + oz) * ho * wo + oy * wo, wo)
                            };
                            dst.copy_from_slice(&acc[c * ld + j * p.wp..][..wo]);
                        }
                    });
                };
            if let Kernel::Winograd { u, tile } = &kernel {
                // SAFETY: T is f32 here (the weights were).
                let (xp32, yp32) = (
                    std::slice::from_raw_parts(xp.as_ptr() as *const f32, xp.len()),
                    SyncPtr(yp.ptr() as *mut f32),
                );
                winograd::slab(*tile, xp32, cs, p.hp, p.wp, g, n, oz0, oz1, u, &yp32);
            } else {
                slab_tiles.par_iter().for_each(|&(q0, cols)| {
                    let (len, ld) = match &kernel {
                        Kernel::Channels { co_pad, pb, .. } => {
                            (co_pad * cols.next_multiple_of(*pb), 0)
                        }
                        Kernel::Spatial { .. } => {
                            let ld = cols.next_multiple_of(spatial_avx512::COLS);
                            (g.co * ld, ld)
                        }
                        Kernel::Gemm { .. } => (g.co * cols, cols),
                        Kernel::Winograd { .. } => unreachable!("Winograd slabs are done above"),
                    };
                    with_scratch(len, |acc: &mut [T]| match &kernel {
                        Kernel::Channels { packed, co_pad, pb } => {
                            let xs = &xp[(q0 - q_lo) * g.ci..];
                            // SAFETY: T is f32 here (as_f32 succeeded); bounds: see the buffer's slack.
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
                            );
                            // acc is channels-last [col][co_pad]: transpose the valid rows into NCDHW.
                            valid_rows(g, &p, q0, cols, |j, oz, oy| {
                                let src = &acc[j * p.wp * co_pad..];
                                for c in 0..g.co {
                                    let dst = yp.slice(
                                        ((n * g.co + c) * g.output[0] + oz) * ho * wo + oy * wo,
                                        wo,
                                    );
                                    for (x, d) in dst.iter_mut().enumerate() {
                                        *d = src[x * co_pad + c];
                                    }
                                }
                            });
                        }
                        Kernel::Spatial { packed } => {
                            // SAFETY: T is f32 here; bounds: see the buffer's slack.
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
                            );
                            copy_out(acc, ld, g.co, &yp, q0, cols);
                        }
                        Kernel::Gemm { taps } => {
                            let xs = &xp[(q0 - q_lo) * g.ci..];
                            for (t, &off) in offs.iter().enumerate() {
                                let a = Mat::rows(taps[t * g.co * kk..].as_ptr(), kk);
                                let b = Mat {
                                    ptr: xs[off..].as_ptr(),
                                    rs: 1,
                                    cs: g.ci as isize,
                                };
                                matmul(g.co, cols, kk, acc.as_mut_ptr(), cols, a, b, t > 0);
                            }
                            copy_out(acc, ld, g.co, &yp, q0, cols);
                        }
                        Kernel::Winograd { .. } => unreachable!("Winograd slabs are done above"),
                    })
                });
            }
            if let Some(sd) = &side {
                // The 1x1x1 conv reads each output position's own input value: the centre tap.
                slab_tiles
                    .par_iter()
                    .for_each(|&(q0, cols)| match &side_packed {
                        Some(packed) => {
                            let ld = cols.next_multiple_of(spatial_avx512::COLS);
                            with_scratch(sd.co * ld, |acc: &mut [T]| {
                                // SAFETY: T is f32 (the packed weights exist); bounds: see the buffer's slack.
                                spatial_avx512::tile(
                                    xp[q0 - q_lo + center..].as_ptr() as *const f32,
                                    cs,
                                    g.ci,
                                    &[0],
                                    packed,
                                    sd.co,
                                    ld,
                                    acc.as_mut_ptr() as *mut f32,
                                    ld,
                                    false,
                                );
                                copy_out(acc, ld, sd.co, &sd.y, q0, cols);
                            })
                        }
                        // The channels-last copy (the channels-first one always has packed weights): a GEMM.
                        None => with_scratch(sd.co * cols, |acc: &mut [T]| {
                            let b = Mat {
                                ptr: xp[(q0 - q_lo + center) * g.ci..].as_ptr(),
                                rs: 1,
                                cs: g.ci as isize,
                            };
                            matmul(
                                sd.co,
                                cols,
                                g.ci,
                                acc.as_mut_ptr(),
                                cols,
                                Mat::rows(sd.w.as_ptr(), g.ci),
                                b,
                                false,
                            );
                            copy_out(acc, cols, sd.co, &sd.y, q0, cols);
                        }),
                    });
            }
        }
    }
}

/// The weight gradient over the channels-last padded copy, one depth slab at a time (as the forward, see
/// `slab_planes`): its extra memory is one slab, not a padded copy of the whole input. Each thread sums
/// the tiles it takes (tile i of a slab goes to thread i mod threads) into its own partial, and the
/// partials are added in thread order: bit-identical results run to run.
pub fn bwd_weight<T: Elem>(x: &[T], dy: &[T], g: &ConvGeom) -> Vec<T> {
    bwd_weight_slabs(x, dy, g, default_slab::<T>(g))
}

fn bwd_weight_slabs<T: Elem>(x: &[T], dy: &[T], g: &ConvGeom, per_slab: usize) -> Vec<T> {
    let p = plan(g);
    let [kd, kh, kw] = g.kernel;
    let kk = kw * g.ci;
    let [_, ho, wo] = g.output;
    let plane_q = p.hp * p.wp;
    let max_planes = per_slab.min(g.output[0]) + kd - 1;
    // Room for the largest slab plus the tiles' over-reads (they only meet zeros of dy).
    let mut xp = vec![T::zero(); max_planes * plane_q * g.ci + ((kh - 1) * p.wp + kw + p.cols + 16) * g.ci];
    let part = [Part { ptr: x.as_ptr(), channels: g.ci }];
    let nt = threads().max(1);
    let wlen = kd * kh * g.co * kk;
    let mut partials: Vec<Vec<T>> = (0..nt).map(|_| vec![T::zero(); wlen]).collect();
    for n in 0..g.n {
        let mut prev_planes = 0;
        for oz0 in (0..g.output[0]).step_by(per_slab) {
            let oz1 = (oz0 + per_slab).min(g.output[0]);
            prev_planes = next_slab(&part, n, g, &p, (oz0, oz1), prev_planes, SlabLayout::ChannelsLast, &mut xp);
            let xp = &xp[..];
            let q_lo = oz0 * plane_q;
            let slab_tiles: Vec<(usize, usize)> = (q_lo..oz1 * plane_q)
                .step_by(p.cols)
                .map(|q0| (q0, p.cols.min(oz1 * plane_q - q0)))
                .collect();
            partials.par_iter_mut().enumerate().for_each(|(t, dw)| {
                let mut dyt: Vec<T> = Vec::new();
                for &(q0, cols) in slab_tiles.iter().skip(t).step_by(nt) {
                    // dy on the tile's virtual columns, zero where the column is not a real output.
                    dyt.clear();
                    dyt.resize(g.co * cols, T::zero());
                    valid_rows(g, &p, q0, cols, |j, oz, oy| {
                        for c in 0..g.co {
                            let src = &dy[((n * g.co + c) * g.output[0] + oz) * ho * wo + oy * wo..][..wo];
                            dyt[c * cols + j * p.wp..][..wo].copy_from_slice(src);
                        }
                    });
                    for kz in 0..kd {
                        for ky in 0..kh {
                            let off = (q0 - q_lo + kz * plane_q + ky * p.wp) * g.ci;
                            let bt = Mat { ptr: xp[off..].as_ptr(), rs: g.ci as isize, cs: 1 };
                            let dst = dw[(kz * kh + ky) * g.co * kk..].as_mut_ptr();
                            unsafe { matmul(g.co, kk, cols, dst, kk, Mat::rows(dyt.as_ptr(), cols), bt, true) };
                        }
                    }
                }
            });
        }
    }
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

    /// dw[o, c, kz, ky, kx] = sum over n and output positions of dy * the input under that tap, in f64.
    fn weight_gradient_reference(x: &[f64], dy: &[f64], g: &ConvGeom) -> Vec<f64> {
        let (ci, co, k, pad, input, output) = (g.ci, g.co, g.kernel[0], g.padding[0], g.input, g.output);
        let mut want = vec![0f64; co * ci * k * k * k];
        for n in 0..g.n {
            for o in 0..co {
                for c in 0..ci {
                    for t in 0..k * k * k {
                        let (kz, ky, kx) = (t / (k * k), t / k % k, t % k);
                        let mut acc = 0.0;
                        for oz in 0..output[0] {
                            for oy in 0..output[1] {
                                for ox in 0..output[2] {
                                    let (z, y, xx) = (oz + kz, oy + ky, ox + kx);
                                    if z < pad || y < pad || xx < pad || z - pad >= input[0] || y - pad >= input[1] || xx - pad >= input[2] {
                                        continue;
                                    }
                                    let xi = (((n * ci + c) * input[0] + z - pad) * input[1] + y - pad) * input[2] + xx - pad;
                                    acc += dy[(((n * co + o) * output[0] + oz) * output[1] + oy) * output[2] + ox] * x[xi];
                                }
                            }
                        }
                        want[(o * ci + c) * k * k * k + t] += acc;
                    }
                }
            }
        }
        want
    }

    /// In f32 (UNETR's channel counts and odd ones), any slab height: the reference's values within f32
    /// rounding.
    #[test]
    fn weight_gradient_in_f32_matches_the_reference() {
        for (ci, co) in [(16usize, 16usize), (32, 7), (16, 13), (32, 1), (16, 2)] {
            let input = [5usize, 4, 6];
            let g = ConvGeom { n: 1, ci, co, input, kernel: [3; 3], stride: [1; 3], padding: [1; 3], output: input };
            let x: Vec<f64> = (0..ci * g.in_vol()).map(|i| ((i * 37 % 101) as f64 - 50.0) / 50.0).collect();
            let dy: Vec<f64> = (0..co * g.out_vol()).map(|i| ((i * 53 % 97) as f64 - 48.0) / 97.0).collect();
            let want = weight_gradient_reference(&x, &dy, &g);
            let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            for per in [1, 2, input[0]] {
                let got = bwd_weight_slabs(&f(&x), &f(&dy), &g, per);
                let err = got.iter().zip(&want).map(|(&a, b)| (a as f64 - b).abs()).fold(0f64, f64::max);
                assert!(err < 1e-4, "ci {ci} co {co}: {per} planes per slab, max error {err}");
            }
        }
    }

    /// The weight gradient by slabs equals the direct sum over positions, for any slab height (halo planes
    /// carried, padding planes, a short last slab).
    #[test]
    fn weight_gradient_by_slabs_matches_the_direct_sum() {
        for (ci, co, k, pad, input) in [(3usize, 5usize, 3usize, 1usize, [7usize, 5, 6]), (4, 2, 3, 0, [6, 4, 5]), (2, 3, 1, 0, [5, 3, 4])] {
            let output = ConvGeom::out_size(input, [k; 3], [1; 3], [pad; 3]).unwrap();
            let g = ConvGeom { n: 2, ci, co, input, kernel: [k; 3], stride: [1; 3], padding: [pad; 3], output };
            let (iv, ov) = (g.in_vol(), g.out_vol());
            let x: Vec<f64> = (0..2 * ci * iv).map(|i| ((i * 37 % 101) as f64 - 50.0) / 50.0).collect();
            let dy: Vec<f64> = (0..2 * co * ov).map(|i| ((i * 53 % 97) as f64 - 48.0) / 97.0).collect();
            let want = weight_gradient_reference(&x, &dy, &g);
            assert_eq!(bwd_weight(&x, &dy, &g), bwd_weight_slabs(&x, &dy, &g, default_slab::<f64>(&g)));
            for per in 1..=output[0] {
                let got = bwd_weight_slabs(&x, &dy, &g, per);
                let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
                assert!(err < 1e-12, "ci {ci} co {co} k {k} pad {pad}: {per} planes per slab, max error {err}");
            }
        }
    }

    /// Any slab height gives the output of one slab (halo planes, padding planes, slab ends).
    #[test]
    fn slabs_do_not_change_the_result() {
        for (ci, co, pad, input) in [
            (3usize, 5usize, 1usize, [7usize, 5, 6]),
            (16, 16, 1, [6, 4, 5]),
            (16, 16, 1, [12, 8, 4]),
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
            assert_eq!(whole, fwd(&x, &w, &g));
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

    /// In place, with a second input block and the side 1x1x1 conv, any slab height gives the results of
    /// the out-of-place forward: every kernel (Winograd, positions in lanes, channels in lanes, GEMM in f64).
    #[test]
    fn in_place_with_side_matches_out_of_place() {
        fn check<T: Elem>(ca: usize, cb: usize, input: [usize; 3], n: usize) {
            let ci = ca + cb;
            let g = ConvGeom {
                n,
                ci,
                co: ca,
                input,
                kernel: [3; 3],
                stride: [1; 3],
                padding: [1; 3],
                output: input,
            };
            let iv = g.in_vol();
            let val = |i: usize, m: usize| {
                super::super::of_f64::<T>(((i * m % 101) as f64 - 50.0) / 50.0)
            };
            let a0: Vec<T> = (0..n * ca * iv).map(|i| val(i, 37)).collect();
            let b0: Vec<T> = (0..n * cb * iv).map(|i| val(i, 41)).collect();
            let w: Vec<T> = (0..ca * ci * 27)
                .map(|i| val(i, 53) * super::super::of_f64(0.2))
                .collect();
            let ws: Vec<T> = (0..cb * ci).map(|i| val(i, 29)).collect();
            // the concatenation, sample by sample
            let mut x = Vec::new();
            for s in 0..n {
                x.extend_from_slice(&a0[s * ca * iv..(s + 1) * ca * iv]);
                x.extend_from_slice(&b0[s * cb * iv..(s + 1) * cb * iv]);
            }
            let want_a = fwd_slabs(&x, &w, &g, input[0]);
            let mut want_b = vec![T::zero(); n * cb * iv];
            for s in 0..n {
                for o in 0..cb {
                    for c in 0..ci {
                        for v in 0..iv {
                            want_b[(s * cb + o) * iv + v] = want_b[(s * cb + o) * iv + v]
                                + ws[o * ci + c] * x[(s * ci + c) * iv + v];
                        }
                    }
                }
            }
            for per in 1..=input[0] {
                let (mut a, mut b) = (a0.clone(), b0.clone());
                let parts = [
                    Part {
                        ptr: a.as_ptr(),
                        channels: ca,
                    },
                    Part {
                        ptr: b.as_ptr(),
                        channels: cb,
                    },
                ];
                let side = Side {
                    w: &ws,
                    co: cb,
                    y: SyncPtr(b.as_mut_ptr()),
                };
                unsafe { fwd_into(&parts, &w, &g, Some(side), SyncPtr(a.as_mut_ptr()), per) };
                let err = |u: &[T], v: &[T]| {
                    u.iter()
                        .zip(v)
                        .map(|(p, q)| super::super::f64_of((*p - *q).abs()))
                        .fold(0.0, f64::max)
                };
                let (ea, eb) = (err(&a, &want_a), err(&b, &want_b));
                assert!(
                    ea < 1e-4 && eb < 1e-4,
                    "ca {ca} cb {cb} {input:?} n {n}: {per} planes per slab, errors {ea} {eb}"
                );
            }
        }
        check::<f32>(16, 16, [6, 4, 6], 2); // Winograd F(2, 3) (f32 with AVX-512)
        check::<f32>(16, 16, [12, 4, 8], 2); // Winograd F(4, 3)
        check::<f32>(8, 8, [5, 3, 4], 1); // positions in lanes
        check::<f32>(24, 8, [5, 3, 5], 2); // channels in lanes
        check::<f64>(4, 3, [5, 4, 3], 2); // GEMMs
    }
}
