//! `cargo xtask bench`: UNETR's parameters and FLOPs against the paper, and forward / training-step latency
//! and peak memory against PyTorch + MONAI in the same run, each side in its own process, on the CPU or a
//! CUDA device (`--device`: then the peak is device memory, as `torch.cuda.max_memory_allocated`).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::process::Command;
use std::time::Instant;
use unetr_model::{count_macs, count_params, layer_costs, OpKind, UnetrConfig, UnetrWeights};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Published config: btcv (default), spleen, brats; or a JSON file of MONAI's UNETR arguments (with
    /// our `decoder`, `patch_size`, `num_layers`).
    #[arg(long, default_value = "btcv")]
    config: String,
    /// The decoder: unetr (default), nup, pup or mla (the paper's ablation).
    #[arg(long)]
    decoder: Option<String>,
    /// Patch size per axis (16 as the paper; 32 in its ablation).
    #[arg(long)]
    patch: Option<usize>,
    /// Input size D,H,W (default: the config's img_size).
    #[arg(long)]
    size: Option<String>,
    /// Timed forward passes after one warm-up (training steps: after two).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Forward measurements alternate ours and PyTorch this many times (fresh processes each round), so
    /// that a burst of load on a shared machine falls on both sides; the medians are over all rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Skip the PyTorch side.
    #[arg(long)]
    no_pytorch: bool,
    /// Write the report into docs/benchmarks.md.
    #[arg(long)]
    write_docs: bool,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Skip the training-step measurements.
    #[arg(long)]
    no_train: bool,
    /// Also time sliding-window inference on a 256x256x160 volume (minutes per side).
    #[arg(long)]
    sliding: bool,
    /// (measuring process) forward or train.
    #[arg(long, default_value = "forward", hide = true)]
    mode: String,
    /// Training step: activation checkpointing (none, vit, decoder, all).
    #[arg(long, default_value = "none")]
    checkpointing: String,
    /// Where both sides run: cpu, cuda or cuda:N (CUDA needs `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl Args {
    /// Whether this (measuring) process times training steps.
    pub fn is_train(&self) -> bool {
        self.mode == "train"
    }

    fn on_cpu(&self) -> bool {
        self.device.trim() == "cpu"
    }

    /// The device name, refused before anything runs when malformed or when this build has no CUDA.
    pub fn check_device(&self) -> Result<()> {
        unetr_infer::device::check_device_name(&self.device)?;
        if !self.on_cpu() && !cfg!(feature = "cuda") {
            bail!("--device {}: this build has no CUDA support (cargo run --release -p xtask --features cuda -- bench ...; see docs/cuda.md)", self.device);
        }
        Ok(())
    }
}

/// What one measuring process reports.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Measured {
    pub forward_s: Vec<f64>,
    pub peak_rss_kb: u64,
    /// Peak of the live heap bytes (what the program holds, without the allocator's retained pages).
    #[serde(default)]
    pub peak_live_kb: u64,
    /// Per top-level module wall time in ms (profile mode).
    #[serde(default)]
    pub modules: std::collections::BTreeMap<String, f64>,
    /// f32 GEMM GFLOP/s of this machine (ours only).
    #[serde(default)]
    pub gemm_gflops: f64,
    /// Self time per op for one profiled pass (profile mode: a forward; train mode: a training step), largest
    /// first: ours from `unetr_ops::profile`, PyTorch's from torch.profiler.
    #[serde(default)]
    pub ops: Vec<OpRow>,
    /// Wall time of that profiled pass.
    #[serde(default)]
    pub ops_wall_s: f64,
    /// Self time of all ops of that pass, summed (PyTorch's side; ours covers the wall).
    #[serde(default)]
    pub ops_self_total_s: f64,
    /// Train mode (ours): live heap bytes through one more training step, as (ms since its start, bytes).
    #[serde(default)]
    pub memory_timeline: Vec<(f64, f64)>,
    /// Train mode (ours): the most live heap bytes in each part of one more training step (the segments'
    /// forwards and backwards, the loss, the optimiser), in order.
    #[serde(default)]
    pub memory_phases: Vec<(String, u64)>,
    /// Bytes of the trainable parameters (f32), so the floor of a step is four times this.
    #[serde(default)]
    pub param_bytes: u64,
    /// On a CUDA device: the most device memory tensors held at once (ours: the memory pool's high-water
    /// mark; PyTorch: `torch.cuda.max_memory_allocated`).
    #[serde(default)]
    pub peak_device_bytes: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct OpRow {
    pub name: String,
    pub calls: u64,
    pub seconds: f64,
}

