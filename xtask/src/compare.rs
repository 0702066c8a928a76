//! `cargo xtask compare`: max-abs difference of two tensors in .safetensors files (for parity scripts).

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    a: PathBuf,
    #[arg(long, default_value = "output")]
    a_key: String,
    #[arg(long)]
    b: PathBuf,
    #[arg(long, default_value = "output")]
    b_key: String,
    /// Fail when the max-abs difference exceeds this.
    #[arg(long, default_value_t = 1e-4)]
    tol: f64,
}

pub fn run(a: Args) -> Result<()> {
    let x = unetr_model::read_tensor(&a.a, &a.a_key, &Device::Cpu)?.to_dtype(DType::F64)?;
    let y = unetr_model::read_tensor(&a.b, &a.b_key, &Device::Cpu)?.to_dtype(DType::F64)?;
    if x.dims() != y.dims() {
        bail!("shapes differ: {:?} vs {:?}", x.dims(), y.dims());
    }
    let d = (x - y)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    println!("max-abs difference {d:.3e} (tolerance {:.1e})", a.tol);
    if !(d <= a.tol) {
        bail!("difference {d:.3e} exceeds {:.1e}", a.tol);
    }
    Ok(())
}
