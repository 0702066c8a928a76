//! `unetr phantom`: write the built-in phantom dataset (NIfTI + dataset.json).

use anyhow::{bail, Result};
use std::path::PathBuf;
use unetr_data::phantom::{write_dataset, PhantomConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output folder (imagesTr/, labelsTr/, dataset.json).
    #[arg(long, default_value = "runs/phantom-data")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub cases: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Replace a dataset already in the folder.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: Args) -> Result<()> {
    if !(2..=100_000).contains(&a.cases) {
        bail!("--cases {}: must be in 2..=100000", a.cases);
    }
    let cfg = PhantomConfig { cases: a.cases, validation: (a.cases / 4).max(1), test: a.cases / 8, seed: a.seed, ..Default::default() };
    let taken: Vec<&str> = ["dataset.json", "imagesTr", "labelsTr"].into_iter().filter(|n| a.out.join(n).exists()).collect();
    if !taken.is_empty() && !a.overwrite {
        bail!("{}: already holds a dataset ({}): pass --overwrite to replace it, or choose another folder", a.out.display(), taken.join(", "));
    }
    for n in ["imagesTr", "labelsTr"] {
        let d = a.out.join(n);
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(|e| anyhow::anyhow!("{}: {e}", d.display()))?;
        }
    }
    let p = write_dataset(&cfg, &a.out)?;
    println!("{}", p.display());
    Ok(())
}