/// Runs `f` once under our op profiler.
/// Live heap bytes sampled every millisecond on a second thread while `f` runs: (ms since the start, bytes).
fn live_timeline(f: impl FnOnce() -> Result<()>) -> Result<Vec<(f64, f64)>> {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let sample = || (t0.elapsed().as_secs_f64() * 1e3, crate::GLOBAL.live() as f64);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut v = Vec::with_capacity(1 << 16);
            while !stop.load(Relaxed) {
                v.push(sample());
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            v.push(sample());
            v
        });
        let r = f();
        stop.store(true, Relaxed);
        let v = sampler.join().map_err(|_| anyhow::anyhow!("the memory sampler panicked"))?;
        r.map(|()| v)
    })
}

/// The most live heap bytes in each named part of `f` (`unetr_ops::profile::memory_phase`), in order.
fn phase_peaks(f: impl FnOnce() -> Result<()>) -> Result<Vec<(String, u64)>> {
    unetr_ops::profile::start_memory_phases(|| crate::GLOBAL.peak(), || crate::GLOBAL.reset_peak());
    let r = f();
    let phases = unetr_ops::profile::take_memory_phases();
    r.map(|()| phases.into_iter().map(|p| (p.name, p.peak_bytes as u64)).collect())
}

fn profiled(f: impl FnOnce() -> Result<()>) -> Result<(Vec<OpRow>, f64)> {
    unetr_ops::profile::enable();
    let t = Instant::now();
    let r = f();
    let wall = t.elapsed().as_secs_f64();
    let rows = unetr_ops::profile::take();
    r?;
    Ok((
        rows.into_iter()
            .map(|r| OpRow {
                name: r.name,
                calls: r.calls,
                seconds: r.seconds,
            })
            .collect(),
        wall,
    ))
}

