//! Winograd F(2x2x2, 3x3x3) and F(4x4x4, 3x3x3) for UNETR's 3x3x3, stride-1, padding-1 convolutions
//! (f32, AVX-512).
//!
//! Each output tile (2^3 or 4^3 voxels) is computed from its input patch (4^3 or 6^3) with one multiply
//! per (input, output) channel pair and transform point (64 per 8 outputs, or 216 per 64, instead of 27
//! per output): the patch is transformed (V = B^T d, per axis), multiplied element-wise with the
//! transformed kernel (U = G g, per axis) and summed over input channels, which for each transform point
//! is a small GEMM, and transformed back (Y = A^T M). The GEMMs run on `spatial_avx512`'s microkernel
//! with 48 tiles in vector lanes.
//!
//! Rounding: F(2, 3)'s matrices hold only 0, +-1 and +-1/2, so it stays within a few ulp of the direct
//! sum. F(4, 3) interpolates at 0, -1, 1, 1/2, -2 (the most accurate choice of Barabasz et al., "Error
//! analysis and improving the accuracy of Winograd convolution", 2020; the textbook +-2 points are 5x
//! worse in f32): about 10x the direct sum's rounding error, 3e-6 of the output's scale with 32 input
//! channels. `Tile::choose` takes F(4, 3) where the sizes allow it (a quarter of the multiplies, and
//! fewer transform operations per output).
//!
//! Tiles come in blocks of up to 48 from one plane of tiles (whole or partial tile rows); the input
//! is the channels-first padded slab of `conv3d_s1`.

use super::conv3d::ConvGeom;
use super::{spatial_avx512, with_scratch, SyncPtr};
use rayon::prelude::*;

/// Tiles per block (vector lanes of the GEMMs).
const TB: usize = spatial_avx512::COLS;

/// The tile size: F(2x2x2, 3x3x3) or F(4x4x4, 3x3x3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    F2,
    F4,
}

impl Tile {
    /// The transform for `g`, if one applies: 3x3x3, stride 1, padding 1 (same size out), whole tiles,
    /// at most 64 output channels (the block's points x co x 48 accumulators stay in L2; for F(4, 3),
    /// with 216 points, at most 32) and at least 16 input channels (with fewer, transforming the input
    /// costs more than the multiplies it saves: F(2, 3) 1 -> 16 at 96^3 took 17-20 ms against the direct
    /// kernel's 6, `examples/conv_shapes.rs`).
    pub fn choose(g: &ConvGeom) -> Option<Tile> {
        let base = g.ci >= 16
            && g.kernel == [3; 3]
            && g.stride == [1; 3]
            && g.padding == [1; 3]
            && g.output == g.input
            && g.output.iter().all(|&o| o > 0);
        let whole = |t: usize| g.output.iter().all(|&o| o % t == 0);
        if !base {
            None
        } else if whole(4) && g.co <= 32 {
            Some(Tile::F4)
        } else if whole(2) && g.co <= 64 {
            Some(Tile::F2)
        } else {
            None
        }
    }
    /// Output tile edge.
    pub fn edge(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }
    /// Input patch edge (edge + 2).
    fn patch(self) -> usize {
        self.edge() + 2
    }
    /// Transform points per tile.
    fn points(self) -> usize {
        self.patch().pow(3)
    }
    /// Input channels per pass: a pass's transformed input (points x chunk x 48 floats) stays in L2
    /// beside the accumulators (`examples/conv_shapes.rs`: F(2, 3) 16 and 64 about equal, 32 a little
    /// faster at 48^3 and 24^3; F(4, 3) 16 faster than 8 at 48^3 (32 -> 32 15-17 ms against 17-18),
    /// 32 no faster than 16 at 96^3).
    fn chunk(self) -> usize {
        match self {
            Tile::F2 => 32,
            Tile::F4 => 16,
        }
    }
    /// G (the kernel's transform), patch x 3.
    fn g(self) -> &'static [[f64; 3]] {
        const G2: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
        // Points 0, -1, 1, 1/2, -2 (and infinity): row j is (1, p, p^2) / prod_{l != j} (p_j - p_l).
        const G4: [[f64; 3]; 6] = [
            [1.0, 0.0, 0.0],
            [-1.0 / 3.0, 1.0 / 3.0, -1.0 / 3.0],
            [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
            [-16.0 / 15.0, -8.0 / 15.0, -4.0 / 15.0],
            [1.0 / 15.0, -2.0 / 15.0, 4.0 / 15.0],
            [0.0, 0.0, 1.0],
        ];
        match self {
            Tile::F2 => &G2,
            Tile::F4 => &G4,
        }
    }
}

