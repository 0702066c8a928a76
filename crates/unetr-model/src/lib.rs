//! UNETR (Hatamizadeh et al., WACV 2022) as `monai.networks.nets.UNETR` builds it, with MONAI's
//! state-dict names: [`UnetrConfig`] (MONAI's constructor arguments, plus patch size and depth),
//! [`Unetr`], weight loading from `.safetensors` / `.pth` and saving, and analytic parameter / FLOP counts.

mod config;
mod error;
mod flops;
mod pth;
mod segments;
mod unetr;
mod weights;

pub use config::UnetrConfig;
pub use error::ModelError;
pub use flops::{count_macs, count_params, layer_costs, LayerCost, LayerShape, OpKind};
pub use config::DecoderKind;
pub use segments::{Checkpointing, StepGrads};
pub use unetr::{Decoder, Features, Unetr, UnetrDecoder};
pub use weights::{load_state_dict, read_tensor, save_safetensors, write_safetensors, LoadReport, Trainable, UnetrWeights};
pub use unetr_decoder::NormKind;
pub use unetr_vit::ProjType;

/// The tensor library this crate's API is written in (so users need no separate, matching dependency).
pub use candle_core;
pub use candle_nn;
