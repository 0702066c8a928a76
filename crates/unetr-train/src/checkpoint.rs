//! A run's two checkpoint folders (layout and atomic writes: `unetr_infer::checkpoint`): `checkpoint/`,
//! the latest state to resume from (weights, optimiser, step, seed, loss scale), and `best/`, the weights
//! with the best validation score, which carries that score itself.

use crate::amp::GradScaler;
use crate::config::TrainConfig;
use crate::error::{ferr, Result, TrainError};
use crate::optim::AdamW;
use serde::{Deserialize, Serialize};
use std::path::Path;
use unetr_infer::checkpoint::{save, Checkpoint, Contents};
use unetr_model::{UnetrConfig, UnetrWeights};

/// state.json of `checkpoint/`. Batches are a function of (seed, step), so this is all a resume needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub step: u64,
    pub seed: u64,
    /// The best validation score so far and its step (also in `best/state.json`).
    pub best_dice: f64,
    pub best_step: u64,
    /// The f16 loss scaler's state (absent in f32/bf16 runs and in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_scaler: Option<GradScaler>,
    /// The data-parallel world size that trained it (batches are sharded by rank).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

/// state.json of `best/`: the score that made these weights the best.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BestState {
    pub step: u64,
    pub mean_dice: f64,
    #[serde(default)]
    pub dice_per_class: Vec<Option<f64>>,
}

/// Writes `dir` (the run's `checkpoint/`) atomically.
pub fn save_training(dir: &Path, w: &UnetrWeights, model: &UnetrConfig, cfg: &TrainConfig, opt: &AdamW, state: &TrainState) -> Result<()> {
    let optimizer = opt.state()?;
    let state = serde_json::to_value(state).map_err(|e| TrainError::Config(e.to_string()))?;
    Ok(save(dir, &Contents { weights: w, model, train_config: &cfg.to_toml(), state: &state, optimizer: Some(&optimizer) })?)
}

/// Writes `dir` (the run's `best/`) atomically, with its score.
pub fn save_best(dir: &Path, w: &UnetrWeights, model: &UnetrConfig, cfg: &TrainConfig, best: &BestState) -> Result<()> {
    let state = serde_json::to_value(best).map_err(|e| TrainError::Config(e.to_string()))?;
    Ok(save(dir, &Contents { weights: w, model, train_config: &cfg.to_toml(), state: &state, optimizer: None })?)
}

/// The best score recorded in `dir` (`best/`), if it holds one.
pub fn best_score(dir: &Path) -> Result<Option<BestState>> {
    if !dir.exists() {
        return Ok(None);
    }
    Ok(Checkpoint::open(dir)?.state::<BestState>()?)
}

/// Loads `dir` (the run's `checkpoint/`) into the model and optimiser; returns its state. The seed must
/// be the config's (a different seed would not continue the same run).
pub fn resume(dir: &Path, w: &UnetrWeights, opt: &mut AdamW, cfg: &TrainConfig) -> Result<TrainState> {
    let ck = Checkpoint::open(dir).map_err(|e| TrainError::Config(format!("cannot resume: {e}")))?;
    let sp = dir.join(unetr_infer::checkpoint::STATE);
    let st: TrainState = ck.state()?.ok_or_else(|| ferr(&sp, "cannot resume: no state.json (a best/ folder is not a training checkpoint)"))?;
    if st.seed != cfg.output.seed {
        return Err(ferr(&sp, format!("checkpoint was trained with seed {}, the config says {}: resume would not continue the same run", st.seed, cfg.output.seed)));
    }
    if st.step > cfg.optim.steps {
        return Err(ferr(&sp, format!("checkpoint is at step {}, past optim.steps = {}", st.step, cfg.optim.steps)));
    }
    ck.load_weights_into(w, cfg.memory_limit)?;
    let device = w.model.device().clone();
    opt.load_state(&ck.optimizer(&device, cfg.memory_limit)?)?;
    Ok(st)
}
