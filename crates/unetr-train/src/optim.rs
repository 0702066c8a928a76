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
    /// Calls of `step`.
    pub step: u64,
    /// Updates per variable (bias corrections use these, as PyTorch's per-parameter `step`: a variable that
    /// had no gradient in some steps is behind the global count).
    pub steps: HashMap<String, u64>,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Self {
        Self { cfg, vars, m: HashMap::new(), v: HashMap::new(), step: 0, steps: HashMap::new() }
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        for (name, var) in &self.vars {
            // Detached: gradients can carry the autograd graph of their step (and with it every
            // activation); moments built from them would keep each step's graph alive.
            let Some(g) = grads.get(var.as_tensor()).map(|g| g.detach()) else { continue };
            let n = self.steps.entry(name.clone()).or_insert(0);
            *n += 1;
            let bc1 = 1.0 - c.beta1.powi(*n as i32);
            let bc2 = 1.0 - c.beta2.powi(*n as i32);
            if fused::applies(var.as_tensor(), &g) {
                let w = var.as_tensor();
                let m = match self.m.get(name) {
                    Some(m) => m.clone(),
                    None => w.zeros_like()?,
                };
                let v = match self.v.get(name) {
                    Some(v) => v.clone(),
                    None => w.zeros_like()?,
                };
                fused::step(w, &g.contiguous()?, &m, &v, c, bc1, bc2)?;
                self.m.insert(name.clone(), m);
                self.v.insert(name.clone(), v);
                continue;
            }
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

    /// The state as named tensors (for checkpoints): `m.NAME`, `v.NAME`, `step`, `steps.NAME`.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut s = HashMap::new();
        for (k, t) in &self.m {
            s.insert(format!("m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            s.insert(format!("v.{k}"), t.clone());
        }
        s.insert("step".into(), Tensor::new(self.step as i64, &candle_core::Device::Cpu)?);
        for (k, &n) in &self.steps {
            s.insert(format!("steps.{k}"), Tensor::new(n as i64, &candle_core::Device::Cpu)?);
        }
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
        // Per-variable counts; checkpoints written before they existed count every variable with a moment
        // as updated in every step.
        self.steps = self.m.keys().map(|k| (k.clone(), self.step)).collect();
        for (k, t) in s {
            if let Some(n) = k.strip_prefix("steps.") {
                self.steps.insert(n.to_string(), t.to_scalar::<i64>()? as u64);
            }
        }
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

/// AdamW on the CPU in three in-place passes per tensor (moments, then weights) instead of about twenty
/// element-wise tensor ops with their allocations: the optimiser is memory-bound (4 x 92.8 M floats for UNETR),
/// so passes are what it costs. The arithmetic is the tensor path's, in the same order.
mod fused {
    use super::AdamWConfig;
    use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
    use rayon::prelude::*;

    pub fn applies(w: &Tensor, g: &Tensor) -> bool {
        w.device().is_cpu() && w.is_contiguous() && matches!(w.dtype(), DType::F32 | DType::F64) && g.dtype() == w.dtype() && g.dims() == w.dims()
    }

    fn range(l: &Layout) -> Result<std::ops::Range<usize>> {
        l.contiguous_offsets().map(|(a, b)| a..b).ok_or_else(|| candle_core::Error::Msg("adamw: non-contiguous tensor".into()))
    }

    const CHUNK: usize = 1 << 14;

    /// m = beta * m + (1 - beta) * g (or g^2 when `square`).
    struct Moment {
        beta: f64,
        square: bool,
    }

    impl InplaceOp2 for Moment {
        fn name(&self) -> &'static str {
            "adamw_moment"
        }
        fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
            let (r1, r2) = (range(l1)?, range(l2)?);
            macro_rules! run {
                ($m:expr, $g:expr, $t:ty) => {{
                    let (b, ob) = (self.beta as $t, (1.0 - self.beta) as $t);
                    let sq = self.square;
                    $m[r1].par_chunks_mut(CHUNK).zip($g[r2].par_chunks(CHUNK)).for_each(|(m, g)| {
                        for (m, &g) in m.iter_mut().zip(g) {
                            let x = if sq { g * g } else { g };
                            *m = *m * b + x * ob;
                        }
                    });
                }};
            }
            match (s1, s2) {
                (CpuStorage::F32(m), CpuStorage::F32(g)) => run!(m, g, f32),
                (CpuStorage::F64(m), CpuStorage::F64(g)) => run!(m, g, f64),
                _ => candle_core::bail!("adamw: moment and gradient dtypes differ"),
            }
            Ok(())
        }
    }

    /// w = w * (1 - lr wd) - lr * (m / bc1) / (sqrt(v / bc2) + eps).
    struct Apply {
        decay: f64,
        lr: f64,
        inv_bc1: f64,
        inv_bc2: f64,
        eps: f64,
    }

    impl InplaceOp3 for Apply {
        fn name(&self) -> &'static str {
            "adamw_apply"
        }
        fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<()> {
            let (r1, r2, r3) = (range(l1)?, range(l2)?, range(l3)?);
            macro_rules! run {
                ($w:expr, $m:expr, $v:expr, $t:ty) => {{
                    let (decay, lr, c1, c2, eps) = (self.decay as $t, self.lr as $t, self.inv_bc1 as $t, self.inv_bc2 as $t, self.eps as $t);
                    $w[r1].par_chunks_mut(CHUNK).zip($m[r2].par_chunks(CHUNK)).zip($v[r3].par_chunks(CHUNK)).for_each(|((w, m), v)| {
                        for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                            let update = (m * c1) / ((v * c2).sqrt() + eps);
                            *w = *w * decay - update * lr;
                        }
                    });
                }};
            }
            match (s1, s2, s3) {
                (CpuStorage::F32(w), CpuStorage::F32(m), CpuStorage::F32(v)) => run!(w, m, v, f32),
                (CpuStorage::F64(w), CpuStorage::F64(m), CpuStorage::F64(v)) => run!(w, m, v, f64),
                _ => candle_core::bail!("adamw: weight and moment dtypes differ"),
            }
            Ok(())
        }
    }

    /// One step on weight `w` (updated in place, like `Var::set`) with moments `m`, `v` (updated in place).
    pub fn step(w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, c: AdamWConfig, bc1: f64, bc2: f64) -> Result<()> {
        m.inplace_op2(g, &Moment { beta: c.beta1, square: false })?;
        v.inplace_op2(g, &Moment { beta: c.beta2, square: true })?;
        w.inplace_op3(m, v, &Apply { decay: 1.0 - c.lr * c.weight_decay, lr: c.lr, inv_bc1: 1.0 / bc1, inv_bc2: 1.0 / bc2, eps: c.eps })
    }
}
