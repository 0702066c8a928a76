//! `cargo xtask train`: the main job. With no arguments it trains a small UNETR on the built-in phantoms.

use anyhow::{Context, Result};
use std::path::PathBuf;
use unetr_train::trainer::{train, TrainConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Training config (TOML); default: data/presets/phantom.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder (overrides the config's output.dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Number of optimiser steps (overrides optim.steps).
    #[arg(long)]
    steps: Option<u64>,
    /// "cpu", "cuda" or "cuda:N" (overrides the config's device; CUDA needs a build with --features cuda).
    #[arg(long)]
    device: Option<String>,
    /// Continue from <out>/checkpoint.
    #[arg(long)]
    resume: bool,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

pub fn run(a: Args) -> Result<()> {
    let path = a.config.unwrap_or_else(|| crate::repo_root().join("data/presets/phantom.toml"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut cfg = TrainConfig::from_toml(&text, &path)?;
    if let Some(o) = a.out {
        cfg.output.dir = o;
    }
    if let Some(s) = a.steps {
        cfg.optim.steps = s;
    }
    if let Some(d) = a.device {
        cfg.device = d;
    }
    // Relative paths in presets are relative to the repository root.
    if cfg.output.dir.is_relative() {
        cfg.output.dir = crate::repo_root().join(&cfg.output.dir);
    }
    if let Some(d) = cfg.data.dataset.as_mut().filter(|d| d.is_relative()) {
        *d = crate::repo_root().join(&*d);
    }
    if a.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let s = train(&cfg, a.resume)?;
    println!("final validation mean Dice {:.4} (best {:.4}); per class {:?}", s.final_dice, s.best_dice, s.per_class);
    println!("trained in {:.0} s; outputs in {}", s.seconds, s.out_dir.display());
    Ok(())
}
