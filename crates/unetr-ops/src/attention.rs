//! Multi-head scaled dot-product attention: softmax(q k^T * scale) v.
//!
//! The CPU path is exact and differentiable (two batched matmuls around [`softmax_last_dim`]). The fused
//! CUDA kernel of a later issue implements this same function.

use crate::activation::softmax_last_dim;
use crate::error::{check_float, shape_err, OpsError};
use candle_core::{Result, Tensor};

/// q, k, v: [B, H, L, Dh] (k and v may have another length Lk than q) -> [B, H, L, Dh].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    const OP: &str = "attention";
    check_float(OP, q.dtype())?;
    for t in [q, k, v] {
        if t.rank() != 4 {
            return Err(OpsError::Rank {
                op: OP,
                expected: "q, k, v of rank 4 (B, H, L, Dh)",
                got: t.dims().to_vec(),
            }
            .into());
        }
        if t.dtype() != q.dtype() {
            return Err(OpsError::DTypeMismatch {
                op: OP,
                a: q.dtype(),
                b: t.dtype(),
            }
            .into());
        }
    }
    let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
    if qd[0] != kd[0] || qd[1] != kd[1] || qd[3] != kd[3] || kd[..3] != vd[..3] {
        return Err(shape_err(
            OP,
            "q, k, v must agree in batch and heads, q/k in head dim, k/v in length",
            &[qd, kd, vd],
        ));
    }
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    softmax_last_dim(&scores)?.matmul(&v.contiguous()?)
}
