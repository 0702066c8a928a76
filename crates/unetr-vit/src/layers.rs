//! Small layers shared by the encoder: LayerNorm with a real backward, and dropout.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
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

/// The generator dropout masks come from, shared by every dropout of a model. Candle's own dropout draws
/// from an unseeded generator, so a run with dropout could not be repeated or resumed exactly; the trainer
/// reseeds this one from (run seed, step) before each forward pass instead.
#[derive(Debug, Clone)]
pub struct DropoutRng(std::sync::Arc<std::sync::Mutex<ChaCha8Rng>>);

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(ChaCha8Rng::seed_from_u64(seed))))
    }
    /// Restarts the stream: the masks of the next passes depend on `seed` and the order of the layers only.
    pub fn reseed(&self, seed: u64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = ChaCha8Rng::seed_from_u64(seed);
    }
    /// The generator's state now (to replay the same masks, see [`restore`](Self::restore)).
    pub fn snapshot(&self) -> ChaCha8Rng {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Puts back a state from [`snapshot`](Self::snapshot): the next masks repeat those drawn after it.
    pub fn restore(&self, state: &ChaCha8Rng) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = state.clone();
    }
    /// n values: 0 with probability p, else 1 / (1 - p).
    fn mask(&self, n: usize, p: f64) -> Vec<f32> {
        let keep = (1.0 / (1.0 - p)) as f32;
        let mut rng = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (0..n).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }).collect()
    }
}

/// Inverted dropout as `nn.Dropout`: identity unless training with p > 0; the mask comes from `rng`.
pub fn dropout(x: &Tensor, p: f64, train: bool, rng: &DropoutRng) -> Result<Tensor> {
    if !train || p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        return x.zeros_like();
    }
    let mask = Tensor::from_vec(rng.mask(x.elem_count(), p), x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

/// `nn.Linear` on our parallel `linear` op; keys `weight` `[out, in]` and `bias` `[out]`.
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
