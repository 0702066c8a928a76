//! `cargo xtask`: the project's command line. It orchestrates; the logic lives in the library crates.

mod bench_loader;
mod bench_model;
mod bench_ops;
mod colin27;
mod compare;
mod data;
mod docs;
mod forward;
mod gpu_check;
mod infer;
mod python;
mod train;

use anyhow::{bail, Context, Result};

// UNETR's activations are 50-100 MB each. glibc maps every allocation above 32 MB afresh and unmaps it
// on free, so each op pays for zeroing new pages (30% of a training step, measured); mimalloc keeps and
// reuses freed memory.
// In inference, blocks of 256 KiB and more (activations, weights) are pooled by `unetr_alloc` with a bound
// at the live peak (see `main`); mimalloc serves the rest, and everything in training.
#[global_allocator]
static GLOBAL: unetr_alloc::Pooled<mimalloc::MiMalloc> =
    unetr_alloc::Pooled::new(mimalloc::MiMalloc);
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::Command;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "UNETR in Rust: build, test and benchmark"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every CUDA op and the model against the CPU, training steps, benchmarks: one report (--dry-run: CPU).
    GpuCheck(gpu_check::Args),
    /// The real-data experiment: Colin27 lobes, ours and MONAI's recipe side by side.
    Colin27(colin27::Args),
    /// Train UNETR (default: a small model on the built-in phantom data, data/presets/phantom.toml).
    Train(train::Args),
    /// Segment volumes with a trained checkpoint; label maps on each input's grid.
    Infer(infer::InferArgs),
    /// Dice and HD95 per class of a checkpoint on a datalist split.
    Eval(infer::EvalArgs),
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
    /// One UNETR forward pass: MONAI config + weights + input file -> logits file.
    Forward(forward::Args),
    /// Max-abs difference of two tensors stored in .safetensors files.
    Compare(compare::Args),
    /// Shape, data type, spacing, orientation, affine and intensity range of NIfTI volumes.
    Inspect(data::InspectArgs),
    /// Write the built-in phantom dataset (NIfTI + dataset.json).
    Phantom(data::PhantomArgs),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Forward and backward of every conv, transposed conv and norm shape of UNETR at 96^3 (f=16),
    /// side by side with PyTorch in the same run.
    Ops(bench_ops::Args),
    /// Training-data throughput (CacheDataset + prefetching loader) against MONAI's on the same files.
    Loader(bench_loader::Args),
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repo")
        .to_path_buf()
}

fn main() -> std::process::ExitCode {
    // Inference commands pool large blocks under the live peak (`unetr_alloc`, see GLOBAL above), and
    // mimalloc returns its small-object pages after 10 ms and commits its arena on demand, so that the peak
    // RSS stays at what the forward holds live (96^3: 0.90 -> 0.54 GB, docs/benchmarks.md). Training
    // steps allocate many sizes in an order a bounded pool serves poorly; there mimalloc serves everything
    // and keeps freed pages mapped for reuse (a step at 96^3: 10 s -> 7 s against returning them).
    let args: Vec<String> = std::env::args().collect();
    let inference = match args.get(1).map(String::as_str) {
        Some("forward" | "infer") => true,
        Some("bench-child") => {
            !args.windows(2).any(|w| w[0] == "--mode" && w[1] == "train")
                && !args.iter().any(|a| a == "--mode=train")
        }
        _ => false,
    };
    GLOBAL.set_pooling(inference);
    // SAFETY: plain option setters of the allocator, called before any worker thread exists.
    unsafe {
        // mimalloc's option numbers (the -sys crate exports no names for these two; same in v2 and v3).
        const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
        const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // (MIMALLOC_PURGE_DELAY / MIMALLOC_ARENA_EAGER_COMMIT in the environment take precedence)
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, if inference { 10 } else { -1 });
        }
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            libmimalloc_sys::mi_option_set(
                MI_OPTION_ARENA_EAGER_COMMIT,
                if inference { 0 } else { 1 },
            );
        }
    }
    // Library warnings (replaced NaN voxels, skipped keys) go to stderr; RUST_LOG overrides the level.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    // Errors print as one readable chain ("context: cause"), without a backtrace.
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
        Cmd::GpuCheck(a) => gpu_check::run(a),
        Cmd::Bench {
            what: Some(BenchCmd::Ops(args)),
            ..
        } => bench_ops::run(args),
        Cmd::Bench {
            what: Some(BenchCmd::Loader(args)),
            ..
        } => bench_loader::run(args),
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
        Cmd::Forward(a) => forward::run(a),
        Cmd::Compare(a) => compare::run(a),
        Cmd::Train(a) => train::run(a),
        Cmd::Infer(a) => infer::infer(a),
        Cmd::Eval(a) => infer::eval(a),
        Cmd::Inspect(a) => data::inspect(a),
        Cmd::Phantom(a) => data::phantom(a),
    }
}
