//! Small layers shared by the encoder: LayerNorm with a real backward, and dropout.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use unetr_ops::cast_to;

/// `nn.LayerNorm(dim)` (eps 1e-5, affine) on our `layer_norm`, whose gradients reach weight, bias and input
/// (candle_nn's fused LayerNorm drops them).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }
}

impl candle_core::Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Parameters follow the input's dtype (f32 master weights in a bf16/f16 pass; the cast is differentiable).
        let dt = x.dtype();
        unetr_ops::layer_norm(x, Some(&cast_to(&self.weight, dt)?), Some(&cast_to(&self.bias, dt)?), self.eps)
    }
}

/// Inverted dropout as `nn.Dropout`: identity unless training with p > 0.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if !train || p <= 0.0 {
        return Ok(x.clone());
    }
    candle_nn::ops::dropout(x, p as f32)
}

/// `nn.Linear` on our parallel `linear` op; keys `weight` [out, in] and `bias` [out].
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }
}

impl candle_core::Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dt = x.dtype();
        unetr_ops::linear(x, &cast_to(&self.weight, dt)?, self.bias.as_ref().map(|b| cast_to(b, dt)).transpose()?.as_ref())
    }
}
