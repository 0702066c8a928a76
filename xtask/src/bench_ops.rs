//! `cargo xtask bench ops`: every conv, transposed-conv and norm shape that UNETR (BTCV config,
//! feature_size 16, 96^3, batch 1) runs, forward and backward, ours and PyTorch's in the same run.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;
use candle_core::{Device, Tensor, Var};
use unetr_model::{layer_costs, LayerShape, UnetrConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Timed runs per measurement (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Skip the PyTorch side.
    #[arg(long)]
    no_pytorch: bool,
    /// Only cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Write the table into docs/benchmarks.md.
    #[arg(long)]
    write_docs: bool,
    /// Also write all figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Case {
    pub name: String,
    /// "conv", "convt", "in_lrelu" (instance norm + LeakyReLU 0.01) or "in".
    pub kind: String,
    pub ci: usize,
    pub co: usize,
    /// Spatial size of the input.
    pub size: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// How often UNETR runs this shape in one forward pass.
    pub count: usize,
}

/// The conv, transposed-conv and norm shapes of MONAI's UNETR(1 -> 14, 96^3, feature_size 16), with their
/// multiplicity: derived from the model's layer list (`unetr_model::layer_costs`).
pub fn unetr_cases() -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    for l in layer_costs(&UnetrConfig::btcv()) {
        let case = match l.shape {
            LayerShape::Conv { ci, co, kernel, stride, padding, input } => {
                let name = if kernel[0] == stride[0] && kernel[0] > 1 { format!("patch k{}s{} {ci}->{co} @{}", kernel[0], stride[0], input[0]) } else { format!("conv{} {ci}->{co} @{}", kernel[0], input[0]) };
                Case { name, kind: "conv".into(), ci, co, size: input[0], kernel: kernel[0], stride: stride[0], padding: padding[0], count: 1 }
            }
            LayerShape::TransposedConv { ci, co, kernel, input } => {
                Case { name: format!("convT{} {ci}->{co} @{}->{}", kernel[0], input[0], input[0] * kernel[0]), kind: "convt".into(), ci, co, size: input[0], kernel: kernel[0], stride: kernel[0], padding: 0, count: 1 }
            }
            // The 3D norms (the ViT's layer norms are token rows, not volumes).
            LayerShape::Norm { c, grid, leaky_relu } if grid[1] > 1 => {
                let (kind, label) = if leaky_relu { ("in_lrelu", "IN+LReLU") } else { ("in", "IN") };
                Case { name: format!("{label} {c} @{}", grid[0]), kind: kind.into(), ci: c, co: c, size: grid[0], kernel: 1, stride: 1, padding: 0, count: 1 }
            }
            _ => continue,
        };
        match cases.iter_mut().find(|c| c.name == case.name) {
            Some(c) => c.count += 1,
            None => cases.push(case),
        }
    }
    cases
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default)]
pub struct Timing {
    pub fwd_ms: f64,
    pub bwd_ms: f64,
    /// Ours: the most live bytes above what the pass leaves behind (its inputs and results), in MB: the
    /// pass's own transient buffers.
    #[serde(default)]
    pub fwd_transient_mb: f64,
    #[serde(default)]
    pub bwd_transient_mb: f64,
}

/// Runs `f` once and returns its transient memory: the peak of live bytes during it minus the live bytes
/// after it (what it returned is kept alive by `f` until measured), in MB.
fn transient_mb(f: impl FnOnce() -> Result<Box<dyn std::any::Any>>) -> Result<f64> {
    crate::GLOBAL.reset_peak();
    let kept = f()?;
    let after = crate::GLOBAL.live();
    let peak = crate::GLOBAL.peak();
    drop(kept);
    Ok(peak.saturating_sub(after) as f64 / 1e6)
}

fn median_ms(repeats: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut t: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

/// Forward and backward of one case through the public ops (`unetr_ops`), as the model runs them: the
/// forward on plain tensors, the backward from the output of a graph built once (`Tensor::backward`).
fn time_ours(c: &Case, repeats: usize) -> Result<Timing> {
    let dev = Device::Cpu;
    let s = c.size;
    let x = Tensor::randn(0f32, 1.0, (1, c.ci, s, s, s), &dev)?;
    let xv = Var::from_tensor(&x)?;
    let k = [c.kernel; 3];
    let p = unetr_ops::Conv3dParams { stride: [c.stride; 3], padding: [c.padding; 3] };
    let run = |x: &Tensor, w: Option<&Tensor>| -> candle_core::Result<Tensor> {
        match c.kind.as_str() {
            "conv" => unetr_ops::conv3d(x, w.expect("weight"), None, p),
            "convt" => unetr_ops::conv_transpose3d(x, w.expect("weight"), None, p, [0; 3]),
            "in_lrelu" => unetr_ops::instance_norm_leaky_relu(x, 1e-5, 0.01),
            _ => unetr_ops::instance_norm(x, None, None, 1e-5),
        }
    };
    let w = match c.kind.as_str() {
        "conv" => Some(Tensor::randn(0f32, 0.05, (c.co, c.ci, k[0], k[1], k[2]), &dev)?),
        "convt" => Some(Tensor::randn(0f32, 0.05, (c.ci, c.co, k[0], k[1], k[2]), &dev)?),
        _ => None,
    };
    let wv = w.as_ref().map(Var::from_tensor).transpose()?;
    let fwd_ms = median_ms(repeats, || drop(run(&x, w.as_ref()).expect("forward")));
    let y = run(xv.as_tensor(), wv.as_ref().map(|v| v.as_tensor()))?;
    let bwd_ms = median_ms(repeats, || drop(y.backward().expect("backward")));
    let fwd_transient_mb = transient_mb(|| Ok(Box::new(run(&x, w.as_ref())?)))?;
    let bwd_transient_mb = transient_mb(|| Ok(Box::new(y.backward()?)))?;
    Ok(Timing { fwd_ms, bwd_ms, fwd_transient_mb, bwd_transient_mb })
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpu}, {} threads, {}", rayon::current_num_threads(), crate::docs::today())
}

