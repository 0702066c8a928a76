//! CUDA forward passes of the custom ops (feature `cuda`): the kernels of unetr-kernels (PTX built by nvcc at
//! build time), loaded into candle's CUDA device on first use. Each op's backward is expressed through ops
//! that also run here, as on the CPU.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

pub use crate::conv::Kind as ConvKind;

#[cfg(feature = "cudnn")]
pub mod cudnn;
pub mod memory;

const THREADS: u32 = 256;

/// Kernel-name suffix of a dtype.
pub fn suffix(op: &'static str, dt: DType) -> Result<&'static str> {
    match dt {
        DType::F32 => Ok("f32"),
        DType::F64 => Ok("f64"),
        DType::BF16 => Ok("bf16"),
        dtype => Err(crate::error::OpsError::DType { op, dtype }.into()),
    }
}

/// The kernel entry point `name` (`<kernel>_<dtype>`) with the stream it runs on (candle's device stream).
pub fn func(dev: &CudaDevice, name: &str) -> Result<(CudaFunction, Arc<CudaStream>)> {
    let module = unetr_kernels::module_of(name).ok_or_else(|| candle_core::Error::Msg(format!("internal: no CUDA kernel {name} in unetr-kernels")))?;
    Ok(((*dev.get_or_load_custom_func(name, module.name, module.ptx())?).clone(), dev.cuda_stream()))
}

fn view<'a, T: CudaDType + DeviceRepr>(op: &'static str, s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| crate::error::OpsError::Param { op, msg: format!("internal: non-contiguous layout {:?} reached the CUDA kernel", l.shape()) })?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

fn grid(total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// One block per item (reductions), at most 2^20 blocks (the kernels loop beyond).
fn blocks(items: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (items.clamp(1, 1 << 20) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Runs `$body` with `$t` bound to the Rust element type of `$dt`.
macro_rules! with_dtype {
    ($op:expr, $dt:expr, $t:ident => $body:expr) => {
        match $dt {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $body
            }
            candle_core::DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            dtype => Err(crate::error::OpsError::DType { op: $op, dtype }.into()),
        }
    };
}

/// Mirrors `Geom` in unetr-kernels' conv3d.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Geom {
    pub n: i32,
    pub ci: i32,
    pub co: i32,
    pub input: [i32; 3],
    pub kernel: [i32; 3],
    pub stride: [i32; 3],
    pub padding: [i32; 3],
    pub output: [i32; 3],
}
// SAFETY: plain old data with the C layout of the kernel's struct.
unsafe impl DeviceRepr for Geom {}

impl Geom {
    pub fn of(g: &crate::kernels::conv3d::ConvGeom) -> Self {
        let c = |v: [usize; 3]| v.map(|x| x as i32);
        Self { n: g.n as i32, ci: g.ci as i32, co: g.co as i32, input: c(g.input), kernel: c(g.kernel), stride: c(g.stride), padding: c(g.padding), output: c(g.output) }
    }
}

/// Which implementation runs the convolutions on a CUDA device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvBackend {
    /// cuDNN's N-d convolution (feature `cudnn`, on by default in the binaries' `cuda` builds).
    Cudnn,
    /// Our direct kernels (unetr-kernels' `conv3d.cu`): the fallback, and a second reference in `gpu-check`.
    Direct,
}

static CONV_BACKEND: AtomicU8 = AtomicU8::new(if cfg!(feature = "cudnn") { 0 } else { 1 });

/// Chooses the convolution implementation for every later call (all threads). Asking for cuDNN in a build
/// without the `cudnn` feature is an error.
pub fn set_conv_backend(b: ConvBackend) -> Result<()> {
    if b == ConvBackend::Cudnn && !cfg!(feature = "cudnn") {
        return Err(candle_core::Error::Msg("cuDNN convolutions need a build with the `cudnn` feature".into()));
    }
    CONV_BACKEND.store(if b == ConvBackend::Cudnn { 0 } else { 1 }, Ordering::Relaxed);
    Ok(())
}

/// The convolution implementation in use.
pub fn conv_backend() -> ConvBackend {
    if CONV_BACKEND.load(Ordering::Relaxed) == 0 {
        ConvBackend::Cudnn
    } else {
        ConvBackend::Direct
    }
}

/// Convolution `kind` on (x, w) for the forward, (dy, w) for the input gradient or (x, dy) for the weight
/// gradient; `out_len` elements. cuDNN where chosen and able to take the geometry, else the direct kernels.
pub fn conv(kind: ConvKind, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout, g: &crate::kernels::conv3d::ConvGeom, out_len: usize) -> Result<CudaStorage> {
    #[cfg(feature = "cudnn")]
    if conv_backend() == ConvBackend::Cudnn && cudnn::supports(g) {
        return cudnn::conv(kind, s1, l1, s2, l2, g, out_len);
    }
    conv_direct(kind, s1, l1, s2, l2, g, out_len)
}

