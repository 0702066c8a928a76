//! Element-wise and row-wise activations: LeakyReLU (alone and after a residual add), exact GELU with its
//! derivative, softmax over the last axis. Element-wise loops are multiversioned (AVX-512 when present) and
//! write straight into uninitialised output, so each op is one pass over memory.

use super::{multiversion, of_f64, Elem};
use rayon::prelude::*;
use std::mem::MaybeUninit;

fn min_rows(d: usize) -> usize {
    (16384 / d.max(1)).max(1)
}

const CHUNK: usize = 1 << 15;

/// out[i] = f(inputs at i), in parallel chunks; `f` fills one chunk of the output from the same chunk
/// of each input.
fn map_chunks<T: Elem>(n: usize, f: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync) -> Vec<T> {
    let mut y: Vec<T> = Vec::with_capacity(n);
    y.spare_capacity_mut().par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| f(i * CHUNK, c));
    // SAFETY: every chunk was written by `f` (all callers write each element of their chunk).
    unsafe { y.set_len(n) };
    y
}

#[inline(always)]
fn softmax_row_imp<T: Elem>(r: &mut [T]) {
    // Reductions in 16 independent lanes: a single running max/sum is a serial dependency chain that
    // the compiler may not reorder (strict float semantics), so it would not vectorise.
    const L: usize = 16;
    let mut mx = [T::neg_infinity(); L];
    let mut it = r.chunks_exact(L);
    for c in &mut it {
        for l in 0..L {
            mx[l] = if c[l] > mx[l] { c[l] } else { mx[l] };
        }
    }
    // (a NaN in the row is skipped here but still turns every output NaN through the sum below)
    let m = it.remainder().iter().chain(&mx).fold(T::neg_infinity(), |a, &b| if b > a { b } else { a });
    r.iter_mut().for_each(|v| *v = (*v - m).exp_v());
    let mut sum = [T::zero(); L];
    let mut it = r.chunks_exact(L);
    for c in &mut it {
        for l in 0..L {
            sum[l] = sum[l] + c[l];
        }
    }
    let s = it.remainder().iter().chain(&sum).fold(T::zero(), |a, &b| a + b);
    let inv = T::one() / s;
    r.iter_mut().for_each(|v| *v = *v * inv);
}
multiversion!(
    /// Softmax of one row, in place.
    pub(crate) fn softmax_row<T: Elem>(r: &mut [T]) -> () => softmax_row_imp
);

pub fn softmax_fwd<T: Elem>(x: &[T], d: usize) -> Vec<T> {
    let mut y = x.to_vec();
    if d == 0 {
        return y;
    }
    y.par_chunks_mut(d).with_min_len(min_rows(d)).for_each(softmax_row);
    y
}

#[inline(always)]
fn leaky_imp<T: Elem>(x: &[T], r: Option<&[T]>, y: &mut [MaybeUninit<T>], s: T) {
    match r {
        None => {
            for (o, &v) in y.iter_mut().zip(x) {
                o.write(if v > T::zero() { v } else { v * s });
            }
        }
        Some(r) => {
            for ((o, &a), &b) in y.iter_mut().zip(x).zip(r) {
                let v = a + b;
                o.write(if v > T::zero() { v } else { v * s });
            }
        }
    }
}
multiversion!(fn leaky<T: Elem>(x: &[T], r: Option<&[T]>, y: &mut [MaybeUninit<T>], s: T) -> () => leaky_imp);

/// LeakyReLU(x), or LeakyReLU(x + residual) in the same pass.
pub fn leaky_relu_fwd<T: Elem>(x: &[T], residual: Option<&[T]>, slope: f64) -> Vec<T> {
    let s = of_f64::<T>(slope);
    map_chunks(x.len(), |o, c| leaky(&x[o..o + c.len()], residual.map(|r| &r[o..o + c.len()]), c, s))
}

/// a + b.
pub fn add_fwd<T: Elem>(a: &[T], b: &[T]) -> Vec<T> {
    #[inline(always)]
    fn imp<T: Elem>(a: &[T], b: &[T], y: &mut [MaybeUninit<T>]) {
        for ((o, &x), &r) in y.iter_mut().zip(a).zip(b) {
            o.write(x + r);
        }
    }
    multiversion!(fn run<T: Elem>(a: &[T], b: &[T], y: &mut [MaybeUninit<T>]) -> () => imp);
    map_chunks(a.len(), |o, c| run(&a[o..o + c.len()], &b[o..o + c.len()], c))
}

