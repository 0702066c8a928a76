//! `cargo xtask forward`: one UNETR forward pass from files, for parity checks against MONAI at any size.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use std::collections::HashMap;
use std::path::PathBuf;
use unetr_model::{read_tensor, write_safetensors, UnetrConfig, UnetrWeights};

#[derive(clap::Args)]
pub struct Args {
    /// JSON with MONAI's UNETR constructor arguments (plus optional patch_size, num_layers).
    #[arg(long)]
    config: PathBuf,
    /// MONAI weights: .safetensors or PyTorch .pth/.pt.
    #[arg(long)]
    weights: PathBuf,
    /// .safetensors with a tensor "input" (N, C, D, H, W).
    #[arg(long)]
    input: PathBuf,
    /// Receives a tensor "output" (the logits).
    #[arg(long)]
    output: PathBuf,
    /// Run the forward pass this many times and report each time (the output is the last one's).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

pub fn run(a: Args) -> Result<()> {
    let dev = Device::Cpu;
    let text = std::fs::read_to_string(&a.config).with_context(|| format!("{}: cannot read", a.config.display()))?;
    let cfg = UnetrConfig::from_json(&text).with_context(|| format!("{}", a.config.display()))?;
    let model = UnetrWeights::load(&cfg, &a.weights, &dev)?.inference_model()?;
    let x = read_tensor(&a.input, "input", &dev)?;
    if !x.dtype().is_float() {
        bail!("{}: \"input\" has dtype {:?}, expected a float type", a.input.display(), x.dtype());
    }
    let x = x.to_dtype(DType::F32)?;
    let nonfinite = x.flatten_all()?.to_vec1::<f32>()?.iter().filter(|v| !v.is_finite()).count();
    if nonfinite > 0 {
        bail!("{}: \"input\" holds {nonfinite} NaN/Inf value(s)", a.input.display());
    }
    let mut y = None;
    for _ in 0..a.repeat.max(1) {
        let t = std::time::Instant::now();
        let out = model.forward_t(&x, false).with_context(|| format!("{}", a.input.display()))?;
        eprintln!("forward {:?} -> {:?} in {:.3} s", x.dims(), out.dims(), t.elapsed().as_secs_f64());
        y = Some(out);
    }
    let y = y.expect("at least one run");
    write_safetensors(&HashMap::from([("output".to_string(), y)]), &a.output)?;
    Ok(())
}