/// [`conv`] by our direct kernels.
pub fn conv_direct(kind: ConvKind, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout, g: &crate::kernels::conv3d::ConvGeom, out_len: usize) -> Result<CudaStorage> {
    const OP: &str = "conv3d (cuda)";
    let dev = s1.device().clone();
    let sfx = suffix(OP, s1.dtype())?;
    let name = match kind {
        ConvKind::Fwd => "fwd",
        ConvKind::BwdInput => "bwd_input",
        ConvKind::BwdWeight => "bwd_weight",
    };
    let f = func(&dev, &format!("conv3d_{name}_{sfx}"))?;
    let geom = Geom::of(g);
    let cfg = if kind == ConvKind::BwdWeight { blocks(out_len) } else { grid(out_len) };
    with_dtype!(OP, s1.dtype(), T => {
        let (a, b) = (view::<T>(OP, s1, l1)?, view::<T>(OP, s2, l2)?);
        // SAFETY: every element is written by the kernel.
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(out_len)? };
        let mut bld = f.1.launch_builder(&f.0);
        bld.arg(&a);
        bld.arg(&b);
        bld.arg(&out);
        bld.arg(&geom);
        // SAFETY: argument types match the kernel signature.
        unsafe { bld.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    })
}

/// Group normalisation forward (`dy` None) or backward (`dy` Some), as kernels::norm.
#[allow(clippy::too_many_arguments)]
pub fn norm(x: &CudaStorage, lx: &Layout, dy: Option<(&CudaStorage, &Layout)>, groups: usize, segs: usize, len: usize, eps: f64, slope: Option<f64>) -> Result<CudaStorage> {
    const OP: &str = "norm (cuda)";
    let dev = x.device().clone();
    let sfx = suffix(OP, x.dtype())?;
    let f = func(&dev, &format!("{}_{sfx}", if dy.is_some() { "norm_bwd" } else { "norm_fwd" }))?;
    let (g, s, l) = (groups as i64, segs as i64, len as i64);
    let (act, sl) = (slope.is_some() as i32, slope.unwrap_or(1.0));
    with_dtype!(OP, x.dtype(), T => {
        let xv = view::<T>(OP, x, lx)?;
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(groups * segs * len)? };
        let dyv = match dy {
            Some((d, ld)) => Some(view::<T>(OP, d, ld)?),
            None => None,
        };
        let mut bld = f.1.launch_builder(&f.0);
        bld.arg(&xv);
        if let Some(d) = &dyv {
            bld.arg(d);
        }
        bld.arg(&out);
        bld.arg(&g);
        bld.arg(&s);
        bld.arg(&l);
        bld.arg(&eps);
        bld.arg(&act);
        bld.arg(&sl);
        // SAFETY: argument types match the kernel signature.
        unsafe { bld.launch(blocks(groups)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    })
}

pub fn leaky_relu(x: &CudaStorage, l: &Layout, slope: f64) -> Result<CudaStorage> {
    const OP: &str = "leaky_relu (cuda)";
    let dev = x.device().clone();
    let f = func(&dev, &format!("leaky_relu_{}", suffix(OP, x.dtype())?))?;
    let n = l.shape().elem_count();
    with_dtype!(OP, x.dtype(), T => {
        let xv = view::<T>(OP, x, l)?;
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(n)? };
        let n64 = n as i64;
        let mut bld = f.1.launch_builder(&f.0);
        bld.arg(&xv);
        bld.arg(&out);
        bld.arg(&n64);
        bld.arg(&slope);
        // SAFETY: argument types match the kernel signature.
        unsafe { bld.launch(grid(n)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    })
}

pub fn softmax(x: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    const OP: &str = "softmax_last_dim (cuda)";
    let dev = x.device().clone();
    let f = func(&dev, &format!("softmax_{}", suffix(OP, x.dtype())?))?;
    let n = l.shape().elem_count();
    let d = l.dims().last().copied().unwrap_or(1).max(1);
    with_dtype!(OP, x.dtype(), T => {
        let xv = view::<T>(OP, x, l)?;
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(n)? };
        let (rows, d64) = ((n / d) as i64, d as i64);
        let mut bld = f.1.launch_builder(&f.0);
        bld.arg(&xv);
        bld.arg(&out);
        bld.arg(&rows);
        bld.arg(&d64);
        // SAFETY: argument types match the kernel signature.
        unsafe { bld.launch(blocks(n / d)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    })
}

/// Attention sizes: (batch x heads, query length, key length, head dim).
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub bh: usize,
    pub l: usize,
    pub lk: usize,
    pub dh: usize,
}

/// Fused attention forward: o [bh, l, dh] (the log-sum-exp is recomputed by the backward).
pub fn attn_fwd(q: (&CudaStorage, &Layout), k: (&CudaStorage, &Layout), v: (&CudaStorage, &Layout), d: AttnDims, scale: f64) -> Result<CudaStorage> {
    const OP: &str = "attention (cuda)";
    let dev = q.0.device().clone();
    let f = func(&dev, &format!("attn_fwd_{}", suffix(OP, q.0.dtype())?))?;
    let rows = d.bh * d.l;
    with_dtype!(OP, q.0.dtype(), T => {
        let (qv, kv, vv) = (view::<T>(OP, q.0, q.1)?, view::<T>(OP, k.0, k.1)?, view::<T>(OP, v.0, v.1)?);
        let o: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * d.dh)? };
        let lse: CudaSlice<f32> = unsafe { dev.alloc::<f32>(rows)? };
        launch_attn_fwd(&f, &qv, &kv, &vv, &o, &lse, d, scale, rows)?;
        Ok(CudaStorage::wrap_cuda_slice(o, dev))
    })
}

