//! Volumetric data for UNETR, with MONAI's conventions: NIfTI volumes loaded channel-first as
//! [C, i, j, k] (the last voxel axis fastest, as nibabel's array indexed in C order), their affine
//! (voxel -> RAS+ world, sform else qform else pixdim), Decathlon datalists, and built-in phantom data.

pub mod datalist;
pub mod datasets;
pub mod error;
pub mod limits;
pub mod loader;
pub mod nifti;
pub mod phantom;
pub mod pipeline;
pub mod recipe;
pub mod transforms;
pub mod validate;

pub use datalist::{Datalist, Item};
pub use error::DataError;
pub use limits::MemoryLimit;
pub use nifti::{read_nifti, write_nifti, Affine, Header, NonFinite, ReadOptions, Volume};
pub use pipeline::{Compose, Transform, TransformSpec};
pub use recipe::TransformConfig;
pub use validate::Checks;
