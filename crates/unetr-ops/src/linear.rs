//! `linear(x, w, b)` = x W^T + b (PyTorch's `F.linear`), with the forward GEMM split over threads
//! by output features. candle's matmul hands gemm's own threading a 216 x 3072 x 768 problem (the ViT's
//! MLP) and gets one core's speed; a split along N gives each core an independent half.

use crate::error::{check_float, shape_err, OpsError};
use crate::kernels::{matmul, threads, Elem, Mat, SyncPtr};
use crate::storage::{data2, dispatch2, out};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// y[m, n] = b[n] + sum_k x[m, k] * w[n, k].
fn linear_fwd<T: Elem>(x: &[T], w: &[T], b: Option<&[T]>, m: usize, n: usize, k: usize) -> Vec<T> {
    par_matmul(m, n, k, Mat::rows(x.as_ptr(), k), Mat::t(w.as_ptr(), k), b)
}

/// out[m x n] = (bias broadcast over rows, if any) + a[m x k] b[k x n] for strided views, split over column
/// blocks of the output (at least 64 columns, a few blocks per thread for balance). The bias is written first
/// and the GEMM accumulates onto it, which saves a separate broadcast pass (and its allocation).
fn par_matmul<T: Elem>(m: usize, n: usize, k: usize, a: Mat<T>, b: Mat<T>, bias: Option<&[T]>) -> Vec<T> {
    let mut y: Vec<T> = Vec::with_capacity(m * n);
    if let Some(bias) = bias {
        y.spare_capacity_mut().par_chunks_mut(n).for_each(|row| row.iter_mut().zip(bias).for_each(|(o, &v)| {
            o.write(v);
        }));
    }
    let yp = SyncPtr(y.as_mut_ptr());
    let block = (n.div_ceil(2 * threads())).next_multiple_of(64).max(64);
    (0..n.div_ceil(block)).into_par_iter().for_each(|j| {
        let (n0, nb) = (j * block, block.min(n - j * block));
        // SAFETY: each block writes (or, over the bias, accumulates into) its own columns n0..n0+nb of every row.
        unsafe { matmul(m, nb, k, yp.ptr().add(n0), n, a, b.cols_from(n0), bias.is_some()) }
    });
    // SAFETY: the blocks cover every column of every row.
    unsafe { y.set_len(m * n) };
    y
}

/// The two gradient GEMMs of `linear`: dx = g W (`Dx`, operands (g, w)) and dW = g^T x (`Dw`, operands
/// (g, x)). First-order only.
#[derive(Clone, Copy)]
enum LinearGrad {
    Dx,
    Dw,
}

impl CustomOp2 for LinearGrad {
    fn name(&self) -> &'static str {
        match self {
            LinearGrad::Dx => "linear_backward_input",
            LinearGrad::Dw => "linear_backward_weight",
        }
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, n) = l1.shape().dims2()?; // g [M, N]
        let (r2, k) = l2.shape().dims2()?; // w [N, K] or x [M, K]
        let this = *self;
        crate::profile::timed(self.name(), || {
            dispatch2!(data2(self.name(), s1, l1, s2, l2)?, |g, o| match this {
                LinearGrad::Dx => {
                    debug_assert_eq!(r2, n);
                    out(par_matmul(m, k, n, Mat::rows(g.as_ptr(), n), Mat::rows(o.as_ptr(), k), None), (m, k))
                }
                LinearGrad::Dw => {
                    debug_assert_eq!(r2, m);
                    out(par_matmul(n, k, m, Mat::t(g.as_ptr(), n), Mat::rows(o.as_ptr(), k), None), (n, k))
                }
            })
        })
    }
}

/// (dx, dW) of y = x W^T given dy, on the CPU.
fn linear_grads(x: &Tensor, w: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    let g = g.contiguous()?;
    Ok((g.apply_op2_no_bwd(&w.contiguous()?, &LinearGrad::Dx)?, g.apply_op2_no_bwd(&x.contiguous()?, &LinearGrad::Dw)?))
}

struct LinearOp;

/// x W^T + b in one op; gradients of all three.
struct LinearBiasOp;

impl candle_core::CustomOp3 for LinearBiasOp {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, _) = l2.shape().dims2()?;
        let b = crate::storage::data(self.name(), s3, l3)?;
        crate::profile::timed("linear", || match (data2(self.name(), s1, l1, s2, l2)?, b) {
            (crate::storage::Data2::F32(x, w), crate::storage::Data::F32(b)) => out(linear_fwd(x, w, Some(b), m, n, k), (m, n)),
            (crate::storage::Data2::F64(x, w), crate::storage::Data::F64(b)) => out(linear_fwd(x, w, Some(b), m, n, k), (m, n)),
            _ => Err(OpsError::Param { op: "linear", msg: "bias dtype differs from the input's".into() }.into()),
        })
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = linear_grads(x, w, g)?;
        Ok((Some(dx), Some(dw), Some(crate::profile::timed("linear_backward_bias", || g.sum(0))?)))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            return Err(shape_err("linear", "input features differ from the weight's", &[l1.dims(), l2.dims()]));
        }
        crate::profile::timed("linear", || dispatch2!(data2(self.name(), s1, l1, s2, l2)?, |x, w| out(linear_fwd(x, w, None, m, n, k), (m, n))))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // dx = g W, dW = g^T x (first-order only).
        let (dx, dw) = linear_grads(x, w, g)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// x: `[..., K]`, w: `[N, K]`, b: `[N]` -> `[..., N]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "linear";
    check_float(OP, x.dtype())?;
    if w.rank() != 2 || x.rank() == 0 {
        return Err(OpsError::Rank { op: OP, expected: "x of rank >= 1 and weight [N, K]", got: w.dims().to_vec() }.into());
    }
    if x.dtype() != w.dtype() {
        return Err(OpsError::DTypeMismatch { op: OP, a: x.dtype(), b: w.dtype() }.into());
    }
    let k = x.dim(D::Minus1)?;
    let (n, kw) = w.dims2()?;
    if k != kw {
        return Err(shape_err(OP, format!("input has {k} features, weight expects {kw}"), &[x.dims(), w.dims()]));
    }
    if crate::dtype::via_f32(x) {
        use crate::dtype::{up, up_opt};
        return linear(&up(x)?, &up(w)?, up_opt(b)?.as_ref())?.to_dtype(x.dtype());
    }
    let lead = &x.dims()[..x.rank() - 1];
    let m: usize = lead.iter().product();
    let x2 = x.contiguous()?.reshape((m, k))?;
    if !x.device().is_cpu() {
        // On a GPU, candle's matmul (cuBLAS) with its own backward.
        let y = x2.matmul(&w.t()?)?;
        let y = match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut shape = lead.to_vec();
        shape.push(n);
        return y.reshape(shape);
    }
    let y = match b {
        Some(b) => {
            if b.dims() != [n] || b.dtype() != x.dtype() {
                return Err(shape_err(OP, format!("bias must be [{n}] of the input's dtype"), &[b.dims()]));
            }
            x2.apply_op3(&w.contiguous()?, &b.contiguous()?, LinearBiasOp)?
        }
        None => x2.apply_op2(&w.contiguous()?, LinearOp)?,
    };
    let mut shape = lead.to_vec();
    shape.push(n);
    y.reshape(shape)
}
