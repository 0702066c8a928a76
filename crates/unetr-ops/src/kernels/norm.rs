//! Normalisation over groups of elements, the one kernel behind instance norm, batch norm and layer norm.
//!
//! The data is viewed as [segs, groups, len]: group g is the `segs` segments at offsets
//! (j * groups + g) * len. Instance norm on [N, C, S]: groups = N*C, segs = 1. Batch norm on
//! [N, C, S]: groups = C, segs = N. Layer norm on [R, D]: groups = R, segs = 1, len = D.
//!
//! Sums run in 16 SIMD lanes of T over chunks of 1024 values, shifted by the group's first value
//! (so `E[x^2] - E[x]^2` does not cancel), and the chunk sums are added in f64: one pass for the
//! statistics and one for the output, at f32 accuracy comparable to PyTorch's.

use super::{f64_of, multiversion, of_f64, Elem, SyncPtr};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub struct Groups {
    pub groups: usize,
    pub segs: usize,
    pub len: usize,
}

impl Groups {
    fn offsets(&self, g: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.segs).map(move |j| (j * self.groups + g) * self.len)
    }
    fn count(&self) -> usize {
        self.segs * self.len
    }
    /// Groups per rayon task: small groups (layer norm rows) are batched to amortise scheduling.
    fn min_len(&self) -> usize {
        (16384 / self.count().max(1)).max(1)
    }
}

const LANES: usize = 16;
const CHUNK: usize = 1024;

/// (sum(x - k), sum((x - k)^2)) of a slice.
#[inline(always)]
fn shifted_sums_imp<T: Elem>(x: &[T], k: T) -> (f64, f64) {
    let (mut s, mut q) = (0f64, 0f64);
    for chunk in x.chunks(CHUNK) {
        let (mut a, mut b) = ([T::zero(); LANES], [T::zero(); LANES]);
        let mut it = chunk.chunks_exact(LANES);
        for c in &mut it {
            for l in 0..LANES {
                let d = c[l] - k;
                a[l] = a[l] + d;
                b[l] = b[l] + d * d;
            }
        }
        for &v in it.remainder() {
            let d = v - k;
            a[0] = a[0] + d;
            b[0] = b[0] + d * d;
        }
        s += a.iter().map(|&v| f64_of(v)).sum::<f64>();
        q += b.iter().map(|&v| f64_of(v)).sum::<f64>();
    }
    (s, q)
}
multiversion!(fn shifted_sums<T: Elem>(x: &[T], k: T) -> (f64, f64) => shifted_sums_imp);

fn stats<T: Elem>(x: &[T], gs: &Groups, g: usize) -> (f64, f64) {
    let n = gs.count() as f64;
    let first = gs.offsets(g).next().map(|o| x[o]).unwrap_or(T::zero());
    let (mut s, mut q) = (0f64, 0f64);
    for o in gs.offsets(g) {
        let (a, b) = shifted_sums(&x[o..o + gs.len], first);
        s += a;
        q += b;
    }
    let ms = s / n;
    (f64_of(first) + ms, (q / n - ms * ms).max(0.0))
}

/// Per-group mean and biased variance.
pub fn group_stats<T: Elem>(x: &[T], gs: &Groups) -> Vec<(f64, f64)> {
    (0..gs.groups)
        .into_par_iter()
        .with_min_len(gs.min_len())
        .map(|g| stats(x, gs, g))
        .collect()
}

#[inline(always)]
fn normalize_imp<T: Elem>(x: &[T], y: &mut [T], mean: T, rstd: T, slope: T, act: bool) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        let v = (xv - mean) * rstd;
        *yv = if act && v < T::zero() { v * slope } else { v };
    }
}
multiversion!(fn normalize<T: Elem>(x: &[T], y: &mut [T], mean: T, rstd: T, slope: T, act: bool) -> () => normalize_imp);

