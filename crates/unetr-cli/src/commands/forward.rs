//! `unetr forward`: one UNETR forward pass from files (MONAI config + weights + input tensor), for parity
//! checks against MONAI at any size.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use std::collections::HashMap;
use std::path::PathBuf;
use crate::commands::DeviceArgs;
use unetr_infer::{parse_device, OutputPlan, Overwrite};
use unetr_model::{read_tensor, write_safetensors, UnetrConfig, UnetrWeights};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// JSON with MONAI's UNETR constructor arguments (plus optional patch_size, num_layers).
    #[arg(long)]
    pub config: PathBuf,
    /// MONAI weights: .safetensors or PyTorch .pth/.pt.
    #[arg(long)]
    pub weights: PathBuf,
    /// .safetensors with a tensor "input" (N, C, D, H, W).
    #[arg(long)]
    pub input: PathBuf,
    /// Receives a tensor "output" (the logits).
    #[arg(long)]
    pub output: PathBuf,
    /// Run the forward pass this many times and report each time (the output is the last one's).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    #[command(flatten)]
    pub run: DeviceArgs,
    /// Replace an existing --output file.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: Args) -> Result<()> {
    if !(1..=1000).contains(&a.repeat) {
        bail!("--repeat {}: must be in 1..=1000", a.repeat);
    }
    let mut plan = OutputPlan::new();
    plan.add(a.output.clone());
    plan.check(&[a.config.clone(), a.weights.clone(), a.input.clone()], if a.overwrite { Overwrite::Allow } else { Overwrite::Refuse })?;
    let dev = parse_device(&a.run.device)?;
    let len = std::fs::metadata(&a.config).with_context(|| format!("{}: cannot read", a.config.display()))?.len();
    if len > 1 << 20 {
        bail!("{}: {len} bytes, not a UNETR config", a.config.display());
    }
    let text = std::fs::read_to_string(&a.config).with_context(|| format!("{}: cannot read", a.config.display()))?;
    let cfg = UnetrConfig::from_json(&text).with_context(|| format!("{}", a.config.display()))?;
    let limit = a.run.memory_limit.bytes();
    if std::fs::metadata(&a.input).map(|m| m.len()).unwrap_or(0) > limit {
        bail!("{}: over the memory limit of {}", a.input.display(), a.run.memory_limit);
    }
    let model = UnetrWeights::load(&cfg, &a.weights, &dev, limit)?.inference_model()?;
    let x = read_tensor(&a.input, "input", &dev)?;
    if !x.dtype().is_float() {
        bail!("{}: \"input\" has dtype {:?}, expected a float type", a.input.display(), x.dtype());
    }
    let want = [cfg.in_channels, cfg.img_size[0], cfg.img_size[1], cfg.img_size[2]];
    if x.rank() != 5 || x.dims()[1..] != want {
        bail!("{}: \"input\" has shape {:?}, the model takes (N, {}, {}, {}, {})", a.input.display(), x.dims(), want[0], want[1], want[2], want[3]);
    }
    let x = x.to_dtype(DType::F32)?;
    let nonfinite = x.flatten_all()?.to_vec1::<f32>()?.iter().filter(|v| !v.is_finite()).count();
    if nonfinite > 0 {
        bail!("{}: \"input\" holds {nonfinite} NaN/Inf value(s)", a.input.display());
    }
    let mut y = None;
    for _ in 0..a.repeat {
        let t = std::time::Instant::now();
        let out = model.forward_t(&x, false).with_context(|| format!("{}", a.input.display()))?;
        eprintln!("forward {:?} -> {:?} in {:.3} s", x.dims(), out.dims(), t.elapsed().as_secs_f64());
        y = Some(out);
    }
    let y = y.expect("at least one run");
    write_safetensors(&HashMap::from([("output".to_string(), y)]), &a.output)?;
    Ok(())
}
