//! `cargo xtask inspect` and `cargo xtask phantom`.

use anyhow::{bail, Result};
use std::path::PathBuf;
use unetr_data::nifti::{read_nifti, NonFinite, ReadOptions};
use unetr_data::phantom::{write_dataset, PhantomConfig};

#[derive(clap::Args)]
pub struct InspectArgs {
    /// NIfTI files (.nii, .nii.gz).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Like nibabel's nib-ls: shape, type, spacing, orientation, affine and intensity range per file.
pub fn inspect(a: InspectArgs) -> Result<()> {
    let mut failed = 0;
    for f in &a.files {
        match read_nifti(f, &ReadOptions { nonfinite: NonFinite::Keep, ..Default::default() }) {
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

#[derive(clap::Args)]
pub struct PhantomArgs {
    /// Output folder (imagesTr/, labelsTr/, dataset.json).
    #[arg(long, default_value = "runs/phantom")]
    out: PathBuf,
    #[arg(long, default_value_t = 16)]
    cases: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn phantom(a: PhantomArgs) -> Result<()> {
    let cfg = PhantomConfig { cases: a.cases, seed: a.seed, ..Default::default() };
    let p = write_dataset(&cfg, &a.out)?;
    println!("{}", p.display());
    Ok(())
}