/// y = act((x - mean) / sqrt(var + eps)), with act = LeakyReLU(slope) or identity.
/// `given` gives the statistics to use (batch norm in eval mode); `None` computes them per group.
/// Returns y and the statistics used.
pub fn norm_fwd<T: Elem>(
    x: &[T],
    gs: &Groups,
    eps: f64,
    slope: Option<f64>,
    given: Option<&[(f64, f64)]>,
) -> (Vec<T>, Vec<(f64, f64)>) {
    let st = match given {
        Some(s) => s.to_vec(),
        None => group_stats(x, gs),
    };
    let mut y = Vec::with_capacity(x.len());
    let yp = SyncPtr(y.as_mut_ptr());
    let (act, sl) = (slope.is_some(), of_f64::<T>(slope.unwrap_or(1.0)));
    (0..gs.groups)
        .into_par_iter()
        .with_min_len(gs.min_len())
        .for_each(|g| {
            let (mean, var) = st[g];
            let rstd = of_f64::<T>(1.0 / (var + eps).sqrt());
            for o in gs.offsets(g) {
                // SAFETY: segments of different groups are disjoint, and together cover y.
                let ys = unsafe { yp.slice(o, gs.len) };
                normalize(&x[o..o + gs.len], ys, of_f64::<T>(mean), rstd, sl, act);
            }
        });
    // SAFETY: every element was written above.
    unsafe { y.set_len(x.len()) };
    (y, st)
}

#[inline(always)]
fn normalize_inplace_imp<T: Elem>(y: &mut [T], mean: T, rstd: T, slope: T, act: bool) {
    for v in y.iter_mut() {
        let t = (*v - mean) * rstd;
        *v = if act && t < T::zero() { t * slope } else { t };
    }
}
multiversion!(fn normalize_inplace<T: Elem>(y: &mut [T], mean: T, rstd: T, slope: T, act: bool) -> () => normalize_inplace_imp);

