//! `unetr inspect`: shape, data type, spacing, orientation, affine and intensity range of NIfTI volumes.

use anyhow::{bail, Result};
use std::path::PathBuf;
use unetr_data::nifti::{read_nifti, NonFinite, ReadOptions};
use unetr_data::MemoryLimit;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// NIfTI files (.nii, .nii.gz).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Largest allocation a file may cause, e.g. "8GiB".
    #[arg(long, default_value_t = MemoryLimit::default())]
    pub memory_limit: MemoryLimit,
}

/// Like nibabel's nib-ls: shape, type, spacing, orientation, affine and intensity range per file.
pub fn run(a: Args) -> Result<()> {
    let mut failed = 0;
    for f in &a.files {
        match read_nifti(f, &ReadOptions { nonfinite: NonFinite::Keep, max_bytes: a.memory_limit.bytes_usize() }) {
            Err(e) => {
                failed += 1;
                println!("{}: ERROR {e}", f.display());
            }
            Ok(v) => {
                let h = &v.header;
                let (mut lo, mut hi, mut nonfinite) = (f32::INFINITY, f32::NEG_INFINITY, 0usize);
                for &x in &v.data {
                    if x.is_finite() {
                        lo = lo.min(x);
                        hi = hi.max(x);
                    } else {
                        nonfinite += 1;
                    }
                }
                let sp = v.spacing();
                println!("{}", f.display());
                println!("  shape       {:?} x {} channel(s)", h.dims, h.channels);
                println!("  dtype       {} (scl_slope {}, scl_inter {})", h.datatype, h.scl_slope, h.scl_inter);
                println!("  spacing     {:.4} x {:.4} x {:.4} mm", sp[0], sp[1], sp[2]);
                println!("  orientation {} (sform_code {}, qform_code {})", v.orientation(), h.sform_code, h.qform_code);
                for r in h.affine {
                    println!("  affine      [{:9.4} {:9.4} {:9.4} {:9.4}]", r[0], r[1], r[2], r[3]);
                }
                println!("  range       [{lo}, {hi}]{}", if nonfinite > 0 { format!(", {nonfinite} NaN/Inf voxel(s)") } else { String::new() });
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} file(s) could not be read", a.files.len());
    }
    Ok(())
}

