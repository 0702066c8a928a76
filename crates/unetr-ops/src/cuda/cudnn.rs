//! The three convolution kinds through cuDNN's N-d convolution (feature `cudnn`): forward, backward-data
//! (also the transposed convolution's forward) and backward-filter, in f32, f64 and bf16 (bf16 computes in
//! f32 with tensor-core math allowed). cuDNN's heuristics pick the algorithm once per device, kind, dtype
//! and geometry; the choice is cached with the handle, per thread, since cuDNN handles are neither `Send`
//! nor `Sync`. The workspace comes from candle's device allocator.

use super::{view, ConvKind};
use crate::kernels::conv3d::ConvGeom;
use candle_core::cuda_backend::cudarc::cudnn::{sys, ConvBackwardData, ConvBackwardFilter, ConvForward, Cudnn, CudnnDataType};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// An algorithm cuDNN picked for one kind of convolution.
#[derive(Clone, Copy)]
enum Algo {
    Fwd(sys::cudnnConvolutionFwdAlgo_t),
    Data(sys::cudnnConvolutionBwdDataAlgo_t),
    Filter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// What an algorithm choice depends on: device, kind, dtype and every size of the geometry.
type Key = (DeviceId, ConvKind, DType, [usize; 3], [[usize; 3]; 5]);

fn key(dev: &CudaDevice, kind: ConvKind, dt: DType, g: &ConvGeom) -> Key {
    (dev.id(), kind, dt, [g.n, g.ci, g.co], [g.input, g.kernel, g.stride, g.padding, g.output])
}

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    static ALGOS: RefCell<HashMap<Key, Algo>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream())?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

/// Whether cuDNN can take this geometry: every size and element count fits its 32-bit descriptors.
pub fn supports(g: &ConvGeom) -> bool {
    let fits = |v: usize| i32::try_from(v).is_ok();
    let vol = |s: [usize; 3]| s.iter().product::<usize>();
    [g.n, g.ci, g.co].into_iter().chain(g.input).chain(g.output).chain(g.kernel).all(fits)
        && g.n.checked_mul(g.ci.max(g.co)).and_then(|v| v.checked_mul(vol(g.input).max(vol(g.output)))).is_some_and(fits)
}

/// Dims and packed (NCDHW) strides of a 5-d tensor.
fn packed(dims: [usize; 5]) -> ([i32; 5], [i32; 5]) {
    let mut strides = [1i32; 5];
    for i in (0..4).rev() {
        strides[i] = strides[i + 1] * dims[i + 1] as i32;
    }
    (dims.map(|d| d as i32), strides)
}

/// Runs convolution `kind` on (`s1`, `s2`) as `crate::cuda::conv` documents; `out_len` elements.
pub fn conv(kind: ConvKind, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout, g: &ConvGeom, out_len: usize) -> Result<CudaStorage> {
    let dev = s1.device().clone();
    let out = match s1.dtype() {
        DType::F32 => CudaStorage::wrap_cuda_slice(run::<f32, f32>(kind, None, s1, l1, s2, l2, g, out_len, &dev)?, dev),
        DType::F64 => CudaStorage::wrap_cuda_slice(run::<f64, f64>(kind, None, s1, l1, s2, l2, g, out_len, &dev)?, dev),
        DType::BF16 => {
            let math = Some(sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION);
            CudaStorage::wrap_cuda_slice(run::<half::bf16, f32>(kind, math, s1, l1, s2, l2, g, out_len, &dev)?, dev)
        }
        dtype => return Err(crate::error::OpsError::DType { op: "conv3d (cudnn)", dtype }.into()),
    };
    Ok(out)
}

/// `T`: the tensors' element type; `C`: the compute type.
#[allow(clippy::too_many_arguments)]
fn run<T, C>(kind: ConvKind, math: Option<sys::cudnnMathType_t>, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout, g: &ConvGeom, out_len: usize, dev: &CudaDevice) -> Result<CudaSlice<T>>
where
    T: CudaDType + DeviceRepr + CudnnDataType + candle_core::WithDType,
    C: CudnnDataType,
{
    const OP: &str = "conv3d (cudnn)";
    let cudnn = handle(dev)?;
    let i = |v: [usize; 3]| v.map(|x| x as i32);
    let mut cd = cudnn.create_convnd::<C>(&i(g.padding), &i(g.stride), &[1, 1, 1], sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION)?;
    if let Some(m) = math {
        cd.set_math_type(m)?;
    }
    let [id, ih, iw] = g.input;
    let [od, oh, ow] = g.output;
    let [kd, kh, kw] = g.kernel;
    let (xd, xs) = packed([g.n, g.ci, id, ih, iw]);
    let (yd, ys) = packed([g.n, g.co, od, oh, ow]);
    let x = cudnn.create_nd_tensor::<T>(&xd, &xs)?;
    let y = cudnn.create_nd_tensor::<T>(&yd, &ys)?;
    let w = cudnn.create_nd_filter::<T>(sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, &[g.co, g.ci, kd, kh, kw].map(|v| v as i32))?;
    let (a, b) = (view::<T>(OP, s1, l1)?, view::<T>(OP, s2, l2)?);
    // SAFETY: with beta = 0 cuDNN writes every element of the output without reading it.
    let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(out_len)? };
    let k = key(dev, kind, T::DTYPE, g);
    let cached = ALGOS.with(|m| m.borrow().get(&k).copied());
    let scale = (T::from_f64(1.0), T::from_f64(0.0));
    let workspace = |bytes: usize| -> Result<Option<CudaSlice<u8>>> { if bytes == 0 { Ok(None) } else { Ok(Some(dev.alloc_zeros::<u8>(bytes)?)) } };
    let algo = match kind {
        ConvKind::Fwd => {
            let op = ConvForward { conv: &cd, x: &x, w: &w, y: &y };
            let algo = match cached {
                Some(Algo::Fwd(a)) => a,
                _ => op.pick_algorithm()?,
            };
            let mut ws = workspace(op.get_workspace_size(algo)?)?;
            // SAFETY: the descriptors describe `a` (x), `b` (w) and `out` (y): dtypes and packed layouts.
            unsafe { op.launch(algo, ws.as_mut(), scale, &a, &b, &mut out) }?;
            Algo::Fwd(algo)
        }
        ConvKind::BwdInput => {
            let op = ConvBackwardData { conv: &cd, dx: &x, w: &w, dy: &y };
            let algo = match cached {
                Some(Algo::Data(a)) => a,
                _ => op.pick_algorithm()?,
            };
            let mut ws = workspace(op.get_workspace_size(algo)?)?;
            // SAFETY: as above, with `a` = dy, `b` = w, `out` = dx.
            unsafe { op.launch(algo, ws.as_mut(), scale, &mut out, &b, &a) }?;
            Algo::Data(algo)
        }
        ConvKind::BwdWeight => {
            let op = ConvBackwardFilter { conv: &cd, x: &x, dw: &w, dy: &y };
            let algo = match cached {
                Some(Algo::Filter(a)) => a,
                _ => op.pick_algorithm()?,
            };
            let mut ws = workspace(op.get_workspace_size(algo)?)?;
            // SAFETY: as above, with `a` = x, `b` = dy, `out` = dw.
            unsafe { op.launch(algo, ws.as_mut(), scale, &a, &mut out, &b) }?;
            Algo::Filter(algo)
        }
    };
    if cached.is_none() {
        ALGOS.with(|m| m.borrow_mut().insert(k, algo));
    }
    Ok(out)
}
