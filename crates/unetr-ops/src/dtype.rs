//! Half precision where a kernel lacks it, and parameter casts for mixed precision.
//!
//! The CPU kernels compute in f32/f64 and the CUDA kernels in f32/f64/bf16. An op given bf16 or f16 on a
//! device without that kernel computes in f32 and rounds the result back, as PyTorch's CPU autocast does
//! for ops without half kernels. `to_dtype` is differentiable in candle, so gradients come back in the
//! input's dtype.

use candle_core::{DType, Result, Tensor};

/// Whether `t`'s dtype has no kernel on its device (bf16/f16 on the CPU, f16 on CUDA).
pub(crate) fn via_f32(t: &Tensor) -> bool {
    match t.dtype() {
        DType::F16 => true,
        DType::BF16 => !t.device().is_cuda(),
        _ => false,
    }
}

pub(crate) fn up(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)
}

pub(crate) fn up_opt(t: Option<&Tensor>) -> Result<Option<Tensor>> {
    t.map(up).transpose()
}

/// `t` in `dtype` (itself when it already is): how a layer holding f32 master weights feeds them to a bf16
/// or f16 forward pass. The cast is differentiable, so the gradient reaches the f32 weight in f32.
pub fn cast_to(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        Ok(t.clone())
    } else {
        t.to_dtype(dtype)
    }
}
