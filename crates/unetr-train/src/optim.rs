//! AdamW (PyTorch's, decoupled weight decay) with state that can be saved and restored exactly,
//! the linear-warmup cosine schedule, and gradient clipping by global norm.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// The research recipe: lr 1e-4, weight decay 1e-5.
    fn default() -> Self {
        Self { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-5 }
    }
}

/// AdamW over named variables. Variables without a gradient in a step are left untouched (frozen).
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub vars: Vec<(String, Var)>,
    /// First and second moments by variable name.
    pub m: HashMap<String, Tensor>,
    pub v: HashMap<String, Tensor>,
    pub step: u64,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Self {
        Self { cfg, vars, m: HashMap::new(), v: HashMap::new(), step: 0 }
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (name, var) in &self.vars {
            // Detached: gradients can carry the autograd graph of their step (and with it every
            // activation); moments built from them would keep each step's graph alive.
            let Some(g) = grads.get(var.as_tensor()).map(|g| g.detach()) else { continue };
            let g = &g;
            let m = match self.m.get(name) {
                Some(m) => ((m * c.beta1)? + (g * (1.0 - c.beta1))?)?,
                None => (g * (1.0 - c.beta1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?,
                None => (g.sqr()? * (1.0 - c.beta2))?,
            };
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let w = var.as_tensor().detach();
            let decayed = (&w * (1.0 - c.lr * c.weight_decay))?;
            var.set(&(decayed - (update * c.lr)?)?)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }

    /// The state as named tensors (for checkpoints): "m.<name>", "v.<name>", "step".
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut s = HashMap::new();
        for (k, t) in &self.m {
            s.insert(format!("m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            s.insert(format!("v.{k}"), t.clone());
        }
        s.insert("step".into(), Tensor::new(self.step as i64, &candle_core::Device::Cpu)?);
        Ok(s)
    }

    pub fn load_state(&mut self, s: &HashMap<String, Tensor>) -> Result<()> {
        self.m.clear();
        self.v.clear();
        for (k, t) in s {
            if let Some(n) = k.strip_prefix("m.") {
                self.m.insert(n.to_string(), t.clone());
            } else if let Some(n) = k.strip_prefix("v.") {
                self.v.insert(n.to_string(), t.clone());
            }
        }
        self.step = s.get("step").map(|t| t.to_scalar::<i64>()).transpose()?.unwrap_or(0) as u64;
        Ok(())
    }
}

/// Linear warm-up from 0 to `base` over `warmup` steps, then cosine decay to `min_lr` at `total` (MONAI's
/// `WarmupCosineSchedule` shape).
pub fn warmup_cosine(step: u64, warmup: u64, total: u64, base: f64, min_lr: f64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let t = ((step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64).min(1.0);
    min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for (_, v) in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for (_, v) in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let g = (g.detach() * s)?;
                grads.insert(v.as_tensor(), g);
            }
        }
    }
    Ok(norm)
}
