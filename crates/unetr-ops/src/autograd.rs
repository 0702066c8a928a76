//! Seeding candle's backward with a given output gradient.
//!
//! candle's `backward` starts from a scalar with gradient one. A backward that must start from a gradient
//! `g` for a tensor `o` (a block's backward, given the gradients of its outputs) would seed from
//! `sum(o * g)`, whose own backward makes a product, a broadcast and two more products of `o`'s full size,
//! and keeps a gradient for `g` as well. [`seed`] is a scalar whose backward hands `g` to `o` directly.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use crate::error::shape_err;

struct Seed(Tensor);

impl CustomOp1 for Seed {
    fn name(&self) -> &'static str {
        "seed"
    }
    fn cpu_fwd(&self, s: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let zero = match s.dtype() {
            DType::F64 => CpuStorage::F64(vec![0.0]),
            DType::F32 => CpuStorage::F32(vec![0.0]),
            DType::BF16 => CpuStorage::BF16(vec![half::bf16::ZERO]),
            DType::F16 => CpuStorage::F16(vec![half::f16::ZERO]),
            dt => candle_core::bail!("seed: unsupported dtype {dt:?}"),
        };
        Ok((zero, Shape::from(())))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, _l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::{BackendDevice, BackendStorage};
        let shape = Shape::from(());
        Ok((s.device().zeros_impl(&shape, s.dtype())?, shape))
    }
    fn bwd(&self, _o: &Tensor, _res: &Tensor, _g: &Tensor) -> Result<Option<Tensor>> {
        // The scalar's own gradient is one (it is the root of the backward, or a term of a sum that is).
        Ok(Some(self.0.clone()))
    }
}

/// A zero scalar whose gradient with respect to `o` is `g` (same shape; cast to `o`'s dtype): the root
/// (or, summed with others, part of the root) of a backward that starts from `o`'s gradient `g`. The sum of
/// several seeds seeds several outputs at once.
pub fn seed(o: &Tensor, g: &Tensor) -> Result<Tensor> {
    if o.dims() != g.dims() {
        return Err(shape_err("seed", "an output gradient of the output's shape", &[o.dims(), g.dims()]));
    }
    let g = if g.dtype() == o.dtype() { g.clone() } else { g.to_dtype(o.dtype())? };
    o.apply_op1(Seed(g.detach()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The seeded backward gives what the backward of sum(o * g) gives, for one and for two outputs.
    #[test]
    fn seeded_backward_equals_the_weighted_sum() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 3, 4), &dev)?)?;
        let (g1, g2) = (Tensor::randn(0f64, 1.0, (2, 3, 4), &dev)?, Tensor::randn(0f64, 1.0, (2, 3), &dev)?);
        let outs = |x: &Tensor| -> Result<(Tensor, Tensor)> { Ok((x.sqr()?.exp()?, x.sin()?.sum(2)?)) };
        let (o1, o2) = outs(x.as_tensor())?;
        let want = ((&o1 * &g1)?.sum_all()? + (&o2 * &g2)?.sum_all()?)?.backward()?;
        let (o1, o2) = outs(x.as_tensor())?;
        let s = (seed(&o1, &g1)? + seed(&o2, &g2)?)?;
        assert_eq!(s.to_scalar::<f64>()?, 0.0);
        let got = s.backward()?;
        let diff = (want.get(&x).unwrap() - got.get(&x).unwrap())?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "{diff}");
        assert!(seed(&o1, &g2).is_err());
        Ok(())
    }
}