/// The mask of the first `k` of 16 lanes (all of them when k >= 16).
#[inline(always)]
fn first_lanes(k: usize) -> u16 {
    if k >= 16 {
        0xFFFF
    } else {
        ((1u32 << k) - 1) as u16
    }
}

/// The transformed kernel, packed per input-channel pass and transform point in the layout of
/// `spatial_avx512::tile` (taps = 1): pass (c0, nc) at c0 * points * co, point xi at + xi * co * nc.
pub fn pack(w: &[f32], co: usize, ci: usize, tile: Tile) -> Vec<f32> {
    let (gm, a, pts) = (tile.g(), tile.patch(), tile.points());
    // u[o][i][xi] = (G x G x G) w[o][i], xi = (i a + j) a + k over z, y, x; in f64, rounded once.
    let mut u = vec![0.0f32; co * ci * pts];
    for (oi, dst) in u.chunks_mut(pts).enumerate() {
        let w = &w[oi * 27..][..27];
        let mut t1 = vec![0.0f64; 9 * a]; // [z][y][k]
        let mut t2 = vec![0.0f64; 3 * a * a]; // [z][j][k]
        for z in 0..3 {
            for y in 0..3 {
                for k in 0..a {
                    t1[(z * 3 + y) * a + k] = (0..3).map(|x| gm[k][x] * w[(z * 3 + y) * 3 + x] as f64).sum();
                }
            }
            for j in 0..a {
                for k in 0..a {
                    t2[(z * a + j) * a + k] = (0..3).map(|y| gm[j][y] * t1[(z * 3 + y) * a + k]).sum();
                }
            }
        }
        for i in 0..a {
            for j in 0..a {
                for k in 0..a {
                    dst[(i * a + j) * a + k] = (0..3).map(|z| gm[i][z] * t2[(z * a + j) * a + k]).sum::<f64>() as f32;
                }
            }
        }
    }
    let chunk = tile.chunk();
    let mut out = vec![0.0f32; co * ci * pts];
    let mut pt = vec![0.0f32; co * chunk];
    for c0 in (0..ci).step_by(chunk) {
        let nc = chunk.min(ci - c0);
        for xi in 0..pts {
            for o in 0..co {
                for i in 0..nc {
                    pt[o * nc + i] = u[(o * ci + c0 + i) * pts + xi];
                }
            }
            let packed = spatial_avx512::pack_weights(&pt[..co * nc], co, nc, 1);
            out[c0 * pts * co + xi * co * nc..][..co * nc].copy_from_slice(&packed);
        }
    }
    out
}

/// A run of tiles in one tile row: (tile row ty, first tile tx0, tiles, first lane).
type Segment = (usize, usize, usize, usize);

