//! Winograd F(2x2x2, 3x3x3) for UNETR's 3x3x3, stride-1, padding-1 convolutions (f32, AVX-512).
//!
//! Each 2x2x2 output tile is computed from its 4x4x4 input patch with 64 multiplies per (input, output)
//! channel pair instead of 8 * 27 = 216: the patch is transformed (V = B^T d, per axis), multiplied
//! element-wise with the transformed kernel (U = G g, per axis) and summed over input channels, which
//! for each of the 64 transform points is a small GEMM, and transformed back (Y = A^T M). The GEMMs run
//! on `spatial_avx512`'s microkernel with 48 tiles in vector lanes. F(2, 3)'s matrices hold only 0,
//! +-1 and +-1/2, so the rounding stays within a few ulp of the direct sum (tested against f64).
//!
//! Tiles come in blocks of up to 48 from one plane of tiles (whole or partial tile rows); the input
//! is the channels-first padded slab of `conv3d_s1`.

use super::conv3d::ConvGeom;
use super::{spatial_avx512, with_scratch, SyncPtr};
use rayon::prelude::*;

/// Tiles per block (vector lanes of the GEMMs).
const TB: usize = spatial_avx512::COLS;
/// Input channels per pass: a pass's transformed input (64 x CI_CHUNK x TB floats, 393 KB) stays in L2
/// (16 and 64 measured about equal, 32 a little faster at 48^3 and 24^3, `examples/conv_shapes.rs`).
const CI_CHUNK: usize = 32;

/// Whether the transform applies: 3x3x3, stride 1, padding 1 (same size out), even output sizes (whole
/// tiles), at most 64 output channels (the block's 64 x co x 48 accumulators stay in L2) and at least
/// 16 input channels (with fewer, transforming the input costs more than the multiplies it saves:
/// 1 -> 16 at 96^3 took 17-20 ms against the direct kernel's 6, `examples/conv_shapes.rs`).
pub fn applies(g: &ConvGeom) -> bool {
    g.ci >= 16
        && g.kernel == [3; 3]
        && g.stride == [1; 3]
        && g.padding == [1; 3]
        && g.output == g.input
        && g.output.iter().all(|&o| o > 0 && o % 2 == 0)
        && g.co <= 64
}

/// The transformed kernel, packed per input-channel pass and transform point in the layout of
/// `spatial_avx512::tile` (taps = 1): pass (c0, nc) at c0 * 64 * co, point xi at + xi * co * nc.
pub fn pack(w: &[f32], co: usize, ci: usize) -> Vec<f32> {
    const G: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    // u[o][i][xi] = (G x G x G) w[o][i]
    let mut u = vec![0.0f32; co * ci * 64];
    for (oi, dst) in u.chunks_mut(64).enumerate() {
        let g = &w[oi * 27..][..27];
        let mut t1 = [[[0.0f64; 4]; 3]; 3]; // [a][b][k]
        let mut t2 = [[[0.0f64; 4]; 4]; 3]; // [a][j][k]
        for a in 0..3 {
            for b in 0..3 {
                for k in 0..4 {
                    t1[a][b][k] = (0..3)
                        .map(|c| G[k][c] * g[(a * 3 + b) * 3 + c] as f64)
                        .sum();
                }
            }
            for j in 0..4 {
                for k in 0..4 {
                    t2[a][j][k] = (0..3).map(|b| G[j][b] * t1[a][b][k]).sum();
                }
            }
        }
        for i in 0..4 {
            for j in 0..4 {
                for k in 0..4 {
                    dst[i * 16 + j * 4 + k] =
                        (0..3).map(|a| G[i][a] * t2[a][j][k]).sum::<f64>() as f32;
                }
            }
        }
    }
    let mut out = vec![0.0f32; co * ci * 64];
    let mut pt = vec![0.0f32; co * CI_CHUNK];
    for c0 in (0..ci).step_by(CI_CHUNK) {
        let nc = CI_CHUNK.min(ci - c0);
        for xi in 0..64 {
            for o in 0..co {
                for i in 0..nc {
                    pt[o * nc + i] = u[(o * ci + c0 + i) * 64 + xi];
                }
            }
            let packed = spatial_avx512::pack_weights(&pt[..co * nc], co, nc, 1);
            out[c0 * 64 * co + xi * co * nc..][..co * nc].copy_from_slice(&packed);
        }
    }
    out
}

