//! `cargo xtask`: the project's command line. It orchestrates; the logic lives in the library crates.

mod ablation;
mod bench_hd95;
mod bench_loader;
mod bench_train_memory;
mod bench_model;
mod bench_ops;
mod colin27;
mod compare;
mod docs;
mod gpu_check;
mod layering;
mod python;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::Command;
use unetr_cli::alloc::{self, Profile};
use unetr_cli::commands;

/// The allocator xtask shares with the `unetr` binary (its peak counters feed `bench`).
pub use unetr_cli::alloc::GLOBAL;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "UNETR in Rust: the user commands from a checkout, and the developer tasks (test, bench, fixtures, gpu-check)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// `unetr train`; without --config, the phantom preset into runs/phantom of the checkout.
    Train(commands::train::Args),
    /// `unetr infer`.
    Infer(commands::infer::Args),
    /// `unetr eval`.
    Eval(commands::eval::Args),
    /// `unetr forward`.
    Forward(commands::forward::Args),
    /// `unetr inspect`.
    Inspect(commands::inspect::Args),
    /// `unetr phantom`.
    Phantom(commands::phantom::Args),
    /// Every CUDA op and the model against the CPU, training steps, benchmarks: one report (--dry-run: CPU).
    GpuCheck(gpu_check::Args),
    /// The real-data experiment: Colin27 lobes, ours and MONAI's recipe side by side.
    Colin27(colin27::Args),
    /// The paper's ablation: every decoder (UNETR, NUP, PUP, MLA) and patch 16 vs 32, one table.
    Ablation(ablation::Args),
    /// Run the whole test suite (release-optimised, CPU).
    Test {
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Parameters, FLOPs, CPU latency and memory of UNETR against the paper and PyTorch + MONAI;
    /// `bench ops` times the individual ops.
    Bench {
        #[command(subcommand)]
        what: Option<BenchCmd>,
        #[command(flatten)]
        model: bench_model::Args,
    },
    /// The measuring process of `bench` (own process, so its peak memory is its own).
    #[command(hide = true)]
    BenchChild(bench_model::Args),
    /// Regenerate the PyTorch / MONAI parity fixtures (needs a Python with torch and monai; see README).
    Fixtures,
    /// Max-abs difference of two tensors stored in .safetensors files.
    Compare(compare::Args),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Forward and backward of every conv, transposed conv and norm shape of UNETR at 96^3 (f=16),
    /// side by side with PyTorch in the same run.
    Ops(bench_ops::Args),
    /// Training-data throughput (CacheDataset + prefetching loader) against MONAI's on the same files.
    Loader(bench_loader::Args),
    /// HD95 on a 512x512x200 volume, ours against MONAI's HausdorffDistanceMetric.
    Hd95(bench_hd95::Args),
    /// One training step under each activation checkpointing mode against PyTorch's: time, peak memory and
    /// the live-bytes timeline as a plot.
    TrainMemory(bench_train_memory::Args),
}

/// The checkout xtask was built in; a binary carried to another machine (the GPU run) uses the working
/// directory instead, which its script sets to the repository root.
pub fn repo_root() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the repo").to_path_buf();
    if built.join("benches").is_dir() {
        return built;
    }
    std::env::current_dir().unwrap_or(built)
}

impl Cmd {
    fn profile(&self) -> Profile {
        match self {
            Cmd::Infer(_) | Cmd::Eval(_) | Cmd::Forward(_) | Cmd::Inspect(_) => Profile::Inference,
            Cmd::BenchChild(a) if !a.is_train() => Profile::Inference,
            _ => Profile::Training,
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    alloc::configure(cli.cmd.profile());
    unetr_cli::threads::configure();
    alloc::init_tracing();
    unetr_cli::exit_code(run(cli))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Test { args } => {
            let status = Command::new(env!("CARGO"))
                .current_dir(repo_root())
                .args(["test", "--release", "--workspace"])
                .args(&args)
                .status()
                .context("running cargo test")?;
            if !status.success() {
                bail!("tests failed");
            }
            Ok(())
        }
        Cmd::Colin27(a) => colin27::run(a),
        Cmd::Ablation(a) => ablation::run(a),
        Cmd::GpuCheck(a) => gpu_check::run(a),
        Cmd::Bench {
            what: Some(BenchCmd::Ops(args)),
            ..
        } => bench_ops::run(args),
        Cmd::Bench {
            what: Some(BenchCmd::Loader(args)),
            ..
        } => bench_loader::run(args),
        Cmd::Bench {
            what: Some(BenchCmd::Hd95(args)),
            ..
        } => bench_hd95::run(args),
        Cmd::Bench {
            what: Some(BenchCmd::TrainMemory(args)),
            ..
        } => bench_train_memory::run(args),
        Cmd::Bench { what: None, model } => bench_model::run(model),
        Cmd::BenchChild(a) => bench_model::child(a),
        Cmd::Fixtures => {
            let py = python::find_torch().context("regenerating fixtures needs PyTorch")?;
            for s in [
                "scripts/gen_ops_fixtures.py",
                "scripts/gen_model_fixtures.py",
            ] {
                python::run_script(&py, &repo_root().join(s), &[])?;
            }
            Ok(())
        }
        Cmd::Compare(a) => compare::run(a),
        Cmd::Train(mut a) => {
            // The README's main job from a checkout: the preset's run folder in the checkout.
            if a.config.is_none() && a.out.is_none() {
                a.out = Some(repo_root().join("runs/phantom"));
            }
            commands::train::run(a)
        }
        Cmd::Infer(a) => commands::infer::run(a),
        Cmd::Eval(a) => commands::eval::run(a),
        Cmd::Forward(a) => commands::forward::run(a),
        Cmd::Inspect(a) => commands::inspect::run(a),
        Cmd::Phantom(a) => commands::phantom::run(a),
    }
}