pub(crate) fn config(a: &Args) -> Result<UnetrConfig> {
    let mut c = match a.config.as_str() {
        "btcv" => UnetrConfig::btcv(),
        "spleen" => UnetrConfig::msd_spleen(),
        "brats" => UnetrConfig::msd_brats(),
        path if path.ends_with(".json") => UnetrConfig::from_json(&std::fs::read_to_string(path).with_context(|| format!("{path}: cannot read"))?)?,
        other => bail!("unknown config {other:?} (btcv, spleen, brats, or a .json file)"),
    };
    if let Some(d) = &a.decoder {
        c.decoder = serde_json::from_value(serde_json::json!(d)).with_context(|| format!("--decoder {d}: unetr, nup, pup or mla"))?;
    }
    if let Some(p) = a.patch {
        c.patch_size = [p; 3];
    }
    if let Some(s) = &a.size {
        let v: Vec<usize> = s
            .split(',')
            .map(|x| x.trim().parse())
            .collect::<std::result::Result<_, _>>()
            .context("--size D,H,W")?;
        let [d, h, w] = v[..] else {
            bail!("--size takes three numbers D,H,W")
        };
        c.img_size = [d, h, w];
    }
    c.validate()?;
    Ok(c)
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The measuring process (`xtask bench-child`): forward passes of a randomly initialised model.
pub fn child(a: Args) -> Result<()> {
    let cfg = config(&a)?;
    let dev = unetr_infer::device::parse_device(&a.device)?;
    if !dev.is_cpu() && matches!(a.mode.as_str(), "profile") {
        bail!("the per-module and per-op profile measures the CPU only");
    }
    let [d, h, ww] = cfg.img_size;
    let x = Tensor::randn(0f32, 1.0, (1, cfg.in_channels, d, h, ww), &dev)?.to_dtype(DType::F32)?;
    let mut forward_s = Vec::new();
    let mut modules = std::collections::BTreeMap::new();
    let mut gemm_gflops = 0.0;
    let (mut ops, mut ops_wall_s) = (Vec::new(), 0.0);
    let (mut memory_timeline, mut memory_phases, mut param_bytes) = (Vec::new(), Vec::new(), 0);
    // The phases reset the allocator's peak: the step's own peak is read before them.
    let mut peak_live = None;
    if a.mode == "profile" {
        let model = UnetrWeights::init(&cfg, &dev)?.inference_model()?;
        drop(model.forward_t(&x, false)?);
        let mut per: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        for _ in 0..a.repeats.max(1) {
            let t = Instant::now();
            let (_, times) = model.forward_profiled(&x)?;
            forward_s.push(t.elapsed().as_secs_f64());
            for (k, v) in times {
                per.entry(k).or_default().push(v);
            }
        }
        modules = per
            .into_iter()
            .map(|(k, mut v)| {
                (k, {
                    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                    v[v.len() / 2]
                })
            })
            .collect();
        (ops, ops_wall_s) = profiled(|| Ok(drop(model.forward_t(&x, false)?)))?;
        // The machine's f32 GEMM rate, with the same thread split as our linear layers.
        let n = 2048;
        let m1 = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
        drop(unetr_ops::linear(&m1, &m1, None)?);
        let t = Instant::now();
        for _ in 0..3 {
            drop(unetr_ops::linear(&m1, &m1, None)?);
        }
        gemm_gflops = 3.0 * 2.0 * (n * n * n) as f64 / t.elapsed().as_secs_f64() / 1e9;
    } else if a.mode == "sliding" {
        use unetr_infer::inferers::{sliding_window_inference, Blend, SlidingWindow};
        let model = UnetrWeights::init(&cfg, &dev)?.inference_model()?;
        let big = Tensor::randn(0f32, 1.0, (1, cfg.in_channels, 256, 256, 160), &dev)?;
        let sw = SlidingWindow {
            roi: cfg.img_size,
            overlap: 0.5,
            sw_batch: 4,
            blend: Blend::Gaussian,
        };
        let t = Instant::now();
        drop(sliding_window_inference(&big, &sw, |b| {
            model.forward_t(b, false).map_err(candle_core::Error::wrap)
        })?);
        dev.synchronize()?;
        forward_s.push(t.elapsed().as_secs_f64());
    } else if a.mode == "train" {
        // The trainer's step: forward + DiceCE (research settings) + block-wise backward + AdamW (lr 1e-4,
        // wd 1e-5), with the requested activation checkpointing.
        let w = UnetrWeights::init(&cfg, &dev)?;
        let y = Tensor::rand(0f32, cfg.out_channels as f32, (1, 1, d, h, ww), &dev)?.floor()?;
        let vars = w.trainable_vars(unetr_model::Trainable::All);
        param_bytes = vars.iter().map(|(_, v)| v.elem_count() as u64 * 4).sum();
        let o = unetr_train::config::OptimConfig {
            checkpointing: serde_json::from_value(serde_json::json!(a.checkpointing)).context("--checkpointing: none, vit, decoder or all")?,
            ..Default::default()
        };
        let mut ts = unetr_train::step::TrainStep::new(vars, &o);
        let comm = unetr_train::distributed::SingleProcess;
        let mut step = || -> Result<()> {
            ts.run(&w.model, [Ok((x.clone(), y.clone()))], 1e-4, &comm)?;
            Ok(dev.synchronize()?)
        };
        // Two warm-ups: AdamW's moments are made by the first update, so the second step is the first whose
        // memory the allocator's pool already holds (the first steps fault in fresh pages); the same on
        // PyTorch's side.
        step()?;
        step()?;
        for _ in 0..a.repeats.max(1) {
            let t = Instant::now();
            step()?;
            forward_s.push(t.elapsed().as_secs_f64());
        }
        // Host-side tools: our op profiler times CPU kernels, the timeline samples the host heap.
        if dev.is_cpu() {
            (ops, ops_wall_s) = profiled(&mut step)?;
            memory_timeline = live_timeline(&mut step)?;
            peak_live = Some(crate::GLOBAL.peak());
            memory_phases = phase_peaks(&mut step)?;
        }
    } else {
        let model = UnetrWeights::init(&cfg, &dev)?.inference_model()?;
        drop(model.forward_t(&x, false)?); // warm-up
        dev.synchronize()?;
        for _ in 0..a.repeats.max(1) {
            let t = Instant::now();
            drop(model.forward_t(&x, false)?);
            dev.synchronize()?;
            forward_s.push(t.elapsed().as_secs_f64());
        }
    }
    println!(
        "{}",
        serde_json::to_string(&Measured {
            forward_s,
            peak_rss_kb: peak_rss_kb(),
            peak_live_kb: (peak_live.unwrap_or_else(|| crate::GLOBAL.peak()) / 1024) as u64,
            modules,
            gemm_gflops,
            ops,
            ops_wall_s,
            ops_self_total_s: 0.0,
            memory_timeline,
            memory_phases,
            param_bytes,
            peak_device_bytes: unetr_ops::device_memory::peak_bytes(&dev)?.unwrap_or(0),
        })?
    );
    Ok(())
}

pub(crate) fn stats(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[0], s[s.len() / 2])
}