/// A run of tiles in one tile row: (tile row ty, first tile tx0, tiles, first lane).
type Segment = (usize, usize, usize, usize);

/// Output planes oz0..oz1 (even) of sample n from the channels-first padded slab `xp` (padded planes
/// from oz0, channel stride `cs`, padded rows of `wp`, planes of `hp * wp`), into y (NCDHW).
#[allow(clippy::too_many_arguments)]
pub fn slab(
    xp: &[f32],
    cs: usize,
    hp: usize,
    wp: usize,
    g: &ConvGeom,
    n: usize,
    oz0: usize,
    oz1: usize,
    u: &[f32],
    y: &SyncPtr<f32>,
) {
    let [_, h, w] = g.output;
    let (th, tw) = (h / 2, w / 2);
    let blocks_per_plane = (th * tw).div_ceil(TB);
    let items: Vec<(usize, usize)> = (oz0 / 2..oz1 / 2)
        .flat_map(|tz| (0..blocks_per_plane).map(move |b| (tz, b)))
        .collect();
    items.into_par_iter().for_each(|(tz, b)| {
        let mut segs: Vec<Segment> = Vec::with_capacity(4);
        let (mut t, end) = (b * TB, ((b + 1) * TB).min(th * tw));
        while t < end {
            let (ty, tx0) = (t / tw, t % tw);
            let len = (tw - tx0).min(end - t);
            segs.push((ty, tx0, len, t - b * TB));
            t += len;
        }
        let plane = hp * wp;
        // Per thread, reused: every value is written before it is read (lanes past the block's tiles
        // hold finite values whose results are dropped).
        with_scratch(
            64 * CI_CHUNK * TB + 64 * g.co * TB,
            |scratch: &mut [f32]| {
                WORK.with(|work| {
                    let work = &mut *work.borrow_mut();
                    let (v, m) = scratch.split_at_mut(64 * CI_CHUNK * TB);
                    for c0 in (0..g.ci).step_by(CI_CHUNK) {
                        let nc = CI_CHUNK.min(g.ci - c0);
                        for c in 0..nc {
                            // Padded input plane 2 tz of channel c0 + c, relative to the slab's first plane oz0.
                            let base = &xp[(c0 + c) * cs + (2 * tz - oz0) * plane..];
                            // SAFETY: AVX-512 was checked by the caller.
                            unsafe {
                                input_transform(
                                    base,
                                    plane,
                                    wp,
                                    &segs,
                                    &mut v[c * TB..],
                                    nc * TB,
                                    work,
                                )
                            };
                        }
                        for xi in 0..64 {
                            // SAFETY: v holds nc channels of TB lanes for point xi, m co rows of TB; the weights
                            // of this pass and point are co * nc floats.
                            unsafe {
                                spatial_avx512::tile(
                                    v[xi * nc * TB..].as_ptr(),
                                    TB,
                                    nc,
                                    &[0],
                                    &u[c0 * 64 * g.co + xi * g.co * nc..][..g.co * nc],
                                    g.co,
                                    TB,
                                    m[xi * g.co * TB..].as_mut_ptr(),
                                    TB,
                                    c0 > 0,
                                )
                            };
                        }
                    }
                    for o in 0..g.co {
                        // SAFETY: AVX-512 checked by the caller; each output voxel belongs to exactly one tile.
                        unsafe { output_transform(m, g, n, o, tz, &segs, y, work) };
                    }
                })
            },
        );
    });
}

/// The transforms' per-thread temporaries (~17 KB, kept: zeroing them per block cost more than the
/// transforms).
struct Work {
    /// input rows transformed along x: [a][b][k], with a vector of slack lanes
    x: [[[[f32; TB + 16]; 4]; 4]; 4],
    /// the output tile's values: [dy][dx][dz]
    s3: [[[[f32; TB]; 2]; 2]; 2],
}