#[allow(clippy::too_many_arguments)]
fn launch_attn_fwd<T: DeviceRepr>(f: &(CudaFunction, Arc<CudaStream>), q: &CudaView<T>, k: &CudaView<T>, v: &CudaView<T>, o: &CudaSlice<T>, lse: &CudaSlice<f32>, d: AttnDims, scale: f64, rows: usize) -> Result<()> {
    let (bh, l, lk, dh) = (d.bh as i32, d.l as i32, d.lk as i32, d.dh as i32);
    let mut bld = f.1.launch_builder(&f.0);
    bld.arg(q);
    bld.arg(k);
    bld.arg(v);
    bld.arg(o);
    bld.arg(lse);
    bld.arg(&bh);
    bld.arg(&l);
    bld.arg(&lk);
    bld.arg(&dh);
    bld.arg(&scale);
    // SAFETY: argument types match the kernel signature.
    unsafe { bld.launch(grid(rows)) }.w()?;
    Ok(())
}

/// Fused attention backward: (q, k, v packed flat as [q | k | v], o, dout) -> [dq | dk | dv] flat.
pub fn attn_bwd(qkv: (&CudaStorage, &Layout), o: (&CudaStorage, &Layout), dout: (&CudaStorage, &Layout), d: AttnDims, scale: f64) -> Result<CudaStorage> {
    const OP: &str = "attention backward (cuda)";
    let dev = qkv.0.device().clone();
    let sfx = suffix(OP, qkv.0.dtype())?;
    let (ff, fq, fkv) = (func(&dev, &format!("attn_fwd_{sfx}"))?, func(&dev, &format!("attn_bwd_q_{sfx}"))?, func(&dev, &format!("attn_bwd_kv_{sfx}"))?);
    let (nq, nk) = (d.bh * d.l * d.dh, d.bh * d.lk * d.dh);
    let (rows, krows) = (d.bh * d.l, d.bh * d.lk);
    let (bh, l, lk, dh) = (d.bh as i32, d.l as i32, d.lk as i32, d.dh as i32);
    with_dtype!(OP, qkv.0.dtype(), T => {
        let all = view::<T>(OP, qkv.0, qkv.1)?;
        let (q, k, v) = (all.slice(0..nq), all.slice(nq..nq + nk), all.slice(nq + nk..nq + 2 * nk));
        let (ov, dov) = (view::<T>(OP, o.0, o.1)?, view::<T>(OP, dout.0, dout.1)?);
        // The log-sum-exp, recomputed (cheaper to store nothing across the autograd boundary).
        let o2: CudaSlice<T> = unsafe { dev.alloc::<T>(nq)? };
        let lse: CudaSlice<f32> = unsafe { dev.alloc::<f32>(rows)? };
        launch_attn_fwd(&ff, &q, &k, &v, &o2, &lse, d, scale, rows)?;
        let delta: CudaSlice<f32> = unsafe { dev.alloc::<f32>(rows)? };
        let grads: CudaSlice<T> = unsafe { dev.alloc::<T>(nq + 2 * nk)? };
        {
            let dq = grads.slice(0..nq);
            let mut bld = fq.1.launch_builder(&fq.0);
            bld.arg(&q);
            bld.arg(&k);
            bld.arg(&v);
            bld.arg(&ov);
            bld.arg(&dov);
            bld.arg(&lse);
            bld.arg(&dq);
            bld.arg(&delta);
            bld.arg(&bh);
            bld.arg(&l);
            bld.arg(&lk);
            bld.arg(&dh);
            bld.arg(&scale);
            // SAFETY: argument types match the kernel signature.
            unsafe { bld.launch(grid(rows)) }.w()?;
        }
        {
            let (dk, dv) = (grads.slice(nq..nq + nk), grads.slice(nq + nk..nq + 2 * nk));
            let mut bld = fkv.1.launch_builder(&fkv.0);
            bld.arg(&q);
            bld.arg(&k);
            bld.arg(&v);
            bld.arg(&dov);
            bld.arg(&lse);
            bld.arg(&delta);
            bld.arg(&dk);
            bld.arg(&dv);
            bld.arg(&bh);
            bld.arg(&l);
            bld.arg(&lk);
            bld.arg(&dh);
            bld.arg(&scale);
            // SAFETY: argument types match the kernel signature.
            unsafe { bld.launch(grid(krows)) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(grads, dev))
    })
}
