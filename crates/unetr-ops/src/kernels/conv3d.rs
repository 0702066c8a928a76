//! 3D convolution on the CPU: dispatch, the 1x1x1 and the general (strided) paths.
//! Stride-1 convolutions (UNETR's 3x3x3) go to `conv3d_s1`; 1x1x1 convs to <= 16 channels (f32, AVX-512)
//! to `spatial_avx512`, reading x in place.
//!
//! General path: tiled im2col + GEMM.
//!
//! A plain im2col of a 32-channel 3x3x3 conv at 96^3 is 884,736 x 864 floats (3 GB). Here the output is
//! cut into tiles of whole output rows; each tile's im2col block is built in a buffer of a few MB that
//! stays in cache and is multiplied right away. Extra memory per conv is one such buffer per thread.
//! Tiles run in parallel on rayon with single-threaded GEMMs; reductions (weight gradients) use a static
//! partition of tiles over threads, so results are bit-identical from run to run.

use super::{
    as_f32, avx512, matmul, spatial_avx512, threads, with_scratch, zeros_written, Elem, Mat,
    SyncPtr,
};
use rayon::prelude::*;

/// Geometry of one convolution: NCDHW input, weight [co, ci, kd, kh, kw], no dilation, no groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub ci: usize,
    pub co: usize,
    pub input: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub output: [usize; 3],
}

/// Elements of im2col buffer per tile (2 MiB of f32): sized to stay in a core's L2 with the GEMM's own
/// packing buffers; chosen, not tuned (only the strided convs, off UNETR's hot path, use this path).
const TILE_BUDGET: usize = 1 << 19;

