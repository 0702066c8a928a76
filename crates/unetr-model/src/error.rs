use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid UNETR config: {0}")]
    Config(String),
    #[error("input of shape {got:?} does not fit the model: {why}")]
    Input { got: Vec<usize>, why: String },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{path}: checkpoint does not match the model:\n{details}")]
    Checkpoint { path: PathBuf, details: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
