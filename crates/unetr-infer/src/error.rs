use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Data(#[from] unetr_data::DataError),
    #[error(transparent)]
    Model(#[from] unetr_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A setting (config field or command-line option) out of range, named.
    #[error("{0}")]
    Config(String),
    /// A problem with one file or folder, named.
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
}

pub type Result<T> = std::result::Result<T, InferError>;

pub(crate) fn ferr(path: &Path, msg: impl std::fmt::Display) -> InferError {
    InferError::File { path: path.to_path_buf(), msg: msg.to_string() }
}
