//! Element-wise and row-wise activations: LeakyReLU, softmax over the last axis (rows in parallel).
//! Their backward passes are composed of candle ops in `crate::activation`.

use super::{of_f64, Elem};
use num_traits::Float;
use rayon::prelude::*;

fn min_rows(d: usize) -> usize {
    (16384 / d.max(1)).max(1)
}

pub fn softmax_fwd<T: Elem>(x: &[T], d: usize) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    if d == 0 {
        return y;
    }
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .with_min_len(min_rows(d))
        .for_each(|(yr, xr)| {
            let m = xr.iter().fold(T::neg_infinity(), |a, &b| Float::max(a, b));
            let mut s = T::zero();
            for (yv, &xv) in yr.iter_mut().zip(xr) {
                *yv = (xv - m).exp();
                s = s + *yv;
            }
            let inv = T::one() / s;
            yr.iter_mut().for_each(|v| *v = *v * inv);
        });
    y
}

pub fn leaky_relu_fwd<T: Elem>(x: &[T], slope: f64) -> Vec<T> {
    let s = of_f64::<T>(slope);
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(1 << 16)
        .zip(x.par_chunks(1 << 16))
        .for_each(|(yc, xc)| {
            for (o, &v) in yc.iter_mut().zip(xc) {
                *o = if v > T::zero() { v } else { v * s };
            }
        });
    y
}
