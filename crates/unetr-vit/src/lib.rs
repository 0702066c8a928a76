//! The ViT encoder of UNETR, layer for layer as MONAI's `monai.networks.nets.ViT` (classification off):
//! 3D patch embedding ("conv" or "perceptron"), learnable position embedding, pre-norm transformer blocks
//! (multi-head self-attention, MLP with exact GELU), final LayerNorm. Every layer is built by
//! `new(cfg, vb.pp(name))` with MONAI's state-dict names, so MONAI weights load by name.

mod layers;
mod vit;

pub use layers::{dropout, DropoutRng, LayerNorm, Linear};
pub use vit::{MlpBlock, PatchEmbeddingBlock, ProjType, SABlock, TransformerBlock, Vit, VitConfig, VitOutput};

/// The tensor library this crate's API is written in (so users need no separate, matching dependency).
pub use candle_core;
pub use candle_nn;