thread_local! {
    // SAFETY (new_zeroed): all-zero bits are valid f32 arrays.
    static WORK: std::cell::RefCell<Box<Work>> = std::cell::RefCell::new(unsafe { Box::<Work>::new_zeroed().assume_init() });
}

/// V[xi][lane] for one channel (xi = 16 i + 4 j + k over z, y, x), at v[xi * xi_stride + lane].
///
/// Along x, 16 tiles at a time: a tile's 4 inputs start at every second float, so two loads and a
/// two-source permute give the even and odd inputs of 16 tiles. A segment's last vector may take up
/// to 15 tiles past its end (next row's or the slab's slack values, finite); those lanes are overwritten
/// by the next segment or lie past the block's tiles, whose results are dropped.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform(
    base: &[f32],
    plane: usize,
    wp: usize,
    segs: &[Segment],
    v: &mut [f32],
    xi_stride: usize,
    work: &mut Work,
) {
    use std::arch::x86_64::*;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let x = &mut work.x;
    for a in 0..4 {
        for b in 0..4 {
            for &(ty, tx0, len, l0) in segs {
                let r = base.as_ptr().add(a * plane + (2 * ty + b) * wp + 2 * tx0);
                let xb = &mut x[a][b];
                for s in (0..len).step_by(16) {
                    let (p0, p1) = (
                        _mm512_loadu_ps(r.add(2 * s)),
                        _mm512_loadu_ps(r.add(2 * s + 16)),
                    );
                    let (q0, q1) = (
                        _mm512_loadu_ps(r.add(2 * s + 2)),
                        _mm512_loadu_ps(r.add(2 * s + 18)),
                    );
                    let (e, o) = (
                        _mm512_permutex2var_ps(p0, even, p1),
                        _mm512_permutex2var_ps(p0, odd, p1),
                    );
                    let (e1, o1) = (
                        _mm512_permutex2var_ps(q0, even, q1),
                        _mm512_permutex2var_ps(q0, odd, q1),
                    );
                    let l = l0 + s;
                    _mm512_storeu_ps(xb[0].as_mut_ptr().add(l), _mm512_sub_ps(e, e1));
                    _mm512_storeu_ps(xb[1].as_mut_ptr().add(l), _mm512_add_ps(o, e1));
                    _mm512_storeu_ps(xb[2].as_mut_ptr().add(l), _mm512_sub_ps(e1, o));
                    _mm512_storeu_ps(xb[3].as_mut_ptr().add(l), _mm512_sub_ps(o, o1));
                }
            }
        }
    }
    // Along y, then z, 16 lanes at a time in registers, straight into V.
    for lc in (0..TB).step_by(16) {
        for k in 0..4 {
            let mut t = [[_mm512_setzero_ps(); 4]; 4]; // [a][j]
            for (a, ta) in t.iter_mut().enumerate() {
                *ta = bt4([0, 1, 2, 3].map(|b| _mm512_loadu_ps(x[a][b][k].as_ptr().add(lc))));
            }
            for j in 0..4 {
                let r = bt4([t[0][j], t[1][j], t[2][j], t[3][j]]);
                for (i, ri) in r.iter().enumerate() {
                    _mm512_storeu_ps(
                        v.as_mut_ptr().add((i * 16 + j * 4 + k) * xi_stride + lc),
                        *ri,
                    );
                }
            }
        }
    }
}

// Only x86-64 calls `slab` (the caller checks AVX-512); elsewhere these keep it compiling.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn input_transform(_: &[f32], _: usize, _: usize, _: &[Segment], _: &mut [f32], _: usize, _: &mut Work) {
    unreachable!("winograd called without AVX-512");
}
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(_: &[f32], _: &ConvGeom, _: usize, _: usize, _: usize, _: &[Segment], _: &SyncPtr<f32>, _: &mut Work) {
    unreachable!("winograd called without AVX-512");
}

/// B^T of F(2, 3) on four vectors.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bt4(d: [std::arch::x86_64::__m512; 4]) -> [std::arch::x86_64::__m512; 4] {
    use std::arch::x86_64::*;
    [
        _mm512_sub_ps(d[0], d[2]),
        _mm512_add_ps(d[1], d[2]),
        _mm512_sub_ps(d[2], d[1]),
        _mm512_sub_ps(d[1], d[3]),
    ]
}

