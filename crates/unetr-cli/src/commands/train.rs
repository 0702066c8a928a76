//! `unetr train`: train UNETR from a TOML config (default: the built-in phantom preset).

use anyhow::Result;
use std::path::{Path, PathBuf};
use unetr_data::MemoryLimit;
use unetr_train::distributed::launch::Launch;
use unetr_train::{train, RunMode, TrainConfig};

/// The preset `unetr train` uses without --config (data/presets/phantom.toml).
pub const PHANTOM_PRESET: &str = include_str!("../../../../data/presets/phantom.toml");

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Training config (TOML); default: the built-in phantom preset (data/presets/phantom.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The run's folder (overrides output.dir; default: runs/NAME, NAME being the config file's name).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The datalist to train on (overrides data.dataset): a Decathlon or nnU-Net dataset.json.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Number of optimiser steps (overrides optim.steps).
    #[arg(long)]
    pub steps: Option<u64>,
    /// "cpu", "cuda" or "cuda:N" (overrides device; CUDA needs a build with --features cuda).
    #[arg(long)]
    pub device: Option<String>,
    /// Largest allocation a file may cause, e.g. "8GiB" (overrides memory_limit).
    #[arg(long)]
    pub memory_limit: Option<MemoryLimit>,
    /// Any config field, as TOML: --set optim.steps=100 --set device='"cpu"' (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue the run in the output folder from its checkpoint/.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace the run in the output folder (its checkpoints, logs, plots and predictions).
    #[arg(long)]
    pub overwrite: bool,
    /// Print the effective configuration and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Multi-GPU runs: a folder every rank sees, for handing NCCL's id from rank 0 to the others (default:
    /// TCP at MASTER_ADDR:MASTER_PORT+1).
    #[arg(long)]
    pub rendezvous_dir: Option<PathBuf>,
    /// Multi-GPU runs: seconds a rank waits for the others before giving up.
    #[arg(long, default_value_t = 600)]
    pub dist_timeout: u64,
}

impl Args {
    /// The effective configuration: the file (or the built-in preset), then --set, then the flags.
    pub fn config(&self) -> Result<TrainConfig> {
        let mut overrides = self.set.clone();
        if let Some(d) = &self.data {
            overrides.push(format!("data.dataset={:?}", d.display().to_string()));
        }
        if let Some(s) = self.steps {
            overrides.push(format!("optim.steps={s}"));
        }
        if let Some(d) = &self.device {
            overrides.push(format!("device=\"{d}\""));
        }
        if let Some(m) = self.memory_limit {
            overrides.push(format!("memory_limit=\"{m}\""));
        }
        let mut cfg = match &self.config {
            Some(p) => TrainConfig::load(p, &overrides)?,
            None => TrainConfig::from_text(PHANTOM_PRESET, Path::new("phantom.toml"), Path::new("."), &overrides)?,
        };
        if let Some(o) = &self.out {
            cfg.output.dir = o.clone();
        }
        Ok(cfg)
    }

    pub fn mode(&self) -> RunMode {
        match (self.resume, self.overwrite) {
            (true, _) => RunMode::Resume,
            (_, true) => RunMode::Overwrite,
            _ => RunMode::Fresh,
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg = a.config()?;
    if a.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let launch = Launch::from_env(|k| std::env::var(k).ok())?;
    let s = match launch {
        Some(l) if l.world > 1 => {
            cfg.device = l.device_name();
            let s = distributed(&cfg, &a, &l)?;
            if l.rank != 0 {
                return Ok(());
            }
            s
        }
        _ => train(&cfg, a.mode())?,
    };
    let per: Vec<String> = s.per_class.iter().zip(&s.class_names).skip(s.first_is_background as usize).map(|(d, n)| format!("{n} {}", d.map_or("-".into(), |v| format!("{v:.3}")))).collect();
    println!("final validation mean Dice {:.4} (best {:.4}): {}", s.final_dice, s.best_dice, per.join(", "));
    println!("trained in {:.0} s; outputs in {}", s.seconds, s.out_dir.display());
    Ok(())
}

/// One rank of a multi-GPU run (torchrun, srun, mpirun): `cuda:LOCAL_RANK`, NCCL between the ranks.
#[cfg(feature = "nccl")]
fn distributed(cfg: &unetr_train::TrainConfig, a: &Args, l: &Launch) -> Result<unetr_train::TrainSummary> {
    use unetr_train::distributed::nccl::{NcclComm, Rendezvous};
    let dev = unetr_infer::parse_device(&cfg.device)?;
    let job = ["TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "OMPI_MCA_orte_ess_jobid"].iter().find_map(|k| std::env::var(k).ok()).unwrap_or_else(|| "job".into());
    let rdv = Rendezvous::for_launch(l, a.rendezvous_dir.clone(), &job)?;
    let comm = NcclComm::new(l, &dev, &rdv, std::time::Duration::from_secs(a.dist_timeout))?;
    Ok(unetr_train::train_with(cfg, a.mode(), &comm)?)
}

#[cfg(not(feature = "nccl"))]
fn distributed(_cfg: &unetr_train::TrainConfig, a: &Args, l: &Launch) -> Result<unetr_train::TrainSummary> {
    let _ = (&a.rendezvous_dir, a.dist_timeout);
    anyhow::bail!("{} started rank {} of {}: multi-GPU training needs a build with --features nccl (CUDA and NCCL)", l.launcher, l.rank, l.world)
}
