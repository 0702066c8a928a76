//! Training, inference and evaluation for UNETR with MONAI's semantics: `losses` (DiceCE), `optim`
//! (AdamW, warmup-cosine schedule, gradient clipping), `inferers` (sliding window), `metrics` (Dice),
//! `amp` (bf16/f16 mixed precision with f32 master weights, loss scaling) and `trainer` (the loop behind
//! `cargo xtask train`).

pub mod amp;
pub mod inferers;
pub mod losses;
pub mod metrics;
pub mod optim;
pub mod plots;
pub mod trainer;
