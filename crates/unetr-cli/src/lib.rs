//! The `unetr` command line as a library: each command's options and its `run` (`commands`), and the
//! process setup both the `unetr` binary and `cargo xtask` use (`alloc`, `threads`). Relative paths on the command
//! line are relative to the working directory; paths inside a config, to the config file's folder.

pub mod alloc;
pub mod commands;
pub mod threads;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "unetr", version, about = "UNETR for 3D medical image segmentation: train, infer, eval (MONAI-compatible weights and data)")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train UNETR (default: a small model on the built-in phantom data).
    Train(commands::train::Args),
    /// Segment volumes with a trained checkpoint; label maps on each input's grid.
    Infer(commands::infer::Args),
    /// Dice and HD95 per case and class of a checkpoint on a datalist split.
    Eval(commands::eval::Args),
    /// Shape, data type, spacing, orientation, affine and intensity range of NIfTI volumes.
    Inspect(commands::inspect::Args),
    /// One UNETR forward pass: MONAI config + weights + input tensor -> logits.
    Forward(commands::forward::Args),
    /// Write the built-in phantom dataset (NIfTI + dataset.json).
    Phantom(commands::phantom::Args),
}

impl Command {
    /// How the command uses memory (see [`alloc::configure`]).
    pub fn profile(&self) -> alloc::Profile {
        match self {
            Command::Train(_) => alloc::Profile::Training,
            _ => alloc::Profile::Inference,
        }
    }

    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Train(a) => commands::train::run(a),
            Command::Infer(a) => commands::infer::run(a),
            Command::Eval(a) => commands::eval::run(a),
            Command::Inspect(a) => commands::inspect::run(a),
            Command::Forward(a) => commands::forward::run(a),
            Command::Phantom(a) => commands::phantom::run(a),
        }
    }
}

/// Runs a command and turns its result into the process's exit code: errors print as one readable chain
/// ("context: cause") on stderr, without a backtrace.
pub fn exit_code(r: anyhow::Result<()>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
