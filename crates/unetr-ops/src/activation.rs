//! LeakyReLU and softmax with backward (candle's `softmax_last_dim` has none).

use crate::error::{check_float, OpsError};
use crate::kernels::softmax::{leaky_relu_fwd, softmax_fwd};
use crate::storage::{data, dispatch, out};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};

struct LeakyRelu(f64);

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "leaky_relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch!(data(self.name(), s, l)?, |x| out(
            leaky_relu_fwd(x, self.0),
            l.shape().clone()
        ))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((crate::cuda::leaky_relu(s, l, self.0)?, l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // As PyTorch: slope where x <= 0.
        Ok(Some(x.gt(0.0)?.where_cond(g, &(g * self.0)?)?))
    }
}

/// `F.leaky_relu(x, slope)`.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    check_float("leaky_relu", x.dtype())?;
    x.contiguous()?.apply_op1(LeakyRelu(slope))
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax_last_dim"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims().last().copied().unwrap_or(1);
        dispatch!(data(self.name(), s, l)?, |x| out(
            softmax_fwd(x, d),
            l.shape().clone()
        ))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((crate::cuda::softmax(s, l)?, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // dx = y * (g - sum(g * y)); written with candle ops, so it is itself differentiable.
        let dot = (g * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((y * g.broadcast_sub(&dot)?)?))
    }
}

/// Softmax over the last axis, with backward.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    check_float("softmax_last_dim", x.dtype())?;
    if x.rank() == 0 {
        return Err(OpsError::Rank {
            op: "softmax_last_dim",
            expected: "rank >= 1",
            got: vec![],
        }
        .into());
    }
    x.contiguous()?.apply_op1(Softmax)
}
