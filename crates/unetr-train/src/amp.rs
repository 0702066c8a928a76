//! Mixed precision (PyTorch's `torch.amp`): the forward and backward in bf16 or f16 with f32 master
//! weights, and dynamic loss scaling for f16 (`GradScaler`'s rule).
//!
//! The master weights stay f32 `Var`s; each layer casts them to the input's dtype at use
//! (`unetr_ops::cast_to`), and the cast is differentiable, so their gradients arrive in f32 and the
//! optimizer and its moments work in f32. The loss is computed in f32 from the half logits.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

/// The compute dtype of a training or inference pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bfloat16: f32's range, so no loss scaling.
    Bf16,
    /// float16: gradients below 6e-8 flush to zero, so the loss is scaled (see [`GradScaler`]).
    F16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::F16
    }
}

/// Dynamic loss scaling as `torch.amp.GradScaler`: multiply the loss by `scale` before backward, divide the
/// gradients by it before the optimizer; if any gradient is inf/NaN, skip the step and halve the scale;
/// after `growth_interval` finite steps in a row, double it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GradScaler {
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u64,
    /// Finite steps since the last change of scale.
    pub good_steps: u64,
}

impl Default for GradScaler {
    /// PyTorch's defaults: 2^16, x2 every 2000 finite steps, x0.5 on overflow.
    fn default() -> Self {
        Self { scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000, good_steps: 0 }
    }
}

impl GradScaler {
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        loss * self.scale
    }

    /// Divides every gradient of `vars` by the scale, in place; returns whether all of them are finite.
    pub fn unscale(&self, grads: &mut GradStore, vars: &[(String, Var)]) -> Result<bool> {
        let mut finite = true;
        for (_, v) in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let g = (g.detach().to_dtype(DType::F32)? / self.scale)?;
                // sum of squares: inf or NaN if any element is
                let s = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
                finite &= s.is_finite();
                grads.insert(v.as_tensor(), g);
            }
        }
        Ok(finite)
    }

    /// Records the outcome of a step (`finite`: the step was taken) and adapts the scale.
    pub fn update(&mut self, finite: bool) {
        if !finite {
            self.scale *= self.backoff_factor;
            self.good_steps = 0;
        } else {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.good_steps = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn scaler_unscales_skips_on_overflow_and_adapts() -> Result<()> {
        let v = Var::new(&[1f32, 2.0], &Device::Cpu)?;
        let vars = vec![("w".to_string(), v.clone())];
        let mut s = GradScaler { growth_interval: 2, ..Default::default() };
        // loss = scale * sum(w * [3, 4]) -> unscaled gradient [3, 4]
        let loss = s.scale_loss(&(v.as_tensor() * Tensor::new(&[3f32, 4.0], &Device::Cpu)?)?.sum_all()?)?;
        let mut g = loss.backward()?;
        assert!(s.unscale(&mut g, &vars)?);
        assert_eq!(g.get(v.as_tensor()).unwrap().to_vec1::<f32>()?, vec![3.0, 4.0]);
        s.update(true);
        assert_eq!(s.scale, 65536.0);
        s.update(true);
        assert_eq!((s.scale, s.good_steps), (131072.0, 0), "grows after growth_interval finite steps");
        // An overflowed gradient: the step is to be skipped and the scale halves.
        let mut g = (v.as_tensor() * 1.0)?.sum_all()?.backward()?;
        g.insert(v.as_tensor(), Tensor::new(&[f32::INFINITY, 1.0], &Device::Cpu)?);
        assert!(!s.unscale(&mut g, &vars)?);
        s.update(false);
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        Ok(())
    }
}
