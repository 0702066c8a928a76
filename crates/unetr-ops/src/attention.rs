//! Multi-head scaled dot-product attention: softmax(q k^T * scale) v.
//!
//! On the CPU one op reads q, k, v through their strides and keeps each head's scores in a per-thread
//! buffer (`kernels::attention`); its backward, one op too, recomputes the probabilities. On a CUDA
//! device (feature `cuda`) the same function runs fused kernels (flash-style: scores stay in registers,
//! online softmax; the backward recomputes them), never materialising the L x Lk score matrix.

use crate::activation::softmax_last_dim;
use crate::error::{check_float, shape_err, OpsError};
use crate::kernels::attention::{attention_bwd, attention_fwd, Strided};
use crate::storage::out;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

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
    if crate::dtype::via_f32(q) {
        use crate::dtype::up;
        return attention(&up(q)?, &up(k)?, &up(v)?, scale)?.to_dtype(q.dtype());
    }
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        return fused::attention(q, k, v, scale);
    }
    if q.device().is_cpu() {
        return q.apply_op3(k, v, CpuAttention { scale });
    }
    unfused(q, k, v, scale)
}

/// The reference composition: two batched matmuls around [`softmax_last_dim`] (differentiable to any order).
fn unfused(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    softmax_last_dim(&scores)?.matmul(&v.contiguous()?)
}

/// One op on the CPU (`kernels::attention`): strided q/k/v, scores in a per-thread buffer. The backward is
/// one op too, recomputing the probabilities (first-order only).
struct CpuAttention {
    scale: f64,
}

impl CustomOp3 for CpuAttention {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (qd, kd) = (l1.dims(), l2.dims());
        let dims = [qd[0], qd[1], qd[2], kd[2], qd[3]];
        let strides = (strided(l1)?, strided(l2)?, strided(l3)?);
        crate::profile::timed("attention", || match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => out(attention_fwd(q, k, v, strides, dims, self.scale as f32), l1.shape().clone()),
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v)) => out(attention_fwd(q, k, v, strides, dims, self.scale), l1.shape().clone()),
            _ => Err(OpsError::DType { op: "attention", dtype: s1.dtype() }.into()),
        })
    }
    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _o: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let flat = q.apply_op3(k, v, CpuAttentionBwd { scale: self.scale, d_o: g.contiguous()? })?;
        unpack_grads(&flat, q, k, v)
    }
}

/// [dq | dk | dv] flat (what both fused backward kernels write) -> the three gradients in q's, k's, v's shapes.
fn unpack_grads(flat: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (nq, nk) = (q.elem_count(), k.elem_count());
    Ok((
        Some(flat.narrow(0, 0, nq)?.reshape(q.shape())?),
        Some(flat.narrow(0, nq, nk)?.reshape(k.shape())?),
        Some(flat.narrow(0, nq + nk, nk)?.reshape(v.shape())?),
    ))
}

fn strided(l: &Layout) -> Result<Strided> {
    let s = <[usize; 4]>::try_from(l.stride()).map_err(|_| shape_err("attention", "rank-4 operands", &[l.dims()]))?;
    Ok(Strided { offset: l.start_offset(), s })
}

/// (q, k, v) -> [dq | dk | dv] flat, given dO (held by the op: a custom op takes at most three operands).
/// First-order only.
struct CpuAttentionBwd {
    scale: f64,
    d_o: Tensor,
}

impl CustomOp3 for CpuAttentionBwd {
    fn name(&self) -> &'static str {
        "attention_backward"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (qd, kd) = (l1.dims(), l2.dims());
        let dims = [qd[0], qd[1], qd[2], kd[2], qd[3]];
        let strides = (strided(l1)?, strided(l2)?, strided(l3)?);
        let n = l1.shape().elem_count() + 2 * l2.shape().elem_count();
        let (go, gl) = self.d_o.storage_and_layout();
        let candle_core::Storage::Cpu(go) = &*go else {
            return Err(OpsError::Param { op: "attention", msg: "internal: the output gradient is not on the CPU".into() }.into());
        };
        let (a, b) = gl.contiguous_offsets().ok_or_else(|| OpsError::Param { op: "attention", msg: "internal: non-contiguous output gradient".into() })?;
        crate::profile::timed("attention_backward", || match (s1, s2, s3, go) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v), CpuStorage::F32(g)) => {
                out(attention_bwd(q, k, v, &g[a..b], strides, dims, self.scale as f32), n)
            }
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v), CpuStorage::F64(g)) => out(attention_bwd(q, k, v, &g[a..b], strides, dims, self.scale), n),
            _ => Err(OpsError::DType { op: "attention", dtype: s1.dtype() }.into()),
        })
    }
}

#[cfg(feature = "cuda")]
mod fused {
    use crate::cuda::AttnDims;
    use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

    fn dims(q: &[usize], k: &[usize]) -> AttnDims {
        AttnDims { bh: q[0] * q[1], l: q[2], lk: k[2], dh: q[3] }
    }

    fn cpu_only(op: &'static str) -> candle_core::Error {
        crate::error::OpsError::Param { op, msg: "internal: the fused attention kernel runs on CUDA only".into() }.into()
    }

    /// (q, k, v) -> o.
    struct Fwd {
        scale: f64,
    }

    impl CustomOp3 for Fwd {
        fn name(&self) -> &'static str {
            "attention_fused"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            Err(cpu_only(self.name()))
        }
        fn cuda_fwd(
            &self,
            s1: &candle_core::CudaStorage,
            l1: &Layout,
            s2: &candle_core::CudaStorage,
            l2: &Layout,
            s3: &candle_core::CudaStorage,
            l3: &Layout,
        ) -> Result<(candle_core::CudaStorage, Shape)> {
            let d = dims(l1.dims(), l2.dims());
            Ok((crate::cuda::attn_fwd((s1, l1), (s2, l2), (s3, l3), d, self.scale)?, l1.shape().clone()))
        }
        fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let packed = Tensor::cat(&[q.flatten_all()?, k.flatten_all()?, v.flatten_all()?], 0)?;
            let flat = packed.apply_op3(&o.contiguous()?, &g.contiguous()?, Bwd { scale: self.scale, q: q.dims().to_vec(), k: k.dims().to_vec() })?;
            super::unpack_grads(&flat, q, k, v)
        }
    }

    /// ([q | k | v] flat, o, dout) -> [dq | dk | dv] flat. First-order only.
    struct Bwd {
        scale: f64,
        q: Vec<usize>,
        k: Vec<usize>,
    }

    impl CustomOp3 for Bwd {
        fn name(&self) -> &'static str {
            "attention_fused_backward"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            Err(cpu_only(self.name()))
        }
        fn cuda_fwd(
            &self,
            s1: &candle_core::CudaStorage,
            l1: &Layout,
            s2: &candle_core::CudaStorage,
            l2: &Layout,
            s3: &candle_core::CudaStorage,
            l3: &Layout,
        ) -> Result<(candle_core::CudaStorage, Shape)> {
            let d = dims(&self.q, &self.k);
            Ok((crate::cuda::attn_bwd((s1, l1), (s2, l2), (s3, l3), d, self.scale)?, l1.shape().clone()))
        }
    }

    pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        if q.dim(3)? > 128 {
            return Err(crate::error::OpsError::Param { op: "attention", msg: format!("the fused CUDA kernel supports head dims up to 128, got {}", q.dim(3)?) }.into());
        }
        q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, Fwd { scale })
    }
}
