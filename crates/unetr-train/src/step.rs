//! One optimiser update: forward, loss and backward for each micro-batch, gradients summed over
//! `accumulate` micro-batches, unscaled (f16), clipped, applied by AdamW. The unit a data-parallel trainer
//! replicates: each rank runs [`TrainStep::gradients`] on its own batches, the summed gradients are
//! all-reduced, and every rank runs [`TrainStep::apply`].

use crate::amp::{GradScaler, Precision};
use crate::config::OptimConfig;
use crate::distributed::{all_reduce_gradients, Communicator};
use crate::error::{Result, TrainError};
use crate::losses::{region_targets, Loss};
use crate::optim::{clip_grad_norm, AdamW};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use unetr_model::{Checkpointing, Unetr};

/// What one update did.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// The loss summed over the micro-batches, each divided by their number (the mean loss).
    pub loss: f64,
    /// The global gradient norm before clipping (NaN when the f16 gradients overflowed).
    pub grad_norm: f64,
    /// False when an f16 overflow skipped the update.
    pub applied: bool,
}

pub struct TrainStep {
    pub vars: Vec<(String, Var)>,
    pub opt: AdamW,
    pub loss: Loss,
    pub precision: Precision,
    pub grad_clip: f64,
    pub accumulate: usize,
    /// The f16 loss scaler (None for f32 and bf16).
    pub scaler: Option<GradScaler>,
    /// With `labels.mode = "regions"`: each output channel's label values (the loss sees their masks).
    pub regions: Option<Vec<Vec<u32>>>,
    /// Which blocks recompute their activations in the backward.
    pub checkpointing: Checkpointing,
}

impl TrainStep {
    pub fn new(vars: Vec<(String, Var)>, o: &OptimConfig) -> Self {
        Self {
            opt: AdamW::new(vars.clone(), o.adamw),
            vars,
            loss: o.loss.clone(),
            precision: o.precision,
            grad_clip: o.grad_clip,
            accumulate: o.accumulate.max(1),
            scaler: o.precision.needs_loss_scaling().then(GradScaler::default),
            regions: None,
            checkpointing: o.checkpointing,
        }
    }

    /// Forward, loss (divided by the number of micro-batches) and backward for one micro-batch of images
    /// `x` [B, C, ...] and labels `y` [B, 1, ...]; returns the loss value and the (scaled) gradients.
    ///
    /// The backward runs block by block (`Unetr::forward_backward`): each block's activations are freed as
    /// soon as its backward has run, and with `checkpointing` they are recomputed instead of kept.
    pub fn gradients(&self, model: &Unetr, x: &Tensor, y: &Tensor) -> Result<(f64, GradStore)> {
        let target = match &self.regions {
            Some(sets) => region_targets(y, sets)?,
            None => y.clone(),
        };
        let params: Vec<Var> = self.vars.iter().map(|(_, v)| v.clone()).collect();
        let out = model.forward_backward(
            &x.to_dtype(self.precision.dtype())?,
            |logits| {
                let loss = (self.loss.compute(&logits.to_dtype(DType::F32)?, &target)? / self.accumulate as f64)?;
                let scaled = match &self.scaler {
                    Some(s) => s.scale_loss(&loss)?,
                    None => loss.clone(),
                };
                Ok((loss, scaled))
            },
            &params,
            self.checkpointing,
        )?;
        Ok((out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, out.grads))
    }

    /// Adds `g` into `acc` (parameter by parameter).
    pub fn accumulate_into(&self, acc: Option<GradStore>, g: GradStore) -> Result<GradStore> {
        let Some(mut acc) = acc else { return Ok(g) };
        for (_, v) in &self.vars {
            if let (Some(a), Some(b)) = (acc.get(v.as_tensor()), g.get(v.as_tensor())) {
                let s = (a.detach() + b.detach())?;
                acc.insert(v.as_tensor(), s);
            }
        }
        Ok(acc)
    }

    /// Unscales (f16: an overflow skips the update, as PyTorch's GradScaler does), clips and applies
    /// summed gradients at learning rate `lr`.
    pub fn apply(&mut self, mut grads: GradStore, lr: f64) -> Result<(f64, bool)> {
        self.opt.set_lr(lr);
        let finite = match &self.scaler {
            Some(s) => s.unscale(&mut grads, &self.vars)?,
            None => true,
        };
        // Timed as ops of their own, so that a step's profile accounts for the update.
        let gnorm = if finite { unetr_ops::profile::timed("clip_grad_norm", || clip_grad_norm(&mut grads, &self.vars, self.grad_clip))? } else { f64::NAN };
        if finite {
            unetr_ops::profile::timed("adamw", || self.opt.step(&grads))?;
        }
        if let Some(s) = self.scaler.as_mut() {
            s.update(finite);
        }
        Ok((gnorm, finite))
    }

    /// A whole update from `accumulate` micro-batches; with several ranks the summed gradients are averaged
    /// over them (flat all-reduce) before the update.
    pub fn run(&mut self, model: &Unetr, batches: impl IntoIterator<Item = Result<(Tensor, Tensor)>>, lr: f64, comm: &dyn Communicator) -> Result<StepOutcome> {
        let (mut acc, mut loss, mut n) = (None, 0.0, 0);
        for b in batches {
            let (x, y) = b?;
            let (l, g) = self.gradients(model, &x, &y)?;
            loss += l;
            acc = Some(self.accumulate_into(acc, g)?);
            n += 1;
        }
        if n != self.accumulate {
            return Err(TrainError::Config(format!("a step got {n} micro-batches, accumulate = {}", self.accumulate)));
        }
        let mut grads = acc.expect("at least one micro-batch");
        all_reduce_gradients(comm, &mut grads, &self.vars)?;
        unetr_ops::profile::memory_phase("clip + AdamW");
        let (grad_norm, applied) = self.apply(grads, lr)?;
        Ok(StepOutcome { loss, grad_norm, applied })
    }
}
