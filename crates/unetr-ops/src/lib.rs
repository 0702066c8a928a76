//! The tensor ops UNETR needs and candle 0.11 lacks, as candle ops with backward:
//! 3D convolution and transposed convolution, instance/batch/layer norm (optionally fused with
//! LeakyReLU), LeakyReLU, softmax, linear and multi-head attention. f32 and f64 on the CPU; with the `cuda`
//! feature also f32, f64 and bf16 on CUDA devices (the kernels of unetr-kernels, built to PTX by nvcc); NCDHW layout.
//!
//! Every function checks ranks, shapes and dtypes first and returns a `candle_core::Error` wrapping an
//! [`OpsError`] that names the op and the shapes, instead of panicking.

pub mod activation;
pub mod attention;
pub mod autograd;
pub mod conv;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device_memory;
pub mod dtype;
pub mod error;
pub mod kernels;
pub mod linear;
pub mod norm;
pub mod profile;
mod storage;

pub use activation::{add, add_, add_leaky_relu, add_leaky_relu_, gelu, leaky_relu, leaky_relu_backward_from_output, leaky_relu_backward_from_output_, softmax_last_dim};
pub use attention::attention;
pub use autograd::seed;
pub use conv::{conv3d, conv3d_, conv3d_backward, conv3d_backward_input, conv3d_backward_weight, conv3d_cat_, conv_transpose3d, conv_transpose3d_backward, Conv3dParams};
pub use dtype::cast_to;
pub use error::OpsError;
pub use linear::linear;
pub use norm::{
    batch_norm, instance_norm, instance_norm_, instance_norm_add_leaky_relu_,
    instance_norm_add_proj1_leaky_relu_, instance_norm_backward, instance_norm_backward_, instance_norm_leaky_relu, instance_norm_leaky_relu_,
    layer_norm, RunningStats,
};
pub use storage::inplace_ok;

/// The tensor library this crate's API is written in (so users need no separate, matching dependency).
pub use candle_core;
pub use candle_nn;
