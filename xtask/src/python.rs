//! Finding a Python with PyTorch for the side-by-side benchmarks and fixture scripts.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const HOW_TO: &str = "python3 -m venv .venv && .venv/bin/pip install torch monai einops safetensors nibabel scipy";

/// `$UNETR_PYTHON`, else the repo's `.venv`, else `python3`, whichever imports torch first.
pub fn find_torch() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("UNETR_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(crate::repo_root().join(".venv/bin/python"));
    candidates.push(PathBuf::from("python3"));
    for c in candidates {
        let ok = Command::new(&c).args(["-c", "import torch"]).output().map(|o| o.status.success()).unwrap_or(false);
        if ok {
            return Ok(c);
        }
    }
    bail!("no Python with torch found (tried $UNETR_PYTHON, .venv, python3); make one with: {HOW_TO}")
}

/// Runs a script and returns its stdout; stderr passes through to the terminal.
pub fn run_script(py: &Path, script: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(py)
        .arg(script)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