pub fn run(args: Args) -> Result<()> {
    let cases: Vec<Case> = unetr_cases()
        .into_iter()
        .filter(|c| args.filter.as_ref().is_none_or(|f| c.name.contains(f.as_str())))
        .collect();
    let mut ours = BTreeMap::new();
    for c in &cases {
        let t = time_ours(c, args.repeats)?;
        eprintln!("ours   {:<28} fwd {:8.2} ms  bwd {:8.2} ms  transient fwd {:7.1} MB bwd {:7.1} MB", c.name, t.fwd_ms, t.bwd_ms, t.fwd_transient_mb, t.bwd_transient_mb);
        ours.insert(c.name.clone(), t);
    }
    let torch: Option<BTreeMap<String, Timing>> = if args.no_pytorch {
        None
    } else {
        match crate::python::find_torch() {
            Err(e) => {
                eprintln!("note: PyTorch side skipped: {e}");
                None
            }
            Ok(py) => {
                let spec = std::env::temp_dir().join(format!("unetr-bench-ops-{}.json", std::process::id()));
                std::fs::write(&spec, serde_json::to_string(&cases)?)?;
                let script = crate::repo_root().join("benches/ops_pytorch.py");
                let reps = args.repeats.to_string();
                let out = crate::python::run_script(&py, &script, &[spec.to_str().unwrap(), &reps])?;
                let _ = std::fs::remove_file(&spec);
                Some(serde_json::from_str(out.lines().last().unwrap_or("{}")).context("parsing the PyTorch timings")?)
            }
        }
    };
    let table = render(&cases, &ours, torch.as_ref(), args.repeats);
    println!("{table}");
    if let Some(p) = &args.json {
        let j = serde_json::json!({ "machine": machine(), "ours": ours, "pytorch": torch });
        std::fs::write(p, serde_json::to_string_pretty(&j)?)?;
    }
    if args.write_docs {
        crate::docs::replace_section("ops", &table)?;
    }
    Ok(())
}

fn render(cases: &[Case], ours: &BTreeMap<String, Timing>, torch: Option<&BTreeMap<String, Timing>>, repeats: usize) -> String {
    let mut s = String::new();
    s += &format!(
        "Command: `cargo xtask bench ops --write-docs` (median of {repeats} runs after a warm-up, f32, batch 1)  \nMachine: {}  \nPyTorch: {}\n\n",
        machine(),
        if torch.is_some() { "same run, `benches/ops_pytorch.py`, torch.set_num_threads = ours" } else { "skipped" }
    );
    s += "| op | x/model | ours fwd ms | torch fwd ms | fwd ratio | ours bwd ms | torch bwd ms | bwd ratio | ours transient MB fwd / bwd |\n";
    s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    let (mut of, mut ob, mut tf, mut tb) = (0.0, 0.0, 0.0, 0.0);
    let (mut wo, mut wt) = (0.0, 0.0);
    for c in cases {
        let o = ours[&c.name];
        let t = torch.and_then(|t| t.get(&c.name)).copied();
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let ratio = |a: f64, b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.2}", a / b));
        s += &format!(
            "| {} | {} | {:.2} | {} | {} | {:.2} | {} | {} | {:.0} / {:.0} |\n",
            c.name,
            c.count,
            o.fwd_ms,
            cell(t.map(|t| t.fwd_ms)),
            ratio(o.fwd_ms, t.map(|t| t.fwd_ms)),
            o.bwd_ms,
            cell(t.map(|t| t.bwd_ms)),
            ratio(o.bwd_ms, t.map(|t| t.bwd_ms)),
            o.fwd_transient_mb,
            o.bwd_transient_mb,
        );
        of += o.fwd_ms;
        ob += o.bwd_ms;
        wo += c.count as f64 * (o.fwd_ms + o.bwd_ms);
        if let Some(t) = t {
            tf += t.fwd_ms;
            tb += t.bwd_ms;
            wt += c.count as f64 * (t.fwd_ms + t.bwd_ms);
        }
    }
    let r = |a: f64, b: f64| if b > 0.0 { format!("{:.2}", a / b) } else { "-".into() };
    s += &format!("| **total (each shape once)** | | {of:.1} | {tf:.1} | {} | {ob:.1} | {tb:.1} | {} | |\n", r(of, tf), r(ob, tb));
    s += &format!("| **total fwd+bwd weighted by x/model** | | | | | {wo:.1} | {wt:.1} | {} | |\n", r(wo, wt));
    s
}
