//! Normalisation over groups of elements, the one kernel behind instance norm, batch norm and layer norm.
//!
//! The data is viewed as [segs, groups, len]: group g is the `segs` segments at offsets
//! (j * groups + g) * len. Instance norm on [N, C, S]: groups = N*C, segs = 1. Batch norm on
//! [N, C, S]: groups = C, segs = N. Layer norm on [R, D]: groups = R, segs = 1, len = D.
//! Statistics are accumulated in f64 (two passes), so f32 results match PyTorch to rounding.

use super::{f64_of, of_f64, Elem, SyncPtr};
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

fn stats<T: Elem>(x: &[T], gs: &Groups, g: usize) -> (f64, f64) {
    let n = gs.count() as f64;
    let mut sum = 0f64;
    for o in gs.offsets(g) {
        sum += x[o..o + gs.len].iter().map(|&v| f64_of(v)).sum::<f64>();
    }
    let mean = sum / n;
    let mut sq = 0f64;
    for o in gs.offsets(g) {
        sq += x[o..o + gs.len].iter().map(|&v| (f64_of(v) - mean).powi(2)).sum::<f64>();
    }
    (mean, sq / n)
}

/// Per-group mean and biased variance.
pub fn group_stats<T: Elem>(x: &[T], gs: &Groups) -> Vec<(f64, f64)> {
    (0..gs.groups).into_par_iter().with_min_len(gs.min_len()).map(|g| stats(x, gs, g)).collect()
}

#[inline]
fn leaky<T: Elem>(v: T, slope: Option<T>) -> T {
    match slope {
        Some(s) if v < T::zero() => v * s,
        _ => v,
    }
}

/// y = act((x - mean) / sqrt(var + eps)), with act = LeakyReLU(slope) or identity.
/// `stats` gives the statistics to use (batch norm in eval mode); `None` computes them per group.
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
    let mut y = vec![T::zero(); x.len()];
    let yp = SyncPtr(y.as_mut_ptr());
    let slope = slope.map(of_f64::<T>);
    (0..gs.groups).into_par_iter().with_min_len(gs.min_len()).for_each(|g| {
        let (mean, var) = st[g];
        let rstd = of_f64::<T>(1.0 / (var + eps).sqrt());
        let mean = of_f64::<T>(mean);
        for o in gs.offsets(g) {
            // SAFETY: segments of different groups are disjoint.
            let ys = unsafe { yp.slice(o, gs.len) };
            for (yv, &xv) in ys.iter_mut().zip(&x[o..o + gs.len]) {
                *yv = leaky((xv - mean) * rstd, slope);
            }
        }
    });
    (y, st)
}

/// Gradient of [`norm_fwd`] (statistics computed from x) with respect to x.
pub fn norm_bwd<T: Elem>(x: &[T], dy: &[T], gs: &Groups, eps: f64, slope: Option<f64>) -> Vec<T> {
    let mut dx = vec![T::zero(); x.len()];
    let dxp = SyncPtr(dx.as_mut_ptr());
    (0..gs.groups).into_par_iter().with_min_len(gs.min_len()).for_each(|g| {
        let (mean, var) = stats(x, gs, g);
        let rstd = 1.0 / (var + eps).sqrt();
        let n = gs.count() as f64;
        // dxhat = dy * act'(xhat); dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
        let (mut s1, mut s2) = (0f64, 0f64);
        for o in gs.offsets(g) {
            for (&xv, &dv) in x[o..o + gs.len].iter().zip(&dy[o..o + gs.len]) {
                let xh = (f64_of(xv) - mean) * rstd;
                let d = match slope {
                    Some(s) if xh < 0.0 => f64_of(dv) * s,
                    _ => f64_of(dv),
                };
                s1 += d;
                s2 += d * xh;
            }
        }
        let (m1, m2) = (s1 / n, s2 / n);
        for o in gs.offsets(g) {
            let dxs = unsafe { dxp.slice(o, gs.len) };
            for ((dxv, &xv), &dv) in dxs.iter_mut().zip(&x[o..o + gs.len]).zip(&dy[o..o + gs.len]) {
                let xh = (f64_of(xv) - mean) * rstd;
                let d = match slope {
                    Some(s) if xh < 0.0 => f64_of(dv) * s,
                    _ => f64_of(dv),
                };
                *dxv = of_f64::<T>(rstd * (d - m1 - xh * m2));
            }
        }
    });
    dx
}