/// Output planes oz0..oz1 (whole tiles) of sample n from the channels-first padded slab `xp` (padded
/// planes from oz0, channel stride `cs`, padded rows of `wp`, planes of `hp * wp`), into y (NCDHW); `u` is
/// [`pack`]'s for the same tile.
#[allow(clippy::too_many_arguments)]
pub fn slab(
    tile: Tile,
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
    let (e, pts, chunk) = (tile.edge(), tile.points(), tile.chunk());
    let (th, tw) = (h / e, w / e);
    let blocks_per_plane = (th * tw).div_ceil(TB);
    let items: Vec<(usize, usize)> = (oz0 / e..oz1 / e)
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
        with_scratch(pts * chunk * TB + pts * g.co * TB, |scratch: &mut [f32]| {
            let (v, m) = scratch.split_at_mut(pts * chunk * TB);
            for c0 in (0..g.ci).step_by(chunk) {
                let nc = chunk.min(g.ci - c0);
                for c in 0..nc {
                    // Padded input plane e tz of channel c0 + c, relative to the slab's first plane oz0.
                    let base = &xp[(c0 + c) * cs + (e * tz - oz0) * plane..];
                    let v = &mut v[c * TB..];
                    // SAFETY: AVX-512 was checked by the caller; reads past `base`'s rows stay in the
                    // slab buffer's slack (see `conv3d_s1::fwd_into`).
                    match tile {
                        Tile::F2 => WORK.with(|wk| unsafe { input_transform(base, plane, wp, &segs, v, nc * TB, &mut wk.borrow_mut()) }),
                        Tile::F4 => WORK4.with(|wk| unsafe { input_transform4(base, plane, wp, &segs, v, nc * TB, &mut wk.borrow_mut()) }),
                    }
                }
                for xi in 0..pts {
                    // SAFETY: v holds nc channels of TB lanes for point xi, m co rows of TB; the weights
                    // of this pass and point are co * nc floats.
                    unsafe {
                        spatial_avx512::tile(
                            v[xi * nc * TB..].as_ptr(),
                            TB,
                            nc,
                            &[0],
                            &u[c0 * pts * g.co + xi * g.co * nc..][..g.co * nc],
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
                match tile {
                    Tile::F2 => WORK.with(|wk| unsafe { output_transform(m, g, n, o, tz, &segs, y, &mut wk.borrow_mut()) }),
                    Tile::F4 => WORK4.with(|wk| unsafe { output_transform4(m, g, n, o, tz, &segs, y, &mut wk.borrow_mut()) }),
                }
            }
        });
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
                    let t = first_lanes(len - s);
                    let (a, b) = (
                        _mm512_maskz_loadu_ps(t, v0.as_ptr().add(l0 + s)),
                        _mm512_maskz_loadu_ps(t, v1.as_ptr().add(l0 + s)),
                    );
                    let (i0, i1) = (
                        _mm512_permutex2var_ps(a, lo, b),
                        _mm512_permutex2var_ps(a, hi, b),
                    );
                    let rem = 2 * (len - s);
                    let (m0, m1) = (first_lanes(rem), first_lanes(rem.saturating_sub(16)));
                    _mm512_mask_storeu_ps(row.add(2 * s), m0, i0);
                    _mm512_mask_storeu_ps(row.add(2 * s + 16), m1, i1);
                }
            }
        }
    }
}

/// F(4, 3)'s per-thread temporaries (~73 KB, kept like `Work`).
struct Work4 {
    /// input rows transformed along x: [a][b][k], with a vector of slack lanes
    x: [[[[f32; TB + 16]; 6]; 6]; 6],
    /// the output tile's values after the x and y passes, for one vector of tiles: [i][dy][dx]
    s2: [[[[f32; 16]; 4]; 4]; 6],
    /// the output tile's values: [dz][dy][dx]
    s3: [[[[f32; TB]; 4]; 4]; 4],
}

thread_local! {
    // SAFETY (new_zeroed): all-zero bits are valid f32 arrays.
    static WORK4: std::cell::RefCell<Box<Work4>> = std::cell::RefCell::new(unsafe { Box::<Work4>::new_zeroed().assume_init() });
}

/// B^T of F(4, 3) at the points 0, -1, 1, 1/2, -2 on six vectors (rows (1, -3/2, -2, 3/2, 1, 0),
/// (0, 1, -5/2, 1/2, 1, 0), (0, -1, 1/2, 5/2, 1, 0), (0, -2, -1, 2, 1, 0), (0, 1/2, -1, -1/2, 1, 0),
/// (0, 1, -3/2, -2, 3/2, 1)), in 16 operations.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bt6(d: [std::arch::x86_64::__m512; 6]) -> [std::arch::x86_64::__m512; 6] {
    use std::arch::x86_64::*;
    let c = |v: f32| _mm512_set1_ps(v);
    let e = _mm512_sub_ps(d[3], d[1]);
    let f = _mm512_sub_ps(d[4], d[2]);
    [
        _mm512_fmadd_ps(c(1.5), e, _mm512_fmadd_ps(c(-2.0), d[2], _mm512_add_ps(d[0], d[4]))),
        _mm512_fmadd_ps(c(0.5), d[3], _mm512_fmadd_ps(c(-2.5), d[2], _mm512_add_ps(d[1], d[4]))),
        _mm512_fmadd_ps(c(2.5), d[3], _mm512_fmadd_ps(c(0.5), d[2], _mm512_sub_ps(d[4], d[1]))),
        _mm512_fmadd_ps(c(2.0), e, f),
        _mm512_fmadd_ps(c(-0.5), e, f),
        _mm512_fmadd_ps(c(1.5), f, _mm512_fmadd_ps(c(-2.0), d[3], _mm512_add_ps(d[1], d[5]))),
    ]
}

