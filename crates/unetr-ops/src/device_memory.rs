//! Peak device memory on any device, as `torch.cuda.max_memory_allocated` / `reset_peak_memory_stats`: on a
//! CUDA device the memory pool's high-water mark (`cuda::memory`); the CPU has no device memory (None),
//! its peak is the process's (RSS, or unetr-alloc's live bytes).

use candle_core::{Device, Result};

/// The most bytes tensors have held at once on `dev` since the start or the last [`reset_peak`].
pub fn peak_bytes(dev: &Device) -> Result<Option<u64>> {
    match dev {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => crate::cuda::memory::peak_bytes(d).map(Some),
        _ => Ok(None),
    }
}

/// Starts a new high-water mark on `dev` from the bytes in use now (nothing to do on the CPU).
pub fn reset_peak(dev: &Device) -> Result<()> {
    match dev {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => crate::cuda::memory::reset_peak(d),
        _ => Ok(()),
    }
}
