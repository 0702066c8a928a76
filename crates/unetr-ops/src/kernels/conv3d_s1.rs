//! Stride-1 3D convolution as an implicit GEMM over a channels-last, zero-padded copy of the input.
//!
//! With the input stored as Xp[position, channel] on the padded grid, the im2col rows of the taps
//! (kz, ky, 0..kw) for one output column q are the kw * ci consecutive values starting at
//! Xp[q + kz*Hp*Wp + ky*Wp, 0]: a plain strided view. So a conv is kd * kh GEMMs with K = kw * ci over
//! such views, and nothing like im2col is ever built (gemm packs its panels straight from Xp).
//! Outputs are computed on "virtual" columns q = (oz * Hp + oy) * Wp + ox of the padded grid; the few
//! columns with oy >= Ho or ox >= Wo are computed and dropped. Extra memory: the padded input plus one
//! small tile per thread.

use super::conv3d::ConvGeom;
use super::{direct_avx512, matmul, threads, with_scratch, Elem, Mat, SyncPtr};
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

/// Channels-last, zero-padded copy of one sample: xp[((z * hp) + y) * wp + x][c].
fn pad_channels_last<T: Elem>(x: &[T], g: &ConvGeom, p: &Plan) -> Vec<T> {
    let [d, h, w] = g.input;
    let [pd, ph, pw] = g.padding;
    let ci = g.ci;
    let mut xp = vec![T::zero(); p.xp_len];
    let plane = p.hp * p.wp * ci;
    // Padded planes z + pd are disjoint: fill them in parallel.
    xp[pd * plane..(pd + d) * plane]
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(z, dst)| {
            for y in 0..h {
                let row = &mut dst[((y + ph) * p.wp + pw) * ci..][..w * ci];
                for c in 0..ci {
                    let src = &x[((c * d + z) * h + y) * w..][..w];
                    for (xi, &v) in src.iter().enumerate() {
                        row[xi * ci + c] = v;
                    }
                }
            }
        });
    xp
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
    let p = plan(g);
    let [kd, kh, kw] = g.kernel;
    let (iv, ov, kk) = (g.in_vol(), g.out_vol(), kw * g.ci);
    let taps = if direct_avx512::available() && as_f32(w).is_some() {
        Vec::new()
    } else {
        weight_taps(w, g)
    };
    let xps: Vec<Vec<T>> = (0..g.n)
        .map(|n| pad_channels_last(&x[n * g.ci * iv..(n + 1) * g.ci * iv], g, &p))
        .collect();
    let mut y = vec![T::zero(); g.n * g.co * ov];
    let yp = SyncPtr(y.as_mut_ptr());
    let [_, ho, wo] = g.output;
    let offs: Vec<usize> = (0..kd * kh)
        .map(|t| ((t / kh) * p.hp * p.wp + (t % kh) * p.wp) * g.ci)
        .collect();
    // f32 on an AVX-512 CPU: the direct microkernel; otherwise GEMMs over the same views.
    let direct = as_f32(w).filter(|_| direct_avx512::available()).map(|w32| {
        let co_pad = g.co.next_multiple_of(16);
        let (pb, nb) = direct_avx512::blocking(co_pad);
        (
            direct_avx512::pack_weights(w32, g.co, g.ci, g.kernel, co_pad, nb),
            co_pad,
            pb,
        )
    });
    tiles(g, &p).into_par_iter().for_each(|(n, q0, cols)| {
        let xs = &xps[n][q0 * g.ci..];
        let len = match &direct {
            Some((_, co_pad, pb)) => co_pad * cols.next_multiple_of(*pb),
            None => g.co * cols,
        };
        with_scratch(len, |acc: &mut [T]| match &direct {
            Some((packed, co_pad, pb)) => {
                let cols_pad = cols.next_multiple_of(*pb);
                // SAFETY: T is f32 here (as_f32 succeeded); bounds: see `plan`'s slack.
                unsafe {
                    direct_avx512::tile(
                        xs.as_ptr() as *const f32,
                        g.ci,
                        &offs,
                        kk,
                        packed,
                        *co_pad,
                        cols_pad,
                        acc.as_mut_ptr() as *mut f32,
                        *co_pad,
                    )
                };
                // acc is channels-last [col][co_pad]: transpose the valid rows into NCDHW.
                valid_rows(g, &p, q0, cols, |j, oz, oy| {
                    let src = &acc[j * p.wp * co_pad..];
                    for c in 0..g.co {
                        let dst = unsafe {
                            yp.slice(((n * g.co + c) * g.output[0] + oz) * ho * wo + oy * wo, wo)
                        };
                        for (x, d) in dst.iter_mut().enumerate() {
                            *d = src[x * co_pad + c];
                        }
                    }
                });
            }
            None => {
                for (t, &off) in offs.iter().enumerate() {
                    let a = Mat::rows(taps[t * g.co * kk..].as_ptr(), kk);
                    let b = Mat {
                        ptr: xs[off..].as_ptr(),
                        rs: 1,
                        cs: g.ci as isize,
                    };
                    unsafe { matmul(g.co, cols, kk, acc.as_mut_ptr(), cols, a, b, t > 0) };
                }
                valid_rows(g, &p, q0, cols, |j, oz, oy| {
                    for c in 0..g.co {
                        // SAFETY: each valid output row belongs to exactly one tile.
                        let dst = unsafe {
                            yp.slice(((n * g.co + c) * g.output[0] + oz) * ho * wo + oy * wo, wo)
                        };
                        dst.copy_from_slice(&acc[c * cols + j * p.wp..][..wo]);
                    }
                });
            }
        })
    });
    y
}

/// The slice as f32 when T is f32.
fn as_f32<T: Elem>(s: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: same type, checked above.
        .then(|| unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) })
}

pub fn bwd_weight<T: Elem>(x: &[T], dy: &[T], g: &ConvGeom) -> Vec<T> {
    let p = plan(g);
    let [kd, kh, kw] = g.kernel;
    let (iv, kk) = (g.in_vol(), kw * g.ci);
    let [_, ho, wo] = g.output;
    let xps: Vec<Vec<T>> = (0..g.n)
        .map(|n| pad_channels_last(&x[n * g.ci * iv..(n + 1) * g.ci * iv], g, &p))
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
