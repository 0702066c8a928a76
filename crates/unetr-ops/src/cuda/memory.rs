//! Device memory in use, as PyTorch's `torch.cuda.max_memory_allocated` reports it: candle allocates through
//! cudarc's stream-ordered `cuMemAllocAsync`, so every tensor lives in the device's current memory pool,
//! and the pool keeps the high-water mark of the bytes in use (`CU_MEMPOOL_ATTR_USED_MEM_HIGH`).

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::{CudaDevice, Result};

fn check(what: &str, r: sys::CUresult) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(candle_core::Error::Msg(format!("CUDA {what}: {r:?}")))
    }
}

fn pool(dev: &CudaDevice) -> Result<sys::CUmemoryPool> {
    let ctx = dev.cuda_stream().context().clone();
    ctx.bind_to_thread().map_err(|e| candle_core::Error::Msg(format!("CUDA context: {e:?}")))?;
    if !ctx.has_async_alloc() {
        return Err(candle_core::Error::Msg("this GPU or driver has no stream-ordered allocator: device memory is not pooled, so no peak is kept".into()));
    }
    let mut p: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: a valid device of the bound context; the driver writes the handle.
    check("cuDeviceGetMemPool", unsafe { sys::cuDeviceGetMemPool(&mut p, ctx.cu_device()) })?;
    Ok(p)
}

fn attribute(dev: &CudaDevice, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let p = pool(dev)?;
    let mut v: u64 = 0;
    // SAFETY: the usage attributes are 64-bit unsigned integers.
    check("cuMemPoolGetAttribute", unsafe { sys::cuMemPoolGetAttribute(p, attr, &mut v as *mut u64 as *mut std::ffi::c_void) })?;
    Ok(v)
}

/// Bytes of device memory that tensors hold now.
pub fn used_bytes(dev: &CudaDevice) -> Result<u64> {
    attribute(dev, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
}

/// The most bytes tensors have held at once since the process started or the last [`reset_peak`].
pub fn peak_bytes(dev: &CudaDevice) -> Result<u64> {
    attribute(dev, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
}

/// Starts a new high-water mark from the bytes in use now.
pub fn reset_peak(dev: &CudaDevice) -> Result<()> {
    let p = pool(dev)?;
    let mut zero: u64 = 0;
    // SAFETY: resetting USED_MEM_HIGH takes a 64-bit zero.
    check("cuMemPoolSetAttribute", unsafe {
        sys::cuMemPoolSetAttribute(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, &mut zero as *mut u64 as *mut std::ffi::c_void)
    })
}