/// A^T of F(4, 3) at the points 0, -1, 1, 1/2, -2 on six vectors: rows (1, 1, 1, 1, 1, 0),
/// (0, -1, 1, 1/2, -2, 0), (0, 1, 1, 1/4, 4, 0), (0, -1, 1, 1/8, -8, 1).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn at6(m: [std::arch::x86_64::__m512; 6]) -> [std::arch::x86_64::__m512; 4] {
    use std::arch::x86_64::*;
    let c = |v: f32| _mm512_set1_ps(v);
    let s = _mm512_add_ps(m[1], m[2]);
    let d = _mm512_sub_ps(m[2], m[1]);
    [
        _mm512_add_ps(_mm512_add_ps(m[0], s), _mm512_add_ps(m[3], m[4])),
        _mm512_fmadd_ps(c(-2.0), m[4], _mm512_fmadd_ps(c(0.5), m[3], d)),
        _mm512_fmadd_ps(c(4.0), m[4], _mm512_fmadd_ps(c(0.25), m[3], s)),
        _mm512_fmadd_ps(c(-8.0), m[4], _mm512_fmadd_ps(c(0.125), m[3], _mm512_add_ps(d, m[5]))),
    ]
}

/// [`input_transform`] for F(4, 3): V[xi][lane] for one channel (xi = 36 i + 6 j + k over z, y, x).
///
/// Along x, 16 tiles at a time: tile t's six inputs are floats 4 t .. 4 t + 5 of the row, so input i of
/// 16 tiles is a stride-4 gather from four vectors (two two-source permutes and a lane-block shuffle);
/// inputs 4 and 5 are inputs 0 and 1 of the vectors loaded 4 floats later. A segment's last vector may
/// read up to 15 tiles (68 floats) past its end: finite values of the next rows or the slab buffer's
/// slack, whose lanes are overwritten by the next segment or dropped.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform4(
    base: &[f32],
    plane: usize,
    wp: usize,
    segs: &[Segment],
    v: &mut [f32],
    xi_stride: usize,
    work: &mut Work4,
) {
    use std::arch::x86_64::*;
    // idx[i]: lanes 0..7 pick floats i, i + 4, .., i + 28 of a two-vector table.
    let idx = [0, 1, 2, 3].map(|i| {
        _mm512_setr_epi32(i, i + 4, i + 8, i + 12, i + 16, i + 20, i + 24, i + 28, 0, 0, 0, 0, 0, 0, 0, 0)
    });
    // Input i of 16 tiles from the four vectors starting at p.
    let gather = |l: &[__m512; 4], i: usize| {
        _mm512_shuffle_f32x4::<0x44>(
            _mm512_permutex2var_ps(l[0], idx[i], l[1]),
            _mm512_permutex2var_ps(l[2], idx[i], l[3]),
        )
    };
    let x = &mut work.x;
    for a in 0..6 {
        for b in 0..6 {
            for &(ty, tx0, len, l0) in segs {
                let r = base.as_ptr().add(a * plane + (4 * ty + b) * wp + 4 * tx0);
                let xb = &mut x[a][b];
                for s in (0..len).step_by(16) {
                    let p = r.add(4 * s);
                    let lo = [0, 16, 32, 48].map(|o| _mm512_loadu_ps(p.add(o)));
                    let hi = [4, 20, 36, 52].map(|o| _mm512_loadu_ps(p.add(o)));
                    let t = bt6([gather(&lo, 0), gather(&lo, 1), gather(&lo, 2), gather(&lo, 3), gather(&hi, 0), gather(&hi, 1)]);
                    for (k, tk) in t.iter().enumerate() {
                        _mm512_storeu_ps(xb[k].as_mut_ptr().add(l0 + s), *tk);
                    }
                }
            }
        }
    }
    // Along y, then z, 16 lanes at a time, straight into V.
    for lc in (0..TB).step_by(16) {
        for k in 0..6 {
            let mut t = [[_mm512_setzero_ps(); 6]; 6]; // [a][j]
            for (a, ta) in t.iter_mut().enumerate() {
                *ta = bt6([0, 1, 2, 3, 4, 5].map(|b| _mm512_loadu_ps(x[a][b][k].as_ptr().add(lc))));
            }
            for j in 0..6 {
                let r = bt6([t[0][j], t[1][j], t[2][j], t[3][j], t[4][j], t[5][j]]);
                for (i, ri) in r.iter().enumerate() {
                    _mm512_storeu_ps(v.as_mut_ptr().add((i * 36 + j * 6 + k) * xi_stride + lc), *ri);
                }
            }
        }
    }
}

