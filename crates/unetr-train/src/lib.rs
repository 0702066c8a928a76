//! Training UNETR with MONAI's research recipe, in parts with one job each: `config` (the TOML schema and
//! its validation), `losses` (DiceCE, Dice, CE), `optim` (AdamW, warmup-cosine, clipping), `amp` (bf16/f16
//! mixed precision with f32 master weights, loss scaling), `step` (one optimiser update: the unit a
//! data-parallel trainer replicates), `data` (a run's datalist, cache and class checks), `checkpoint`
//! (resume state and the best model), `log` (JSONL/CSV), `plots`, `report` (the HTML report), and `trainer` (the loop that composes
//! them). Inference, metrics and the checkpoint layout live in `unetr-infer`.

pub mod amp;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod distributed;
pub mod error;
pub mod log;
pub mod losses;
pub mod optim;
pub mod plots;
pub mod report;
pub mod step;
pub mod trainer;

pub use candle_core;
pub use candle_nn;
pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use trainer::{train, train_with, RunMode, TrainSummary};