fn last_json<T: for<'de> Deserialize<'de>>(out: &[u8]) -> Result<T> {
    let text = String::from_utf8_lossy(out);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("no JSON line in the output")?;
    Ok(serde_json::from_str(line)?)
}

/// Runs one measuring process of ours and one of PyTorch's for `mode` (forward or train).
pub(crate) fn measure(
    a: &Args,
    cfg: &UnetrConfig,
    mode: &str,
) -> Result<(Measured, Option<(Measured, serde_json::Value)>)> {
    let size = cfg.img_size.map(|s| s.to_string()).join(",");
    eprintln!("measuring ours ({mode}, {size}) ...");
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe);
    child.args(["bench-child", "--config", &a.config, "--size", &size, "--repeats", &a.repeats.to_string(), "--mode", mode, "--checkpointing", &a.checkpointing, "--device", &a.device]);
    if let Some(d) = &a.decoder {
        child.args(["--decoder", d]);
    }
    if let Some(p) = a.patch {
        child.args(["--patch", &p.to_string()]);
    }
    let out = child
        .output()
        .context("running the measuring process")?;
    if !out.status.success() {
        bail!(
            "measuring process failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ours: Measured = last_json(&out.stdout)?;
    if a.no_pytorch {
        return Ok((ours, None));
    }
    let py = match crate::python::find_torch() {
        Err(e) => {
            eprintln!("note: PyTorch side skipped: {e}");
            return Ok((ours, None));
        }
        Ok(py) => py,
    };
    eprintln!("measuring PyTorch + MONAI ({mode}) ...");
    let script = crate::repo_root().join("benches/model_pytorch.py");
    let args = [
        "--size".to_string(),
        size,
        "--repeats".into(),
        a.repeats.to_string(),
        "--in-channels".into(),
        cfg.in_channels.to_string(),
        "--out-channels".into(),
        cfg.out_channels.to_string(),
        "--feature-size".into(),
        cfg.feature_size.to_string(),
        "--mode".into(),
        mode.to_string(),
        "--device".into(),
        a.device.clone(),
    ];
    let out = Command::new(py).arg(script).args(&args).output()?;
    if !out.status.success() {
        eprintln!(
            "note: PyTorch side failed (is MONAI installed? {}): {}",
            crate::python::HOW_TO,
            String::from_utf8_lossy(&out.stderr)
        );
        return Ok((ours, None));
    }
    let v: serde_json::Value = last_json(&out.stdout)?;
    Ok((ours, Some((serde_json::from_value(v.clone())?, v))))
}

/// Forward measurements in `a.rounds` alternating rounds, merged (all timed forwards, the largest peaks),
/// with each round's ratio of medians (ours / PyTorch's) where PyTorch ran.
fn measure_rounds(a: &Args, cfg: &UnetrConfig) -> Result<(Side, Vec<f64>)> {
    let mut merged: Option<Side> = None;
    let mut ratios = Vec::new();
    for round in 0..a.rounds.max(1) {
        if a.rounds > 1 {
            eprintln!("round {} of {}", round + 1, a.rounds);
        }
        let (ours, torch) = measure(a, cfg, "forward")?;
        if let Some((t, _)) = &torch {
            ratios.push(stats(&ours.forward_s).1 / stats(&t.forward_s).1);
        }
        merged = Some(match merged {
            None => (ours, torch),
            Some((mut o, mt)) => {
                merge(&mut o, ours);
                let t = match (mt, torch) {
                    (Some((mut t, mut v)), Some((t2, _))) => {
                        merge(&mut t, t2);
                        v["forward_s"] = serde_json::json!(t.forward_s);
                        v["peak_rss_kb"] = serde_json::json!(t.peak_rss_kb);
                        v["peak_device_bytes"] = serde_json::json!(t.peak_device_bytes);
                        Some((t, v))
                    }
                    (t, _) => t,
                };
                (o, t)
            }
        });
    }
    Ok((merged.expect("at least one round"), ratios))
}

/// Adds another round of the same side: its timed forwards, and the larger peaks.
fn merge(into: &mut Measured, m: Measured) {
    into.forward_s.extend(m.forward_s);
    into.peak_rss_kb = into.peak_rss_kb.max(m.peak_rss_kb);
    into.peak_live_kb = into.peak_live_kb.max(m.peak_live_kb);
    into.peak_device_bytes = into.peak_device_bytes.max(m.peak_device_bytes);
}

pub fn run(a: Args) -> Result<()> {
    a.check_device()?;
    let cfg = config(&a)?;
    let (fwd, round_ratios) = measure_rounds(&a, &cfg)?;
    let train = if a.no_train {
        None
    } else {
        // The live-bytes timeline is `bench train-memory`'s plot; here it would only bloat the JSON.
        let mut t = measure(&a, &cfg, "train")?;
        t.0.memory_timeline.clear();
        t.0.memory_phases.clear();
        Some(t)
    };
    let prof = if a.on_cpu() { Some(measure(&a, &cfg, "profile")?) } else { None };
    let sliding = if a.sliding {
        Some(measure(
            &Args {
                repeats: 1,
                ..a.clone()
            },
            &cfg,
            "sliding",
        )?)
    } else {
        None
    };
    let mut report = render(&a, &cfg, &fwd, &round_ratios, train.as_ref());
    if let Some(prof) = &prof {
        report += &render_profile(prof, &cfg);
        report += &render_ops("forward", prof);
    }
    if let Some(sl) = &sliding {
        report += &render_sliding(sl, &cfg);
    }
    if let Some(t) = &train {
        report += &render_ops("training step", t);
    }
    println!("{report}");
    if let Some(p) = &a.json {
        let j = serde_json::json!({
            "config": a.config, "size": cfg.img_size, "params": count_params(&cfg), "macs": count_macs(&cfg),
            "forward": {"ours": fwd.0, "pytorch": fwd.1.as_ref().map(|t| &t.1)},
            "train_step": train.as_ref().map(|t| serde_json::json!({"ours": t.0, "pytorch": t.1.as_ref().map(|t| &t.1)})),
            "device": a.device,
            "profile": prof.as_ref().map(|p| serde_json::json!({"ours": p.0, "pytorch": p.1.as_ref().map(|t| &t.1)})),
            "sliding": sliding.as_ref().map(|t| serde_json::json!({"ours": t.0, "pytorch": t.1.as_ref().map(|t| &t.1)})),
            "machine": crate::bench_ops::machine(),
        });
        std::fs::write(p, serde_json::to_string_pretty(&j)?)?;
    }
    if a.write_docs {
        crate::docs::replace_section(if a.on_cpu() { "model" } else { "model-cuda" }, &report)?;
    }
    Ok(())
}

type Side = (Measured, Option<(Measured, serde_json::Value)>);

/// The per-op table of one profiled pass, ours and PyTorch's side by side (rank by self time; names differ:
/// ours are our ops' kernels and tensor-level call sites, PyTorch's are aten ops).
fn render_ops(what: &str, p: &Side) -> String {
    const ROWS: usize = 15;
    let (o, t) = (&p.0, p.1.as_ref().map(|t| &t.0));
    if o.ops.is_empty() {
        return String::new();
    }
    let covered: f64 = o.ops.iter().map(|r| r.seconds).sum();
    let mut s = format!(
        "\nWhere the time goes, one {what}: self time per op, like torch.profiler's table. Ours (`unetr_ops::profile`): \
         {:.2} s wall, {:.0}% of it inside profiled ops{}; % of that wall. PyTorch (torch.profiler): {}.\n\n",
        o.ops_wall_s,
        100.0 * covered / o.ops_wall_s.max(1e-9),
        if what == "forward" { "" } else { ", the rest in candle's own ops (the backward of element-wise ops, the loss, the optimizer)" },
        t.map_or("skipped".to_string(), |t| format!(
            "{:.2} s wall under the profiler (its overhead inflates it), {:.2} s summed self time; % of that sum",
            t.ops_wall_s, t.ops_self_total_s
        )),
    );
    s += "| # | ours | calls | ms | % | PyTorch | calls | ms | % |\n|---:|---|---:|---:|---:|---|---:|---:|---:|\n";
    let row = |r: Option<&OpRow>, wall: f64| {
        r.map_or("| | | |".to_string(), |r| {
            format!(
                "{} | {} | {:.1} | {:.1}",
                r.name,
                r.calls,
                r.seconds * 1e3,
                100.0 * r.seconds / wall.max(1e-9)
            )
        })
    };
    for i in 0..ROWS.min(o.ops.len().max(t.map_or(0, |t| t.ops.len()))) {
        s += &format!(
            "| {} | {} | {} |
",
            i + 1,
            row(o.ops.get(i), o.ops_wall_s),
            t.map_or("| | |".to_string(), |t| row(
                t.ops.get(i),
                if t.ops_self_total_s > 0.0 {
                    t.ops_self_total_s
                } else {
                    t.ops_wall_s
                }
            ))
        );
    }
    s
}

/// Where the forward time goes, module by module, and the sliding-window figure.
fn render_profile(p: &Side, cfg: &UnetrConfig) -> String {
    let (o, t) = (&p.0, p.1.as_ref().map(|t| &t.0));
    let costs = layer_costs(cfg);
    let mut s = String::from("\n| module (forward) | GMACs | ours ms | PyTorch ms | ratio | ours GFLOP/s |\n|---|---:|---:|---:|---:|---:|\n");
    let order = [
        "vit", "encoder1", "encoder2", "encoder3", "encoder4", "decoder5", "decoder4", "decoder3",
        "decoder2", "out",
    ];
    for m in order {
        let macs: f64 = costs
            .iter()
            .filter(|c| c.module.split('.').next() == Some(m))
            .map(|c| c.macs as f64)
            .sum();
        let ours = o.modules.get(m).copied().unwrap_or(f64::NAN);
        let theirs = t.and_then(|t| t.modules.get(m).copied());
        s += &format!(
            "| {m} | {:.2} | {ours:.1} | {} | {} | {:.0} |\n",
            macs / 1e9,
            theirs.map_or("-".into(), |v| format!("{v:.1}")),
            theirs.map_or("-".into(), |v| format!("{:.2}", ours / v)),
            2.0 * macs / 1e9 / (ours / 1e3)
        );
    }
    let total = 2.0 * count_macs(cfg) as f64 / 1e9;
    let med = stats(&o.forward_s).1;
    s += &format!(
        "\nf32 GEMM on this machine (2048^3, our thread split): {:.0} GFLOP/s; the forward reaches {:.0} GFLOP/s, {:.0}% of it.\n",
        o.gemm_gflops,
        total / med,
        100.0 * total / med / o.gemm_gflops
    );
    s
}

/// The sliding-window figure (peak RSS on the CPU, peak device memory on a GPU).
fn render_sliding((so, st): &Side, cfg: &UnetrConfig) -> String {
    let ours = so.forward_s[0];
    let theirs = st.as_ref().map(|t| t.0.forward_s[0]);
    let (what, mem): (&str, fn(&Measured) -> f64) = if so.peak_device_bytes > 0 {
        ("peak device memory", |m| m.peak_device_bytes as f64 / 1e9)
    } else {
        ("peak RSS", |m| m.peak_rss_kb as f64 / 1e6)
    };
    format!(
        "\nSliding-window inference, 256x256x160 volume, roi {:?}, overlap 0.5, sw_batch 4, gaussian: ours {ours:.1} s, PyTorch + MONAI {} (ratio {}); {what} ours {:.2} GB{}.\n",
        cfg.img_size,
        theirs.map_or("-".into(), |v| format!("{v:.1} s")),
        theirs.map_or("-".into(), |v| format!("{:.2}", ours / v)),
        mem(so),
        st.as_ref().map_or(String::new(), |t| format!(", PyTorch {:.2} GB", mem(&t.0)))
    )
}

fn render(a: &Args, cfg: &UnetrConfig, fwd: &Side, round_ratios: &[f64], train: Option<&Side>) -> String {
    let (ours, torch) = (&fwd.0, fwd.1.as_ref());
    let params = count_params(cfg);
    let costs = layer_costs(cfg);
    let macs = count_macs(cfg) as f64;
    let norm_macs: f64 = costs
        .iter()
        .filter(|c| c.kind == OpKind::Norm)
        .map(|c| c.macs as f64)
        .sum();
    let mut s = String::new();
    let size = cfg.img_size.map(|v| v.to_string()).join(",");
    s += &format!(
        "Command: `cargo xtask bench --config {} --size {size} --repeats {} --rounds {}{}{}{}`  \nMachine: {}  \nPyTorch: {}\n\n",
        a.config,
        a.repeats,
        a.rounds,
        if a.on_cpu() { String::new() } else { format!(" --device {}", a.device) },
        if a.sliding { " --sliding" } else { "" },
        a.json.as_ref().map_or(String::new(), |p| format!(" --json {}", p.display())),
        crate::bench_ops::machine(),
        torch.map_or("skipped".to_string(), |t| format!("torch {}, MONAI {}, {} threads, `benches/model_pytorch.py`", t.1["torch"], t.1["monai"], t.1["threads"]))
    );
    s += &format!(
        "Parameters used by the forward pass: {params} ({:.2} M); the paper reports 92.58 M, MONAI's model 92,784,046.  \n",
        params as f64 / 1e6
    );
    s += &format!(
        "Multiply-accumulates (conv, transposed conv, linear, attention): {:.2} G = {:.2} GFLOP; with norms {:.2} G (fvcore counts 73.68 G); the paper reports 41.19 GFLOPs (see docs/flops.md).\n\n",
        macs / 1e9,
        2.0 * macs / 1e9,
        (macs + norm_macs) / 1e9
    );
    let mut kinds: std::collections::BTreeMap<OpKind, (usize, f64)> = Default::default();
    let mut modules: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
    for c in &costs {
        let e = kinds.entry(c.kind).or_default();
        e.0 += c.params;
        e.1 += c.macs as f64;
        let top = c.module.split('.').next().unwrap_or("").to_string();
        let m = modules.entry(top).or_default();
        m.0 += c.params;
        m.1 += c.macs as f64;
    }
    s += "| op kind | params | GMACs |\n|---|---:|---:|\n";
    for (k, (p, m)) in &kinds {
        s += &format!("| {k:?} | {p} | {:.3} |\n", m / 1e9);
    }
    s += "\n| module | params | GMACs (incl. norms) |\n|---|---:|---:|\n";
    for (k, (p, m)) in &modules {
        s += &format!("| {k} | {p} | {:.3} |\n", m / 1e9);
    }
    s += "\n| measure | ours | PyTorch + MONAI | ratio |\n|---|---:|---:|---:|\n";
    let (omin, omed) = stats(&ours.forward_s);
    let t = torch.map(|t| (stats(&t.0.forward_s), t.0.peak_rss_kb));
    let cell = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_string(), f);
    let ratio = |a: f64, b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.2}", a / b));
    s += &format!(
        "| forward, median (s) | {omed:.3} | {} | {} |\n",
        cell(t.map(|t| t.0 .1), &|v| format!("{v:.3}")),
        ratio(omed, t.map(|t| t.0 .1))
    );
    s += &format!(
        "| forward, min (s) | {omin:.3} | {} | {} |\n",
        cell(t.map(|t| t.0 .0), &|v| format!("{v:.3}")),
        ratio(omin, t.map(|t| t.0 .0))
    );
    s += &format!(
        "| forward, GFLOP/s (median) | {:.0} | {} | |\n",
        2.0 * macs / 1e9 / omed,
        cell(t.map(|t| t.0 .1), &|v| format!(
            "{:.0}",
            2.0 * macs / 1e9 / v
        ))
    );
    if !round_ratios.is_empty() {
        s += &format!(
            "| forward, each round's ratio of medians | | | {} |\n",
            round_ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" / ")
        );
    }
    let (om, tm) = (ours.peak_rss_kb as f64 / 1e6, t.map(|t| t.1 as f64 / 1e6));
    s += &format!(
        "| peak RSS of the process, inference (GB) | {om:.2} | {} | {} |\n",
        cell(tm, &|v| format!("{v:.2}")),
        ratio(om, tm)
    );
    s += &device_memory_row("inference", ours, torch.map(|t| &t.0), &cell, &ratio);
    if let Some((o, tr)) = train {
        let (omin, omed) = stats(&o.forward_s);
        let t = tr
            .as_ref()
            .map(|t| (stats(&t.0.forward_s), t.0.peak_rss_kb));
        s += &format!(
            "| training step, median (s) | {omed:.3} | {} | {} |\n",
            cell(t.map(|t| t.0 .1), &|v| format!("{v:.3}")),
            ratio(omed, t.map(|t| t.0 .1))
        );
        s += &format!(
            "| training step, min (s) | {omin:.3} | {} | {} |\n",
            cell(t.map(|t| t.0 .0), &|v| format!("{v:.3}")),
            ratio(omin, t.map(|t| t.0 .0))
        );
        let (om, tm) = (o.peak_rss_kb as f64 / 1e6, t.map(|t| t.1 as f64 / 1e6));
        s += &format!(
            "| peak RSS of the process, training (GB) | {om:.2} | {} | {} |\n",
            cell(tm, &|v| format!("{v:.2}")),
            ratio(om, tm)
        );
        s += &device_memory_row("training", o, tr.as_ref().map(|t| &t.0), &cell, &ratio);
        s += "\nTraining step: forward + DiceCE (squared_pred, smooth_dr 1e-6) + backward + AdamW (lr 1e-4, wd 1e-5), batch 1.\n";
    }
    s
}

