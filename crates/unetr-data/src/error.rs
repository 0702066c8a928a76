use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A problem with one file, named.
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    /// Several files missing or unreadable, all listed.
    #[error("{count} problem(s) with the datalist {datalist}:\n{list}")]
    Files { datalist: PathBuf, count: usize, list: String },
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn ferr(path: &Path, msg: impl std::fmt::Display) -> DataError {
    DataError::File { path: path.to_path_buf(), msg: msg.to_string() }
}

pub type Result<T> = std::result::Result<T, DataError>;