/// [`norm_fwd`] with statistics from `x`, overwriting `x` (inference: no second buffer).
pub fn norm_fwd_inplace<T: Elem>(x: &mut [T], gs: &Groups, eps: f64, slope: Option<f64>) {
    let st = group_stats(x, gs);
    let xp = SyncPtr(x.as_mut_ptr());
    let (act, sl) = (slope.is_some(), of_f64::<T>(slope.unwrap_or(1.0)));
    (0..gs.groups)
        .into_par_iter()
        .with_min_len(gs.min_len())
        .for_each(|g| {
            let (mean, var) = st[g];
            let rstd = of_f64::<T>(1.0 / (var + eps).sqrt());
            for o in gs.offsets(g) {
                // SAFETY: segments of different groups are disjoint.
                normalize_inplace(
                    unsafe { xp.slice(o, gs.len) },
                    of_f64::<T>(mean),
                    rstd,
                    sl,
                    act,
                );
            }
        });
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn norm_add_lrelu_imp<T: Elem>(
    a: &mut [T],
    b: &[T],
    ma: T,
    ra: T,
    mb: T,
    rb: T,
    norm_b: bool,
    slope: T,
) {
    for (x, &y) in a.iter_mut().zip(b) {
        let r = if norm_b { (y - mb) * rb } else { y };
        let v = (*x - ma) * ra + r;
        *x = if v > T::zero() { v } else { v * slope };
    }
}
multiversion!(#[allow(clippy::too_many_arguments)] fn norm_add_lrelu<T: Elem>(a: &mut [T], b: &[T], ma: T, ra: T, mb: T, rb: T, norm_b: bool, slope: T) -> () => norm_add_lrelu_imp);

/// a = LeakyReLU(norm(a) + (norm_b ? norm(b) : b)) in place, both normalised per group of `gs` with their
/// own statistics: UnetResBlock's end (norm2, norm3 of the residual, the join and its activation) in one
/// pass over a and b after their statistics, instead of three in-place passes. The same arithmetic as the
/// separate ops, so the same values.
pub fn norm_add_leaky_relu_inplace<T: Elem>(
    a: &mut [T],
    b: &[T],
    gs: &Groups,
    eps: f64,
    norm_b: bool,
    slope: f64,
) {
    let sa = group_stats(a, gs);
    // (without norm_b, b is added as is: mean 0 and a variance that makes rstd 1, unused)
    let sb = if norm_b {
        group_stats(b, gs)
    } else {
        vec![(0.0, 1.0 - eps); gs.groups]
    };
    let ap = SyncPtr(a.as_mut_ptr());
    let sl = of_f64::<T>(slope);
    (0..gs.groups)
        .into_par_iter()
        .with_min_len(gs.min_len())
        .for_each(|g| {
            let ((ma, va), (mb, vb)) = (sa[g], sb[g]);
            let (ra, rb) = (
                of_f64::<T>(1.0 / (va + eps).sqrt()),
                of_f64::<T>(1.0 / (vb + eps).sqrt()),
            );
            for o in gs.offsets(g) {
                // SAFETY: segments of different groups are disjoint.
                let x = unsafe { ap.slice(o, gs.len) };
                norm_add_lrelu(
                    x,
                    &b[o..o + gs.len],
                    of_f64(ma),
                    ra,
                    of_f64(mb),
                    rb,
                    norm_b,
                    sl,
                );
            }
        });
}

/// `a = LeakyReLU(norm(a) + norm(w[c] x))` in place, instance norms: `a` is `[n, co, vol]` (one group per
/// sample and channel), `x` `[n, 1, vol]` and `w` `[co]`. UnetResBlock's end when its residual projection is
/// a 1x1x1 conv from a single input channel (UNETR's encoder1 on single-channel images): norm(w_c x) =
/// w_c (x - mean_x) / sqrt(w_c^2 var_x + eps) follows from x's own statistics, so the projection (an
/// activation-sized tensor) is never made. Equal to projecting and normalising, up to rounding.
pub fn norm_add_proj1_leaky_relu_inplace<T: Elem>(
    a: &mut [T],
    x: &[T],
    w: &[T],
    n: usize,
    eps: f64,
    slope: f64,
) {
    let co = w.len();
    let vol = x.len() / n.max(1);
    assert_eq!(a.len(), n * co * vol);
    let gx = Groups {
        groups: n,
        segs: 1,
        len: vol,
    };
    let sx = group_stats(x, &gx);
    let ga = Groups {
        groups: n * co,
        segs: 1,
        len: vol,
    };
    let sa = group_stats(a, &ga);
    let sl = of_f64::<T>(slope);
    a.par_chunks_mut(vol.max(1))
        .enumerate()
        .for_each(|(g, row)| {
            let (s, c) = (g / co, g % co);
            let ((ma, va), (mx, vx)) = (sa[g], sx[s]);
            let wc = f64_of(w[c]);
            norm_add_lrelu(
                row,
                &x[s * vol..(s + 1) * vol],
                of_f64(ma),
                of_f64(1.0 / (va + eps).sqrt()),
                of_f64(mx),
                of_f64(wc / (wc * wc * vx + eps).sqrt()),
                true,
                sl,
            );
        });
}

/// (sum(d), sum(d * xhat)) with d = dy * act'(xhat), xhat = (x - mean) * rstd.
#[inline(always)]
fn bwd_sums_imp<T: Elem>(x: &[T], dy: &[T], mean: T, rstd: T, slope: T, act: bool) -> (f64, f64) {
    let (mut s1, mut s2) = (0f64, 0f64);
    for (xc, dc) in x.chunks(CHUNK).zip(dy.chunks(CHUNK)) {
        let (mut a, mut b) = ([T::zero(); LANES], [T::zero(); LANES]);
        for (i, (&xv, &dv)) in xc.iter().zip(dc).enumerate() {
            let l = i % LANES;
            let xh = (xv - mean) * rstd;
            let d = if act && xh < T::zero() {
                dv * slope
            } else {
                dv
            };
            a[l] = a[l] + d;
            b[l] = b[l] + d * xh;
        }
        s1 += a.iter().map(|&v| f64_of(v)).sum::<f64>();
        s2 += b.iter().map(|&v| f64_of(v)).sum::<f64>();
    }
    (s1, s2)
}
multiversion!(fn bwd_sums<T: Elem>(x: &[T], dy: &[T], mean: T, rstd: T, slope: T, act: bool) -> (f64, f64) => bwd_sums_imp);

/// dx[i] = rstd * (d - m1 - xhat * m2) with d = dy[i] (times slope where xhat < 0 under the activation),
/// reading dy through `dy` and writing through `dx`, which may be the same memory (each element is read
/// before it is written).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bwd_apply_imp<T: Elem>(x: &[T], dy: *const T, dx: *mut T, mean: T, rstd: T, slope: T, act: bool, m1: T, m2: T) {
    for (i, &xv) in x.iter().enumerate() {
        let xh = (xv - mean) * rstd;
        // SAFETY: the caller passes dy and dx valid for x.len() elements.
        let dv = unsafe { dy.add(i).read() };
        let d = if act && xh < T::zero() { dv * slope } else { dv };
        unsafe { dx.add(i).write(rstd * (d - m1 - xh * m2)) };
    }
}
multiversion!(#[allow(clippy::too_many_arguments)] fn bwd_apply<T: Elem>(x: &[T], dy: *const T, dx: *mut T, mean: T, rstd: T, slope: T, act: bool, m1: T, m2: T) -> () => bwd_apply_imp);

/// Gradient of [`norm_fwd`] (statistics computed from x) with respect to x.
pub fn norm_bwd<T: Elem>(x: &[T], dy: &[T], gs: &Groups, eps: f64, slope: Option<f64>) -> Vec<T> {
    assert_eq!(x.len(), dy.len());
    let mut dx = Vec::with_capacity(x.len());
    // SAFETY: dy and dx hold x.len() elements; dx is a separate buffer.
    unsafe { norm_bwd_raw(x, SyncPtr(dy.as_ptr() as *mut T), SyncPtr(dx.as_mut_ptr()), gs, eps, slope) };
    // SAFETY: every element was written above.
    unsafe { dx.set_len(x.len()) };
    dx
}

/// [`norm_bwd`] written over `dy`: each group's sums are taken before its gradient overwrites it.
pub fn norm_bwd_inplace<T: Elem>(x: &[T], dy: &mut [T], gs: &Groups, eps: f64, slope: Option<f64>) {
    assert_eq!(x.len(), dy.len());
    let p = SyncPtr(dy.as_mut_ptr());
    // SAFETY: dy holds x.len() elements; reading and writing the same element is what bwd_apply allows.
    unsafe { norm_bwd_raw(x, p, p, gs, eps, slope) };
}

/// # Safety
/// `dy` and `dx` point at x.len() elements each; they are the same memory or do not overlap.
unsafe fn norm_bwd_raw<T: Elem>(x: &[T], dy: SyncPtr<T>, dx: SyncPtr<T>, gs: &Groups, eps: f64, slope: Option<f64>) {
    let (act, sl) = (slope.is_some(), of_f64::<T>(slope.unwrap_or(1.0)));
    (0..gs.groups)
        .into_par_iter()
        .with_min_len(gs.min_len())
        .for_each(|g| {
            let (mean, var) = stats(x, gs, g);
            let rstd = 1.0 / (var + eps).sqrt();
            let (mt, rt) = (of_f64::<T>(mean), of_f64::<T>(rstd));
            // dx = rstd * (d - mean(d) - xhat * mean(d * xhat)).
            let (mut s1, mut s2) = (0f64, 0f64);
            for o in gs.offsets(g) {
                // SAFETY: group g's segments are read here and written below by this task only.
                let dys = unsafe { std::slice::from_raw_parts(dy.ptr().add(o), gs.len) };
                let (a, b) = bwd_sums(&x[o..o + gs.len], dys, mt, rt, sl, act);
                s1 += a;
                s2 += b;
            }
            let n = gs.count() as f64;
            let (m1, m2) = (of_f64::<T>(s1 / n), of_f64::<T>(s2 / n));
            for o in gs.offsets(g) {
                // SAFETY: segments of different groups are disjoint, and together cover dx.
                bwd_apply(&x[o..o + gs.len], unsafe { dy.ptr().add(o) }, unsafe { dx.ptr().add(o) }, mt, rt, sl, act, m1, m2);
            }
        });
}