/// An element-wise update of `a` from `b` in place.
#[derive(Clone, Copy, Debug)]
pub enum Update {
    /// a = LeakyReLU(a + b) with this slope.
    AddLeakyRelu(f64),
    /// a = a + b.
    Add,
    /// a = the gradient of LeakyReLU (this slope) from its output a and the output's gradient b:
    /// b where a > 0, else b * slope.
    LeakyReluBackwardFromOutput(f64),
}

/// `a = u(a, b)` in place, in parallel chunks.
pub fn update_inplace<T: Elem>(a: &mut [T], b: &[T], u: Update) {
    #[inline(always)]
    fn imp<T: Elem>(a: &mut [T], b: &[T], u: Update) {
        // One loop per kind, so each is a plain vectorisable loop.
        match u {
            Update::AddLeakyRelu(slope) => {
                let s = of_f64::<T>(slope);
                for (x, &y) in a.iter_mut().zip(b) {
                    let v = *x + y;
                    *x = if v > T::zero() { v } else { v * s };
                }
            }
            Update::Add => {
                for (x, &y) in a.iter_mut().zip(b) {
                    *x = *x + y;
                }
            }
            Update::LeakyReluBackwardFromOutput(slope) => {
                let s = of_f64::<T>(slope);
                for (x, &y) in a.iter_mut().zip(b) {
                    *x = if *x > T::zero() { y } else { y * s };
                }
            }
        }
    }
    multiversion!(fn run<T: Elem>(a: &mut [T], b: &[T], u: Update) -> () => imp);
    a.par_chunks_mut(CHUNK).zip(b.par_chunks(CHUNK)).for_each(|(x, y)| run(x, y, u));
}

/// Gradient of LeakyReLU(a + b) w.r.t. either input: dy where a + b > 0, else slope * dy (PyTorch's
/// convention at 0).
pub fn add_leaky_relu_bwd<T: Elem>(a: &[T], b: &[T], dy: &[T], slope: f64) -> Vec<T> {
    let s = of_f64::<T>(slope);
    #[inline(always)]
    fn imp<T: Elem>(a: &[T], b: &[T], dy: &[T], y: &mut [MaybeUninit<T>], s: T) {
        for (((o, &a), &b), &g) in y.iter_mut().zip(a).zip(b).zip(dy) {
            o.write(if a + b > T::zero() { g } else { g * s });
        }
    }
    multiversion!(fn run<T: Elem>(a: &[T], b: &[T], dy: &[T], y: &mut [MaybeUninit<T>], s: T) -> () => imp);
    map_chunks(a.len(), |o, c| {
        let r = o..o + c.len();
        run(&a[r.clone()], &b[r.clone()], &dy[r], c, s)
    })
}

#[inline(always)]
fn gelu_imp<T: Elem>(x: &[T], y: &mut [MaybeUninit<T>]) {
    let (half, r2) = (of_f64::<T>(0.5), of_f64::<T>(std::f64::consts::FRAC_1_SQRT_2));
    for (o, &v) in y.iter_mut().zip(x) {
        o.write(half * v * (T::one() + (v * r2).erf_v()));
    }
}
multiversion!(fn gelu<T: Elem>(x: &[T], y: &mut [MaybeUninit<T>]) -> () => gelu_imp);

/// GELU(x) = x * Phi(x) = x/2 (1 + erf(x / sqrt 2)) (PyTorch's `approximate="none"`).
pub fn gelu_fwd<T: Elem>(x: &[T]) -> Vec<T> {
    map_chunks(x.len(), |o, c| gelu(&x[o..o + c.len()], c))
}

#[inline(always)]
fn gelu_bwd_imp<T: Elem>(x: &[T], dy: &[T], y: &mut [MaybeUninit<T>]) {
    let (half, r2) = (of_f64::<T>(0.5), of_f64::<T>(std::f64::consts::FRAC_1_SQRT_2));
    let inv_sqrt_2pi = of_f64::<T>(0.398_942_280_401_432_7);
    for ((o, &v), &g) in y.iter_mut().zip(x).zip(dy) {
        // d/dx x Phi(x) = Phi(x) + x phi(x)
        let cdf = half * (T::one() + (v * r2).erf_v());
        let pdf = inv_sqrt_2pi * (-half * v * v).exp_v();
        o.write(g * (cdf + v * pdf));
    }
}
multiversion!(fn gelu_bwd_v<T: Elem>(x: &[T], dy: &[T], y: &mut [MaybeUninit<T>]) -> () => gelu_bwd_imp);

/// dx of GELU given x and dy.
pub fn gelu_bwd<T: Elem>(x: &[T], dy: &[T]) -> Vec<T> {
    map_chunks(x.len(), |o, c| {
        let r = o..o + c.len();
        gelu_bwd_v(&x[r.clone()], &dy[r], c)
    })
}
