//! The CNN side of UNETR as MONAI builds it (`monai.networks.blocks.dynunet_block` and `unetr_block`):
//! conv layers, norms, `UnetResBlock` / `UnetBasicBlock`, the projection-upsampling `UnetrPrUpBlock`,
//! the skip-merging `UnetrUpBlock` and the 1x1x1 `UnetOutBlock`. Keys follow MONAI's state dict. Also the
//! SETR decoders of the paper's ablation (`setr`) and trilinear up-sampling (`upsample`).

mod blocks;
mod layers;
pub mod setr;
pub mod tape;
pub mod upsample;

pub use blocks::{ConvBlock, UnetBasicBlock, UnetOutBlock, UnetResBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock};
pub use layers::{Act, BatchNorm3d, ConvLayer, NormKind, NormLayer, Pass, TransConvLayer};

/// The tensor library this crate's API is written in (so users need no separate, matching dependency).
pub use candle_core;
pub use candle_nn;