/// The peak-device-memory row of a GPU run (empty on the CPU).
fn device_memory_row(what: &str, ours: &Measured, torch: Option<&Measured>, cell: &dyn Fn(Option<f64>, &dyn Fn(f64) -> String) -> String, ratio: &dyn Fn(f64, Option<f64>) -> String) -> String {
    if ours.peak_device_bytes == 0 {
        return String::new();
    }
    let (om, tm) = (ours.peak_device_bytes as f64 / 1e9, torch.map(|t| t.peak_device_bytes as f64 / 1e9));
    format!("| peak device memory, {what} (GB) | {om:.2} | {} | {} |\n", cell(tm, &|v| format!("{v:.2}")), ratio(om, tm))
}

#[cfg(test)]
mod tests {
    use super::Args;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: Args,
    }

    #[test]
    fn device_names_are_checked_before_anything_runs() {
        let a = |d: &str| Cli::parse_from(["bench", "--device", d]).a;
        assert!(a("cpu").check_device().is_ok());
        let e = a("gpu0").check_device().unwrap_err().to_string();
        assert!(e.contains("gpu0") && e.contains("cuda:N"), "{e}");
        let e = a("cuda:1").check_device();
        if cfg!(feature = "cuda") {
            assert!(e.is_ok());
        } else {
            let e = e.unwrap_err().to_string();
            assert!(e.contains("--device cuda:1") && e.contains("no CUDA support"), "{e}");
        }
    }
}
