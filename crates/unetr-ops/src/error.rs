//! Errors of the ops crate. They are wrapped into `candle_core::Error` so the ops compose with candle,
//! and keep the op name and the offending shapes in the message.

use candle_core::DType;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{op}: expected {expected}, got shape {got:?}")]
    Rank {
        op: &'static str,
        expected: &'static str,
        got: Vec<usize>,
    },
    #[error("{op}: {msg} (shapes: {shapes})")]
    Shape {
        op: &'static str,
        msg: String,
        shapes: String,
    },
    #[error("{op}: unsupported dtype {dtype:?} (supported: f32, f64)")]
    DType { op: &'static str, dtype: DType },
    #[error("{op}: dtype mismatch: {a:?} vs {b:?}")]
    DTypeMismatch {
        op: &'static str,
        a: DType,
        b: DType,
    },
    #[error("{op}: {msg}")]
    Param { op: &'static str, msg: String },
}

impl From<OpsError> for candle_core::Error {
    fn from(e: OpsError) -> Self {
        candle_core::Error::wrap(e)
    }
}

pub(crate) fn shape_err(
    op: &'static str,
    msg: impl Into<String>,
    shapes: &[&[usize]],
) -> candle_core::Error {
    let shapes = shapes
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    OpsError::Shape {
        op,
        msg: msg.into(),
        shapes,
    }
    .into()
}

/// Checks that a tensor's dtype is one the CPU kernels implement.
pub(crate) fn check_float(op: &'static str, dtype: DType) -> candle_core::Result<()> {
    match dtype {
        // bf16 has CUDA kernels; elsewhere bf16 and f16 compute in f32 (see `crate::dtype`).
        DType::F32 | DType::F64 | DType::BF16 | DType::F16 => Ok(()),
        dtype => Err(OpsError::DType { op, dtype }.into()),
    }
}