/// [`output_transform`] for F(4, 3): Y = A^T M per axis for output channel o, written to y's 4x4x4 tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform4(
    m: &[f32],
    g: &ConvGeom,
    n: usize,
    o: usize,
    tz: usize,
    segs: &[Segment],
    y: &SyncPtr<f32>,
    work: &mut Work4,
) {
    use std::arch::x86_64::*;
    let co = g.co;
    let (s2, s3) = (&mut work.s2, &mut work.s3);
    for lc in (0..TB).step_by(16) {
        // Along x, then y, per z point i.
        for (i, s2i) in s2.iter_mut().enumerate() {
            let mut s1 = [[_mm512_setzero_ps(); 4]; 6]; // [j][dx]
            for (j, s1j) in s1.iter_mut().enumerate() {
                let b = i * 36 + j * 6;
                *s1j = at6([0, 1, 2, 3, 4, 5].map(|q| _mm512_loadu_ps(m.as_ptr().add(((b + q) * co + o) * TB + lc))));
            }
            for dx in 0..4 {
                let r = at6([s1[0][dx], s1[1][dx], s1[2][dx], s1[3][dx], s1[4][dx], s1[5][dx]]);
                for (dy, rd) in r.iter().enumerate() {
                    _mm512_storeu_ps(s2i[dy][dx].as_mut_ptr(), *rd);
                }
            }
        }
        // Along z.
        for dy in 0..4 {
            for dx in 0..4 {
                let r = at6([0, 1, 2, 3, 4, 5].map(|i| _mm512_loadu_ps(s2[i][dy][dx].as_ptr())));
                for (dz, rz) in r.iter().enumerate() {
                    _mm512_storeu_ps(s3[dz][dy][dx].as_mut_ptr().add(lc), *rz);
                }
            }
        }
    }
    let [d, h, w] = g.output;
    // Interleaving four vectors of 16 tiles (dx = 0..3) into 64 consecutive floats: pairs, then pairs of pairs.
    let p_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let p_hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let q_lo = _mm512_setr_epi32(0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
    let q_hi = _mm512_setr_epi32(8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31);
    for &(ty, tx0, len, l0) in segs {
        for (dz, s3z) in s3.iter().enumerate() {
            for (dy, v) in s3z.iter().enumerate() {
                let row = y.ptr().add((((n * co + o) * d + 4 * tz + dz) * h + 4 * ty + dy) * w + 4 * tx0);
                for s in (0..len).step_by(16) {
                    // (masked: the lanes past this segment may lie past the arrays)
                    let t = first_lanes(len - s);
                    let [v0, v1, v2, v3] = [0, 1, 2, 3].map(|dx| _mm512_maskz_loadu_ps(t, v[dx].as_ptr().add(l0 + s)));
                    let (a_lo, a_hi) = (_mm512_permutex2var_ps(v0, p_lo, v1), _mm512_permutex2var_ps(v0, p_hi, v1));
                    let (b_lo, b_hi) = (_mm512_permutex2var_ps(v2, p_lo, v3), _mm512_permutex2var_ps(v2, p_hi, v3));
                    let out = [
                        _mm512_permutex2var_ps(a_lo, q_lo, b_lo),
                        _mm512_permutex2var_ps(a_lo, q_hi, b_lo),
                        _mm512_permutex2var_ps(a_hi, q_lo, b_hi),
                        _mm512_permutex2var_ps(a_hi, q_hi, b_hi),
                    ];
                    let rem = 4 * (len - s).min(16);
                    for (q, ov) in out.iter().enumerate() {
                        let valid = rem.saturating_sub(16 * q);
                        if valid > 0 {
                            _mm512_mask_storeu_ps(row.add(4 * s + 16 * q), first_lanes(valid), *ov);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn input_transform4(_: &[f32], _: usize, _: usize, _: &[Segment], _: &mut [f32], _: usize, _: &mut Work4) {
    unreachable!("winograd called without AVX-512");
}
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform4(_: &[f32], _: &ConvGeom, _: usize, _: usize, _: usize, _: &[Segment], _: &SyncPtr<f32>, _: &mut Work4) {
    unreachable!("winograd called without AVX-512");
}