impl ConvGeom {
    /// Output size of a convolution, `None` when the kernel does not fit the padded input.
    pub fn out_size(
        input: [usize; 3],
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> Option<[usize; 3]> {
        let mut o = [0; 3];
        for i in 0..3 {
            let padded = input[i] + 2 * padding[i];
            if kernel[i] == 0 || stride[i] == 0 || padded < kernel[i] {
                return None;
            }
            o[i] = (padded - kernel[i]) / stride[i] + 1;
        }
        Some(o)
    }
    pub fn in_vol(&self) -> usize {
        self.input.iter().product()
    }
    pub fn out_vol(&self) -> usize {
        self.output.iter().product()
    }
    pub fn kvol(&self) -> usize {
        self.kernel.iter().product()
    }
    /// Rows of the im2col matrix (= columns of the flattened weight).
    pub fn k(&self) -> usize {
        self.ci * self.kvol()
    }
    fn is_pointwise(&self) -> bool {
        self.kernel == [1; 3] && self.stride == [1; 3] && self.padding == [0; 3]
    }
    /// Multiply-accumulates of the forward pass.
    pub fn macs(&self) -> usize {
        self.n * self.co * self.out_vol() * self.k()
    }

    /// Tiles as (sample, first output row, end output row); a row is one (z, y) line of the output.
    fn tiles(&self) -> Vec<(usize, usize, usize)> {
        let rows = self.output[0] * self.output[1];
        let wo = self.output[2].max(1);
        let mut per = (TILE_BUDGET / (self.k().max(1) * wo)).clamp(1, rows.max(1));
        // Enough tiles to keep every thread busy to the end.
        let want = (4 * threads()).div_ceil(self.n.max(1));
        per = per.min(rows.div_ceil(want).max(1));
        let mut t = Vec::new();
        for n in 0..self.n {
            let mut r = 0;
            while r < rows {
                t.push((n, r, (r + per).min(rows)));
                r += per;
            }
        }
        t
    }
}

/// Output positions `o` in [lo, hi) whose input index `o * s + k - p` falls inside [0, len).
fn valid_range(out_len: usize, s: usize, k: usize, p: usize, len: usize) -> (usize, usize) {
    let lo = if p > k { (p - k).div_ceil(s) } else { 0 };
    let hi = if len + p > k {
        (len + p - k).div_ceil(s).min(out_len)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Fills `col` ([k x pt], pt = rows * wo) with the im2col block of output rows [r0, r1) of one sample.
fn im2col<T: Elem>(x: &[T], g: &ConvGeom, r0: usize, r1: usize, col: &mut [T]) {
    let [d, h, w] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [sd, sh, sw] = g.stride;
    let [pd, ph, pw] = g.padding;
    let [_, ho, wo] = g.output;
    let pt = (r1 - r0) * wo;
    for c in 0..g.ci {
        for kz in 0..kd {
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = ((c * kd + kz) * kh + ky) * kw + kx;
                    let dst = &mut col[row * pt..(row + 1) * pt];
                    let (lo, hi) = valid_range(wo, sw, kx, pw, w);
                    for (j, r) in (r0..r1).enumerate() {
                        let seg = &mut dst[j * wo..(j + 1) * wo];
                        let iz = ((r / ho) * sd + kz) as isize - pd as isize;
                        let iy = ((r % ho) * sh + ky) as isize - ph as isize;
                        if iz < 0 || iz >= d as isize || iy < 0 || iy >= h as isize || lo == hi {
                            seg.fill(T::zero());
                            continue;
                        }
                        let src = &x[((c * d + iz as usize) * h + iy as usize) * w..][..w];
                        seg[..lo].fill(T::zero());
                        seg[hi..].fill(T::zero());
                        let ix0 = lo * sw + kx - pw;
                        if sw == 1 {
                            seg[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                        } else {
                            for (o, v) in seg[lo..hi].iter_mut().enumerate() {
                                *v = src[ix0 + o * sw];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds `col` back into the input-shaped `dx` of one sample.
fn col2im_add<T: Elem>(col: &[T], g: &ConvGeom, r0: usize, r1: usize, dx: &mut [T]) {
    let [d, h, w] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [sd, sh, sw] = g.stride;
    let [pd, ph, pw] = g.padding;
    let [_, ho, wo] = g.output;
    let pt = (r1 - r0) * wo;
    for c in 0..g.ci {
        for kz in 0..kd {
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = ((c * kd + kz) * kh + ky) * kw + kx;
                    let src_row = &col[row * pt..(row + 1) * pt];
                    let (lo, hi) = valid_range(wo, sw, kx, pw, w);
                    if lo == hi {
                        continue;
                    }
                    for (j, r) in (r0..r1).enumerate() {
                        let iz = ((r / ho) * sd + kz) as isize - pd as isize;
                        let iy = ((r % ho) * sh + ky) as isize - ph as isize;
                        if iz < 0 || iz >= d as isize || iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let seg = &src_row[j * wo..(j + 1) * wo];
                        let dst = &mut dx[((c * d + iz as usize) * h + iy as usize) * w..][..w];
                        let ix0 = lo * sw + kx - pw;
                        for (o, v) in seg[lo..hi].iter().enumerate() {
                            dst[ix0 + o * sw] = dst[ix0 + o * sw] + *v;
                        }
                    }
                }
            }
        }
    }
}

/// [`col2im_add`] where the windows tile the input exactly (kernel = stride, no padding, input = output *
/// stride): every element of `dx` gets exactly one value, so it is written (no zeroed buffer to add
/// into), and each destination row is written in order, its kw source rows interleaved.
fn col2im_set<T: Elem>(col: &[T], g: &ConvGeom, r0: usize, r1: usize, dx: &SyncPtr<T>) {
    let [d, h, w] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [_, ho, wo] = g.output;
    let pt = (r1 - r0) * wo;
    for c in 0..g.ci {
        for kz in 0..kd {
            for ky in 0..kh {
                let row0 = ((c * kd + kz) * kh + ky) * kw;
                for (j, r) in (r0..r1).enumerate() {
                    let (iz, iy) = ((r / ho) * kd + kz, (r % ho) * kh + ky);
                    // SAFETY: (c, iz, iy) is one input row, written by this tile only (see the caller).
                    let dst = unsafe { dx.slice(((c * d + iz) * h + iy) * w, w) };
                    for kx in 0..kw {
                        let src = &col[(row0 + kx) * pt + j * wo..][..wo];
                        for (o, &v) in src.iter().enumerate() {
                            dst[o * kw + kx] = v;
                        }
                    }
                }
            }
        }
    }
}

/// y[n, co, out] = sum_{ci, k} w[co, ci, k] * x[n, ci, out * s + k - p]  (no bias).
pub fn conv3d_fwd<T: Elem>(x: &[T], w: &[T], g: &ConvGeom) -> Vec<T> {
    let (iv, ov, k) = (g.in_vol(), g.out_vol(), g.k());
    assert_eq!(x.len(), g.n * g.ci * iv);
    assert_eq!(w.len(), g.co * k);
    if !g.is_pointwise() && super::conv3d_s1::applies(g) {
        return super::conv3d_s1::fwd(x, w, g);
    }
    // Every tile writes all its output columns (no accumulation): no zeroing first.
    let mut y: Vec<T> = Vec::with_capacity(g.n * g.co * ov);
    let yp = SyncPtr(y.as_mut_ptr());
    let wo = g.output[2];
    // A 1x1x1 conv to few channels (UNETR's residual projections and head at 96^3) is memory-bound:
    // the positions-in-lanes kernel streams x once, where a GEMM would first pack it.
    let spatial = (g.is_pointwise() && spatial_avx512::preferred(g.co) && avx512())
        .then(|| as_f32(w).map(|w| spatial_avx512::pack_weights(w, g.co, g.ci, 1)))
        .flatten();
    g.tiles().par_iter().for_each(|&(n, r0, r1)| {
        let xs = &x[n * g.ci * iv..(n + 1) * g.ci * iv];
        let (c0, pt) = (r0 * wo, (r1 - r0) * wo);
        let a = Mat::rows(w.as_ptr(), k);
        // SAFETY (all): tile (n, r0..r1) owns columns c0..c0+pt of sample n's output rows.
        let dst = unsafe { yp.ptr().add(n * g.co * ov + c0) };
        if let Some(packed) = &spatial {
            const B: usize = spatial_avx512::COLS;
            let body = pt / B * B;
            // SAFETY: T is f32 (the weights were); the body reads and writes whole blocks in bounds.
            unsafe {
                spatial_avx512::tile(
                    xs[c0..].as_ptr() as *const f32,
                    iv,
                    g.ci,
                    &[0],
                    packed,
                    g.co,
                    body,
                    dst as *mut f32,
                    ov,
                    false,
                )
            };
            if body < pt {
                // The last partial block through a zero-padded copy, so nothing reads past x or writes past y.
                let tail = pt - body;
                with_scratch((g.ci + g.co) * B, |buf: &mut [T]| {
                    let (xb, yb) = buf.split_at_mut(g.ci * B);
                    for c in 0..g.ci {
                        xb[c * B..(c + 1) * B].fill(T::zero());
                        xb[c * B..][..tail].copy_from_slice(&xs[c * iv + c0 + body..][..tail]);
                    }
                    unsafe {
                        spatial_avx512::tile(
                            xb.as_ptr() as *const f32,
                            B,
                            g.ci,
                            &[0],
                            packed,
                            g.co,
                            B,
                            yb.as_mut_ptr() as *mut f32,
                            B,
                            false,
                        );
                        for o in 0..g.co {
                            std::ptr::copy_nonoverlapping(
                                yb[o * B..].as_ptr(),
                                dst.add(o * ov + body),
                                tail,
                            );
                        }
                    }
                });
            }
        } else if g.is_pointwise() {
            unsafe {
                matmul(
                    g.co,
                    pt,
                    k,
                    dst,
                    ov,
                    a,
                    Mat::rows(xs[c0..].as_ptr(), iv),
                    false,
                )
            }
        } else {
            with_scratch(k * pt, |col: &mut [T]| {
                im2col(xs, g, r0, r1, col);
                unsafe { matmul(g.co, pt, k, dst, ov, a, Mat::rows(col.as_ptr(), pt), false) }
            })
        }
    });
    // SAFETY: the tiles cover every output row of every sample and channel.
    unsafe { y.set_len(g.n * g.co * ov) };
    y
}

/// The forward of a "same" convolution (stride 1, odd kernel, padding (k - 1) / 2) written over its input,
/// for inference without an activation-sized output buffer. The input is the channel concatenation of `a`
/// and, with `side = (b, w_side)`, `b`; `a` receives conv(input, w) (so `g.co` is `a`'s channel count), and
/// `b` the 1x1x1 conv of the input by `w_side` [cb, ci]. Without `side`, `g.ci == g.co`.
pub fn conv3d_fwd_inplace<T: Elem>(
    a: &mut [T],
    side: Option<(&mut [T], &[T])>,
    w: &[T],
    g: &ConvGeom,
) {
    let iv = g.in_vol();
    assert!(
        super::conv3d_s1::in_place_ok(g),
        "conv3d_fwd_inplace: not a same-size stride-1 convolution: {g:?}"
    );
    assert_eq!(a.len(), g.n * g.co * iv);
    assert_eq!(w.len(), g.co * g.k());
    use super::conv3d_s1::{fwd_into, Part, Side};
    let pa = Part {
        ptr: a.as_ptr(),
        channels: g.co,
    };
    let ya = SyncPtr(a.as_mut_ptr());
    let per_slab = super::conv3d_s1::default_slab::<T>(g);
    match side {
        Some((b, ws)) => {
            let cb = b.len() / (g.n * iv);
            assert_eq!(b.len(), g.n * cb * iv);
            assert_eq!(g.ci, g.co + cb);
            assert_eq!(ws.len(), cb * g.ci);
            let parts = [
                pa,
                Part {
                    ptr: b.as_ptr(),
                    channels: cb,
                },
            ];
            let side = Side {
                w: ws,
                co: cb,
                y: SyncPtr(b.as_mut_ptr()),
            };
            // SAFETY: a and b are distinct buffers of the sizes checked above; the outputs overwrite them in
            // the way `fwd_into` allows for a same-size convolution (checked above).
            unsafe { fwd_into(&parts, w, g, Some(side), ya, per_slab) }
        }
        None => {
            assert_eq!(g.ci, g.co);
            // SAFETY: as above, with a alone.
            unsafe { fwd_into(&[pa], w, g, None, ya, per_slab) }
        }
    }
}

/// dw[co, ci, k] = sum over positions of dy[n, co, out] * x[n, ci, out * s + k - p].
pub fn conv3d_bwd_weight<T: Elem>(x: &[T], dy: &[T], g: &ConvGeom) -> Vec<T> {
    let (iv, ov, k) = (g.in_vol(), g.out_vol(), g.k());
    assert_eq!(x.len(), g.n * g.ci * iv);
    assert_eq!(dy.len(), g.n * g.co * ov);
    if !g.is_pointwise() && super::conv3d_s1::applies(g) {
        return super::conv3d_s1::bwd_weight(x, dy, g);
    }
    let tiles = g.tiles();
    let nt = threads().min(tiles.len()).max(1);
    let wo = g.output[2];
    // Static partition: thread t takes tiles t, t + nt, ... and the partial sums are added in order.
    let partials: Vec<Vec<T>> = (0..nt)
        .into_par_iter()
        .map(|t| {
            let mut dw = vec![T::zero(); g.co * k];
            for &(n, r0, r1) in tiles.iter().skip(t).step_by(nt) {
                let xs = &x[n * g.ci * iv..(n + 1) * g.ci * iv];
                let (c0, pt) = (r0 * wo, (r1 - r0) * wo);
                let a = Mat::rows(dy[n * g.co * ov + c0..].as_ptr(), ov);
                if g.is_pointwise() {
                    unsafe {
                        matmul(
                            g.co,
                            k,
                            pt,
                            dw.as_mut_ptr(),
                            k,
                            a,
                            Mat::t(xs[c0..].as_ptr(), iv),
                            true,
                        )
                    }
                } else {
                    with_scratch(k * pt, |col: &mut [T]| {
                        im2col(xs, g, r0, r1, col);
                        unsafe {
                            matmul(
                                g.co,
                                k,
                                pt,
                                dw.as_mut_ptr(),
                                k,
                                a,
                                Mat::t(col.as_ptr(), pt),
                                true,
                            )
                        }
                    })
                }
            }
            dw
        })
        .collect();
    let mut it = partials.into_iter();
    let mut dw = it.next().unwrap_or_else(|| vec![T::zero(); g.co * k]);
    for p in it {
        dw.iter_mut().zip(p).for_each(|(a, b)| *a = *a + b);
    }
    dw
}

/// Weight [co, ci, k] -> [ci, co, flipped k]: the kernel of the adjoint of a stride-1 convolution.
fn flip_transpose<T: Elem>(w: &[T], co: usize, ci: usize, kvol: usize) -> Vec<T> {
    let mut out = vec![T::zero(); w.len()];
    for o in 0..co {
        for i in 0..ci {
            for kk in 0..kvol {
                out[(i * co + o) * kvol + (kvol - 1 - kk)] = w[(o * ci + i) * kvol + kk];
            }
        }
    }
    out
}

/// dx = the adjoint of the convolution applied to dy (also the forward of a transposed convolution).
pub fn conv3d_bwd_input<T: Elem>(dy: &[T], w: &[T], g: &ConvGeom) -> Vec<T> {
    let (iv, ov, k) = (g.in_vol(), g.out_vol(), g.k());
    assert_eq!(dy.len(), g.n * g.co * ov);
    assert_eq!(w.len(), g.co * k);
    let fits = (0..3).all(|i| g.padding[i] < g.kernel[i]);
    if g.stride == [1; 3] && fits {
        // Stride 1: the adjoint is a convolution with the flipped, transposed kernel, a gather that
        // parallelises over tiles without write conflicts.
        let wt = flip_transpose(w, g.co, g.ci, g.kvol());
        let pad = [0, 1, 2].map(|i| g.kernel[i] - 1 - g.padding[i]);
        let ga = ConvGeom {
            ci: g.co,
            co: g.ci,
            input: g.output,
            output: g.input,
            padding: pad,
            ..*g
        };
        return conv3d_fwd(dy, &wt, &ga);
    }
    // Windows that tile the input exactly (UNETR's k2 s2 up-sampling): each value is written once.
    let exact = (0..3).all(|i| g.kernel[i] == g.stride[i] && g.padding[i] == 0 && g.input[i] == g.output[i] * g.stride[i]);
    let mut dx: Vec<T> = if exact { Vec::with_capacity(g.n * g.ci * iv) } else { zeros_written(g.n * g.ci * iv) };
    let dxp = SyncPtr(dx.as_mut_ptr());
    let wo = g.output[2];
    let wt = Mat::t(w.as_ptr(), k);
    let tile = |(n, r0, r1): (usize, usize, usize)| {
        let (c0, pt) = (r0 * wo, (r1 - r0) * wo);
        with_scratch(k * pt, |col: &mut [T]| {
            let b = Mat::rows(dy[n * g.co * ov + c0..].as_ptr(), ov);
            unsafe { matmul(k, pt, g.co, col.as_mut_ptr(), pt, wt, b, false) };
            if exact {
                col2im_set(col, g, r0, r1, &SyncPtr(unsafe { dxp.ptr().add(n * g.ci * iv) }));
                return;
            }
            // SAFETY: see the two call sites: no other thread writes the part of sample n this tile touches.
            let dxs = unsafe { dxp.slice(n * g.ci * iv, g.ci * iv) };
            col2im_add(col, g, r0, r1, dxs);
        })
    };
    if (0..3).all(|i| g.kernel[i] <= g.stride[i]) {
        // Non-overlapping windows (UNETR's k2 s2 up-sampling, patch embeddings): tiles touch disjoint inputs.
        g.tiles().into_par_iter().for_each(tile);
    } else {
        // Overlapping strided windows: samples in parallel, tiles of a sample in order.
        let tiles = g.tiles();
        (0..g.n)
            .into_par_iter()
            .for_each(|n| tiles.iter().filter(|t| t.0 == n).for_each(|&t| tile(t)));
    }
    if exact {
        // SAFETY: the tiles cover every output row of every sample, and with exact windows every
        // element of dx (col2im_set).
        unsafe { dx.set_len(g.n * g.ci * iv) };
    }
    dx
}
