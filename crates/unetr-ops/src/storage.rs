//! Glue between candle storages and the slice kernels.

use crate::error::OpsError;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, WithDType};

/// The contiguous f32/f64 data of a storage, or an error naming the op.
pub(crate) enum Data<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

pub(crate) fn data<'a>(op: &'static str, s: &'a CpuStorage, l: &Layout) -> Result<Data<'a>> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| OpsError::Param {
        op,
        msg: format!(
            "internal: non-contiguous layout {:?} reached the kernel",
            l.shape()
        ),
    })?;
    match s {
        CpuStorage::F32(v) => Ok(Data::F32(&v[a..b])),
        CpuStorage::F64(v) => Ok(Data::F64(&v[a..b])),
        other => Err(OpsError::DType {
            op,
            dtype: other.dtype(),
        }
        .into()),
    }
}

/// Both operands as the same float type, or a dtype-mismatch error.
pub(crate) enum Data2<'a> {
    F32(&'a [f32], &'a [f32]),
    F64(&'a [f64], &'a [f64]),
}

pub(crate) fn data2<'a>(
    op: &'static str,
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> Result<Data2<'a>> {
    match (data(op, s1, l1)?, data(op, s2, l2)?) {
        (Data::F32(a), Data::F32(b)) => Ok(Data2::F32(a, b)),
        (Data::F64(a), Data::F64(b)) => Ok(Data2::F64(a, b)),
        (a, b) => Err(OpsError::DTypeMismatch {
            op,
            a: a.dtype(),
            b: b.dtype(),
        }
        .into()),
    }
}

impl Data<'_> {
    fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
        }
    }
}

pub(crate) fn out<T: WithDType>(v: Vec<T>, shape: impl Into<Shape>) -> Result<(CpuStorage, Shape)> {
    Ok((T::to_cpu_storage_owned(v), shape.into()))
}

/// Runs a generic kernel on either float type.
macro_rules! dispatch {
    ($d:expr, |$x:ident| $body:expr) => {
        match $d {
            $crate::storage::Data::F32($x) => $body,
            $crate::storage::Data::F64($x) => $body,
        }
    };
}
macro_rules! dispatch2 {
    ($d:expr, |$x:ident, $y:ident| $body:expr) => {
        match $d {
            $crate::storage::Data2::F32($x, $y) => $body,
            $crate::storage::Data2::F64($x, $y) => $body,
        }
    };
}
pub(crate) use {dispatch, dispatch2};

/// The contiguous f32/f64 data of a storage, mutably (for in-place ops).
pub(crate) enum DataMut<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
}

pub(crate) fn data_mut<'a>(
    op: &'static str,
    s: &'a mut CpuStorage,
    l: &Layout,
) -> Result<DataMut<'a>> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| OpsError::Param {
        op,
        msg: format!("in-place op on a non-contiguous layout {:?}", l.shape()),
    })?;
    match s {
        CpuStorage::F32(v) => Ok(DataMut::F32(&mut v[a..b])),
        CpuStorage::F64(v) => Ok(DataMut::F64(&mut v[a..b])),
        other => Err(OpsError::DType {
            op,
            dtype: other.dtype(),
        }
        .into()),
    }
}

/// Why an in-place op cannot run on `x`, if it cannot: it needs a contiguous f32/f64 CPU tensor that tracks
/// no gradients.
fn inplace_problem(x: &candle_core::Tensor) -> Option<&'static str> {
    if !x.device().is_cpu() {
        Some("runs on the CPU only")
    } else if x.track_op() {
        Some("would corrupt the autograd graph (the tensor tracks gradients); use the out-of-place op")
    } else if !x.is_contiguous() {
        Some("needs a contiguous tensor")
    } else if !matches!(x.dtype(), DType::F32 | DType::F64) {
        Some("needs an f32 or f64 tensor")
    } else {
        None
    }
}

/// Whether the in-place ops (`instance_norm_`, `instance_norm_leaky_relu_`, `add_leaky_relu_`,
/// `instance_norm_add_leaky_relu_`, `instance_norm_add_proj1_leaky_relu_`, `conv3d_`, `conv3d_cat_`) accept
/// `x` (the convs also check their geometry).
pub fn inplace_ok(x: &candle_core::Tensor) -> bool {
    inplace_problem(x).is_none()
}

pub(crate) fn check_inplace(op: &'static str, x: &candle_core::Tensor) -> Result<()> {
    match inplace_problem(x) {
        None => Ok(()),
        Some(why) => Err(OpsError::Param {
            op,
            msg: format!("in-place {op} {why}"),
        }
        .into()),
    }
}

/// The contiguous data of a storage as `&mut [T]`, or a dtype-mismatch error (for generic in-place kernels).
pub(crate) fn slice_mut<'a, T: crate::kernels::Elem>(
    op: &'static str,
    s: &'a mut CpuStorage,
    l: &Layout,
) -> Result<&'a mut [T]> {
    use std::any::TypeId;
    let dtype = s.dtype();
    let same = |id| TypeId::of::<T>() == id;
    match data_mut(op, s, l)? {
        // SAFETY (both): T is the slice's element type, checked through TypeId.
        DataMut::F32(v) if same(TypeId::of::<f32>()) => {
            Ok(unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut T, v.len()) })
        }
        DataMut::F64(v) if same(TypeId::of::<f64>()) => {
            Ok(unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut T, v.len()) })
        }
        _ => Err(OpsError::DTypeMismatch {
            op,
            a: T::DTYPE,
            b: dtype,
        }
        .into()),
    }
}
