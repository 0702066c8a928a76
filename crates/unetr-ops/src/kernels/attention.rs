//! Multi-head attention on the CPU in one op: per (batch, head), S = scale Q K^T into a per-thread buffer,
//! softmax in place, O = S V. Q, K and V are read through their strides (the ViT's head split is a view of
//! the qkv projection), so nothing is copied and the L x Lk scores never leave the thread's cache.

use super::activation::softmax_row;
use super::{matmul, matmul_scaled, with_scratch, Elem, Mat, SyncPtr};
use rayon::prelude::*;

/// A rank-4 [B, H, L, Dh] operand inside its storage: element (b, h, i, d) at
/// `offset + b s[0] + h s[1] + i s[2] + d s[3]`.
#[derive(Clone, Copy, Debug)]
pub struct Strided {
    pub offset: usize,
    pub s: [usize; 4],
}

impl Strided {
    fn at<T>(&self, base: &[T], b: usize, h: usize) -> *const T {
        // SAFETY (of the callers' reads): the layout came from candle for this storage, so every
        // (b, h, i, d) in the shape is in bounds.
        base[self.offset + b * self.s[0] + h * self.s[1]..].as_ptr()
    }
}

/// softmax(scale q k^T) v for q [B, H, L, Dh], k and v [B, H, Lk, Dh] -> contiguous [B, H, L, Dh].
#[allow(clippy::too_many_arguments)]
pub fn attention_fwd<T: Elem>(
    q: &[T],
    k: &[T],
    v: &[T],
    (qs, ks, vs): (Strided, Strided, Strided),
    [b, h, l, lk, dh]: [usize; 5],
    scale: T,
) -> Vec<T> {
    let mut o: Vec<T> = Vec::with_capacity(b * h * l * dh);
    let op = SyncPtr(o.as_mut_ptr());
    (0..b * h).into_par_iter().for_each(|bh| {
        let (bi, hi) = (bh / h, bh % h);
        let (qp, kp, vp) = (qs.at(q, bi, hi), ks.at(k, bi, hi), vs.at(v, bi, hi));
        with_scratch(l * lk, |s: &mut [T]| {
            // SAFETY: views within the operands (see `Strided::at`); each task writes its own output block
            // [bh * l * dh, (bh + 1) * l * dh), and the scratch buffer is this thread's.
            unsafe {
                let qm = Mat { ptr: qp, rs: qs.s[2] as isize, cs: qs.s[3] as isize };
                // K^T: element (d, j) of K^T is K[j, d]
                let kt = Mat { ptr: kp, rs: ks.s[3] as isize, cs: ks.s[2] as isize };
                matmul_scaled(l, lk, dh, s.as_mut_ptr(), lk, qm, kt, false, scale);
                s.chunks_mut(lk).for_each(softmax_row);
                let vm = Mat { ptr: vp, rs: vs.s[2] as isize, cs: vs.s[3] as isize };
                matmul(l, dh, lk, op.ptr().add(bh * l * dh), dh, Mat::rows(s.as_ptr(), lk), vm, false);
            }
        })
    });
    // SAFETY: the tasks above wrote every (b, h) block.
    unsafe { o.set_len(b * h * l * dh) };
    o
}

/// Gradients of [`attention_fwd`] given dO (contiguous [B, H, L, Dh]): [dq | dk | dv] packed, each contiguous.
/// Per (batch, head): P recomputed as in the forward, dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dP P)),
/// dQ = scale dS K, dK = scale dS^T Q; P and dS live in the thread's scratch buffer.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd<T: Elem>(
    q: &[T],
    k: &[T],
    v: &[T],
    d_o: &[T],
    (qs, ks, vs): (Strided, Strided, Strided),
    [b, h, l, lk, dh]: [usize; 5],
    scale: T,
) -> Vec<T> {
    let (nq, nk) = (b * h * l * dh, b * h * lk * dh);
    let mut out: Vec<T> = Vec::with_capacity(nq + 2 * nk);
    let op = SyncPtr(out.as_mut_ptr());
    (0..b * h).into_par_iter().for_each(|bh| {
        let (bi, hi) = (bh / h, bh % h);
        let (qp, kp, vp) = (qs.at(q, bi, hi), ks.at(k, bi, hi), vs.at(v, bi, hi));
        let gp = d_o[bh * l * dh..].as_ptr();
        with_scratch(2 * l * lk, |buf: &mut [T]| {
            let (p, ds) = buf.split_at_mut(l * lk);
            // SAFETY: views within the operands (see `Strided::at`); each task writes its own blocks of dq,
            // dk and dv; the scratch buffer is this thread's.
            unsafe {
                let qm = Mat { ptr: qp, rs: qs.s[2] as isize, cs: qs.s[3] as isize };
                let km = Mat { ptr: kp, rs: ks.s[2] as isize, cs: ks.s[3] as isize };
                let kt = Mat { ptr: kp, rs: ks.s[3] as isize, cs: ks.s[2] as isize };
                let vt = Mat { ptr: vp, rs: vs.s[3] as isize, cs: vs.s[2] as isize };
                matmul_scaled(l, lk, dh, p.as_mut_ptr(), lk, qm, kt, false, scale);
                p.chunks_mut(lk).for_each(softmax_row);
                let (dq, dk, dv) = (op.ptr().add(bh * l * dh), op.ptr().add(nq + bh * lk * dh), op.ptr().add(nq + nk + bh * lk * dh));
                matmul(lk, dh, l, dv, dh, Mat::t(p.as_ptr(), lk), Mat::rows(gp, dh), false);
                matmul(l, lk, dh, ds.as_mut_ptr(), lk, Mat::rows(gp, dh), vt, false);
                for (pr, dr) in p.chunks(lk).zip(ds.chunks_mut(lk)) {
                    let dot = pr.iter().zip(dr.iter()).fold(T::zero(), |a, (&x, &y)| a + x * y);
                    dr.iter_mut().zip(pr).for_each(|(d, &x)| *d = x * (*d - dot));
                }
                matmul_scaled(l, dh, lk, dq, dh, Mat::rows(ds.as_ptr(), lk), km, false, scale);
                matmul_scaled(lk, dh, l, dk, dh, Mat::t(ds.as_ptr(), lk), qm, false, scale);
            }
        })
    });
    // SAFETY: the tasks above wrote every block of dq, dk and dv.
    unsafe { out.set_len(nq + 2 * nk) };
    out
}