/// A^T of F(2, 3) on four vectors: (m0 + m1 + m2, m1 - m2 - m3).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn at4(d: [std::arch::x86_64::__m512; 4]) -> [std::arch::x86_64::__m512; 2] {
    use std::arch::x86_64::*;
    [
        _mm512_add_ps(_mm512_add_ps(d[0], d[1]), d[2]),
        _mm512_sub_ps(_mm512_sub_ps(d[1], d[2]), d[3]),
    ]
}

/// Y = A^T M per axis for output channel o, written to y's 2x2x2 tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    m: &[f32],
    g: &ConvGeom,
    n: usize,
    o: usize,
    tz: usize,
    segs: &[Segment],
    y: &SyncPtr<f32>,
    work: &mut Work,
) {
    use std::arch::x86_64::*;
    let co = g.co;
    let s3 = &mut work.s3;
    // Along x, y, then z, 16 lanes at a time in registers.
    for lc in (0..TB).step_by(16) {
        let mut s2 = [[[_mm512_setzero_ps(); 2]; 2]; 4]; // [i][dy][dx]
        for (i, s2i) in s2.iter_mut().enumerate() {
            let mut s1 = [[_mm512_setzero_ps(); 2]; 4]; // [j][dx]
            for (j, s1j) in s1.iter_mut().enumerate() {
                let b = i * 16 + j * 4;
                *s1j = at4([0, 1, 2, 3]
                    .map(|q| _mm512_loadu_ps(m.as_ptr().add(((b + q) * co + o) * TB + lc))));
            }
            for dx in 0..2 {
                let [r0, r1] = at4([s1[0][dx], s1[1][dx], s1[2][dx], s1[3][dx]]);
                s2i[0][dx] = r0;
                s2i[1][dx] = r1;
            }
        }
        for dy in 0..2 {
            for dx in 0..2 {
                let r = at4([s2[0][dy][dx], s2[1][dy][dx], s2[2][dy][dx], s2[3][dy][dx]]);
                for (dz, rz) in r.iter().enumerate() {
                    _mm512_storeu_ps(s3[dy][dx][dz].as_mut_ptr().add(lc), *rz);
                }
            }
        }
    }
    let [d, h, w] = g.output;
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for &(ty, tx0, len, l0) in segs {
        for dz in 0..2 {
            for dy in 0..2 {
                let row = y
                    .ptr()
                    .add((((n * co + o) * d + 2 * tz + dz) * h + 2 * ty + dy) * w + 2 * tx0);
                let (v0, v1) = (&s3[dy][0][dz], &s3[dy][1][dz]);
                // out[2 l] = v0[l], out[2 l + 1] = v1[l], 16 tiles (32 floats) at a time.
                for s in (0..len).step_by(16) {
                    // (masked: the lanes past this segment may lie past the arrays)
                    let t = if len - s >= 16 {
                        0xFFFF
                    } else {
                        (1u32 << (len - s)) as u16 - 1
                    };
                    let (a, b) = (
                        _mm512_maskz_loadu_ps(t, v0.as_ptr().add(l0 + s)),
                        _mm512_maskz_loadu_ps(t, v1.as_ptr().add(l0 + s)),
                    );
                    let (i0, i1) = (
                        _mm512_permutex2var_ps(a, lo, b),
                        _mm512_permutex2var_ps(a, hi, b),
                    );
                    let rem = 2 * (len - s);
                    let m0 = if rem >= 16 {
                        0xFFFF
                    } else {
                        (1u32 << rem) as u16 - 1
                    };
                    let m1 = if rem >= 32 {
                        0xFFFF
                    } else if rem > 16 {
                        (1u32 << (rem - 16)) as u16 - 1
                    } else {
                        0
                    };
                    _mm512_mask_storeu_ps(row.add(2 * s), m0, i0);
                    _mm512_mask_storeu_ps(row.add(2 * s + 16), m1, i1);
                }
            }
        }
    }
}
