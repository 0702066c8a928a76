//! Training, inference and evaluation for UNETR with MONAI's semantics: `losses` (DiceCE), `optim`
//! (AdamW, warmup-cosine schedule, gradient clipping), `inferers` (sliding window), `metrics` (Dice),
//! and `trainer` (the loop behind `cargo xtask train`).

pub mod inferers;
pub mod losses;
pub mod metrics;
pub mod optim;
pub mod plots;
pub mod trainer;
