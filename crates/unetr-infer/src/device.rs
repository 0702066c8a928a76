//! Device names on the command line and in configs.

use crate::error::{InferError, Result};
use candle_core::Device;

/// The device a name stands for: "cpu", "cuda" (GPU 0) or "cuda:N". A CUDA name in a build without the
/// `cuda` feature, or a GPU that cannot be opened, is an error that says so.
pub fn parse_device(name: &str) -> Result<Device> {
    let gpu = match name.trim() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => return Err(InferError::Config(format!("device {name:?}: expected \"cpu\", \"cuda\" or \"cuda:N\""))),
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(InferError::Config(format!("device {name:?}: this build has no CUDA support (build with --features cuda)")));
    }
    Device::new_cuda(gpu).map_err(|e| InferError::Config(format!("device {name:?}: {e}")))
}

/// Whether a device name is well-formed ("cpu", "cuda", "cuda:N"), without opening it.
pub fn check_device_name(name: &str) -> Result<()> {
    match name.trim() {
        "cpu" | "cuda" => Ok(()),
        other if other.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok()) => Ok(()),
        _ => Err(InferError::Config(format!("device {name:?}: expected \"cpu\", \"cuda\" or \"cuda:N\""))),
    }
}
