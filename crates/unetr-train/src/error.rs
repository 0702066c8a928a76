use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] unetr_data::DataError),
    #[error(transparent)]
    Model(#[from] unetr_model::ModelError),
    #[error(transparent)]
    Infer(#[from] unetr_infer::InferError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A setting out of range or inconsistent with the data, named.
    #[error("{0}")]
    Config(String),
    /// A problem with one file or folder, named.
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
}

pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn ferr(path: &Path, msg: impl std::fmt::Display) -> TrainError {
    TrainError::File { path: path.to_path_buf(), msg: msg.to_string() }
}
