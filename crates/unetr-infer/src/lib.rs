//! Inference and evaluation with a trained UNETR, without training's dependencies (plots, progress bars):
//! `checkpoint` (the folder layout: atomic writes, crash recovery, reading), `predictor` (preprocessing,
//! sliding window with TTA, inversion to the input grid), `inferers` (MONAI's sliding-window inference),
//! `metrics` (Dice, HD95, averaging), `evaluate` (per-case and per-class results), `outputs` (output names
//! per case and the checks that keep inputs and earlier results safe), `device` (device names).
//!
//! ```no_run
//! use unetr_infer::{Predictor, Probabilities, Tta};
//! let p = Predictor::from_checkpoint("runs/phantom/best".as_ref(), &candle_core::Device::Cpu, Default::default())?;
//! let item = unetr_data::Item { image: vec!["scan.nii.gz".into()], label: None };
//! let seg = p.segment(&item, Tta::Off, Probabilities::Skip)?;
//! unetr_data::write_nifti("scan_seg.nii.gz".as_ref(), &seg.labels, true)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod checkpoint;
pub mod device;
pub mod error;
pub mod evaluate;
pub mod inferers;
pub mod labels;
pub mod metrics;
pub mod outputs;
pub mod postprocess;
pub mod predictor;

pub use candle_core;
pub use candle_nn;
pub use checkpoint::Checkpoint;
pub use device::parse_device;
pub use error::{InferError, Result};
pub use labels::{LabelMode, Region};
pub use outputs::{Overwrite, OutputPlan};
pub use predictor::{Prediction, Predictor, Probabilities, Segmentation, Tta, WindowSettings};
