//! `cargo xtask gpu-check`: one command for a GPU machine. Checks every op on the device against the CPU
//! (forward and input gradients, per-dtype tolerances), the model forward against the CPU, a few training
//! steps, a short run of the trainer itself on the device, then times forward, training step and the fused
//! attention against the unfused path, and writes one report (markdown + JSON) under --out. The
//! convolutions are checked and timed under both device implementations (cuDNN and our direct kernels);
//! `unetr infer`'s path (`Predictor`) runs on the device against the CPU; with the `nccl` feature a one-rank
//! NCCL group all-reduces a buffer.
//!
//! `--dry-run` runs the same logic with the CPU standing in for the device (small sizes), so the command's
//! logic is exercised on machines without a GPU; a build without `--features cuda` can only dry-run.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;
use std::time::Instant;
use unetr_model::{UnetrConfig, UnetrWeights};
use unetr_ops::{add_leaky_relu, attention, conv3d, conv_transpose3d, gelu, instance_norm_leaky_relu, leaky_relu, softmax_last_dim, Conv3dParams};

#[derive(clap::Args)]
pub struct Args {
    /// Use the CPU as the device (checks the command's logic without a GPU).
    #[arg(long)]
    dry_run: bool,
    /// Report folder.
    #[arg(long, default_value = "runs/gpu-check")]
    out: PathBuf,
    /// Timed runs per benchmark (after a warm-up).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

struct Check {
    name: String,
    dtype: DType,
    err: f64,
    tol: f64,
}

fn device(dry: bool) -> Result<Device> {
    if dry {
        return Ok(Device::Cpu);
    }
    #[cfg(feature = "cuda")]
    {
        Ok(Device::new_cuda(0)?)
    }
    #[cfg(not(feature = "cuda"))]
    bail!("built without the `cuda` feature: run `cargo xtask gpu-check --dry-run`, or build with --features cuda on the GPU machine")
}

/// max |a - b| / max(1, max |b|), both compared in f64 on the CPU.
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let scale = b.abs()?.max_all()?.to_scalar::<f64>()?.max(1.0);
    Ok((a - &b)?.abs()?.max_all()?.to_scalar::<f64>()? / scale)
}

fn tol(dt: DType) -> f64 {
    match dt {
        DType::BF16 => 3e-2,
        DType::F64 => 1e-10,
        _ => 1e-4,
    }
}

/// Runs `f` on CPU f32 inputs and on the same inputs in `dt` on the device; compares outputs and input
/// gradients of sum(f(x) * r) for a fixed random r.
fn check_op(name: &str, dev: &Device, dt: DType, shapes: &[&[usize]], f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>, out: &mut Vec<Check>) -> Result<()> {
    // Inputs representable in `dt`, so that the reference sees the device's inputs: otherwise rounding an
    // input can move it across a kink (LeakyReLU at 0) and the gradient legitimately differs there.
    let cpu_in: Vec<Tensor> = shapes
        .iter()
        .map(|s| Tensor::randn(0f32, 1.0, *s, &Device::Cpu)?.to_dtype(dt)?.to_dtype(DType::F32))
        .collect::<candle_core::Result<_>>()?;
    let run = |ins: Vec<Tensor>, r: &Tensor| -> Result<(Tensor, Vec<Tensor>)> {
        let vars: Vec<candle_core::Var> = ins.iter().map(candle_core::Var::from_tensor).collect::<candle_core::Result<_>>()?;
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts)?;
        let g = (y.to_dtype(DType::F32)? * r.to_device(y.device())?)?.sum_all()?.backward()?;
        let grads = ts.iter().map(|t| g.get(t).cloned().ok_or_else(|| anyhow::anyhow!("{name}: no gradient"))).collect::<Result<_>>()?;
        Ok((y, grads))
    };
    let y0 = f(&cpu_in)?;
    let r = Tensor::randn(0f32, 1.0, y0.shape(), &Device::Cpu)?;
    let (y_ref, g_ref) = run(cpu_in.clone(), &r)?;
    let dev_in: Vec<Tensor> = cpu_in.iter().map(|t| t.to_dtype(dt)?.to_device(dev)).collect::<candle_core::Result<_>>()?;
    let (y, g) = run(dev_in, &r)?;
    out.push(Check { name: format!("{name} forward"), dtype: dt, err: rel_err(&y, &y_ref)?, tol: tol(dt) });
    for (i, (a, b)) in g.iter().zip(&g_ref).enumerate() {
        out.push(Check { name: format!("{name} grad input {i}"), dtype: dt, err: rel_err(a, b)?, tol: tol(dt) * 3.0 });
    }
    Ok(())
}

/// The device's convolution implementations, each checked against the CPU and timed.
const CONV_BACKENDS: [&str; 2] = ["cudnn", "direct"];

/// Makes the device's convolutions run on `name` (in the dry run, and without `cuda`, there is one path:
/// the label only names the pass).
fn use_conv_backend(name: &str) -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        use unetr_ops::cuda::{set_conv_backend, ConvBackend};
        set_conv_backend(if name == "cudnn" { ConvBackend::Cudnn } else { ConvBackend::Direct })?;
    }
    let _ = name;
    Ok(())
}

/// `unetr infer`'s path on the device against the CPU: the trained checkpoint segments the first validation
/// case of the trainer's phantoms; returns the fraction of voxels with the same label.
fn infer_agreement(run: &std::path::Path, dev: &Device) -> Result<f64> {
    use unetr_data::MemoryLimit;
    use unetr_infer::predictor::{Predictor, Probabilities, Tta};
    let limit = MemoryLimit::default();
    let dl = unetr_data::datalist::Datalist::from_json(&run.join("phantom/dataset.json"), limit)?;
    let item = dl.validation.first().or(dl.training.first()).ok_or_else(|| anyhow::anyhow!("the trainer's phantom datalist is empty"))?;
    let seg = |d: &Device| -> Result<Vec<f32>> { Ok(Predictor::from_checkpoint(&run.join("best"), d, limit)?.segment(item, Tta::Off, Probabilities::Skip)?.labels.data) };
    let (a, b) = (seg(dev)?, seg(&Device::Cpu)?);
    if a.len() != b.len() || a.is_empty() {
        bail!("infer on the device gave {} voxels, on the CPU {}", a.len(), b.len());
    }
    Ok(a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64)
}

/// A one-rank NCCL group on `dev` all-reduces a buffer (the sum over one rank is the buffer itself).
#[cfg(feature = "nccl")]
fn nccl_one_rank(dev: &Device, out: &std::path::Path) -> Result<String> {
    use unetr_train::distributed::{launch::Launch, nccl::{NcclComm, Rendezvous}, Communicator};
    let l = Launch { rank: 0, world: 1, local_rank: 0, master: None, launcher: "gpu-check" };
    let comm = NcclComm::new(&l, dev, &Rendezvous::File(out.join("nccl.id")), std::time::Duration::from_secs(60))?;
    let want: Vec<f32> = (0..(1 << 20)).map(|i| (i % 977) as f32 * 0.5).collect();
    let mut buf = want.clone();
    comm.all_reduce_sum(&mut buf)?;
    comm.barrier()?;
    if buf != want {
        bail!("NCCL all-reduce over one rank changed the host buffer");
    }
    // The gradients' path: a bucket reduced in device memory.
    let t = Tensor::from_slice(&want, want.len(), dev)?;
    let got = comm.all_reduce_sum_tensor(&t)?.to_vec1::<f32>()?;
    if got != want {
        bail!("NCCL all-reduce over one rank changed the device buffer");
    }
    Ok("ok: 2^20 floats all-reduced from host and from device memory, unchanged".into())
}

#[cfg(not(feature = "nccl"))]
fn nccl_one_rank(_dev: &Device, _out: &std::path::Path) -> Result<String> {
    Ok("skipped: built without the `nccl` feature".into())
}

fn median_ms(dev: &Device, repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    dev.synchronize()?;
    let mut t = Vec::new();
    for _ in 0..repeats.max(1) {
        let s = Instant::now();
        f()?;
        dev.synchronize()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn unfused_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    softmax_last_dim(&(q.matmul(&k.t()?.contiguous()?)? * scale)?)?.matmul(v)
}

pub fn run(a: Args) -> Result<()> {
    let dev = device(a.dry_run)?;
    // bf16 on the CPU computes in f32 per op (rounding between ops), which still rehearses the dtype plumbing.
    let dtypes = vec![DType::F32, DType::BF16];
    // Sizes: the model's shapes at full size on a GPU, reduced for the dry run.
    let (s, attn_l) = if dev.is_cpu() { (8, 27) } else { (24, 216) };
    let mut checks = Vec::new();
    let (p1, p2) = (Conv3dParams::new(1, 1), Conv3dParams::new(2, 0));
    let mut conv_ms = Vec::new();
    for backend in CONV_BACKENDS {
        use_conv_backend(backend)?;
        for &dt in &dtypes {
            check_op(&format!("conv3d 3x3x3 ({backend})"), &dev, dt, &[&[1, 8, s, s, s], &[16, 8, 3, 3, 3]], &|t| conv3d(&t[0], &t[1], None, p1), &mut checks)?;
            check_op(&format!("conv3d k2 s2 ({backend})"), &dev, dt, &[&[1, 4, s, s, s], &[8, 4, 2, 2, 2]], &|t| conv3d(&t[0], &t[1], None, p2), &mut checks)?;
            check_op(&format!("conv_transpose3d k2 s2 ({backend})"), &dev, dt, &[&[1, 8, s / 2, s / 2, s / 2], &[8, 4, 2, 2, 2]], &|t| conv_transpose3d(&t[0], &t[1], None, p2, [0; 3]), &mut checks)?;
        }
        // UNETR's most expensive conv: 16 -> 16 channels, 3x3x3, at the full 96^3 (16^3 in the dry run).
        let c = if dev.is_cpu() { 16 } else { 96 };
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 16, c, c, c), &dev)?)?;
        let w = candle_core::Var::from_tensor(&Tensor::randn(0f32, 0.1, (16, 16, 3, 3, 3), &dev)?)?;
        let fwd = median_ms(&dev, a.repeats, || Ok(drop(conv3d(x.as_tensor(), w.as_tensor(), None, p1)?)))?;
        let both = median_ms(&dev, a.repeats, || Ok(drop(conv3d(x.as_tensor(), w.as_tensor(), None, p1)?.sum_all()?.backward()?)))?;
        conv_ms.push((backend, c, fwd, both));
    }
    use_conv_backend(CONV_BACKENDS[0])?;
    for &dt in &dtypes {
        check_op("instance_norm + leaky_relu", &dev, dt, &[&[2, 8, s, s, s]], &|t| instance_norm_leaky_relu(&t[0], 1e-5, 0.01), &mut checks)?;
        check_op("leaky_relu", &dev, dt, &[&[2, 8, s, s]], &|t| leaky_relu(&t[0], 0.01), &mut checks)?;
        check_op("add_leaky_relu", &dev, dt, &[&[2, 8, s, s], &[2, 8, s, s]], &|t| add_leaky_relu(&t[0], &t[1], 0.01), &mut checks)?;
        check_op("gelu", &dev, dt, &[&[4, 3, 37]], &|t| gelu(&t[0]), &mut checks)?;
        check_op("softmax_last_dim", &dev, dt, &[&[4, 3, 37]], &|t| softmax_last_dim(&t[0]), &mut checks)?;
        check_op("attention", &dev, dt, &[&[1, 12, attn_l, 64], &[1, 12, attn_l, 64], &[1, 12, attn_l, 64]], &|t| attention(&t[0], &t[1], &t[2], 0.125), &mut checks)?;
    }
    // The model: forward against the CPU, then a few training steps on the device.
    let mut cfg = if dev.is_cpu() { UnetrConfig::monai(1, 3, [32; 3]) } else { UnetrConfig::btcv() };
    if dev.is_cpu() {
        (cfg.feature_size, cfg.hidden_size, cfg.mlp_dim, cfg.num_heads) = (4, 48, 96, 4);
    }
    let size = cfg.img_size;
    let x = Tensor::randn(0f32, 1.0, (1, cfg.in_channels, size[0], size[1], size[2]), &Device::Cpu)?;
    let w_cpu = UnetrWeights::init_seeded(&cfg, &Device::Cpu, 0)?;
    let w_dev = UnetrWeights::init_seeded(&cfg, &dev, 0)?;
    let y_ref = w_cpu.model.forward_t(&x, false)?;
    let y = w_dev.model.forward_t(&x.to_device(&dev)?, false)?;
    checks.push(Check { name: format!("UNETR forward {:?} f={}", size, cfg.feature_size), dtype: DType::F32, err: rel_err(&y, &y_ref)?, tol: 1e-3 });
    // Mixed precision: f32 master weights, bf16 compute.
    let bf = DType::BF16;
    let y16 = w_dev.model.forward_t(&x.to_device(&dev)?.to_dtype(bf)?, false)?.to_dtype(DType::F32)?;
    checks.push(Check { name: "UNETR forward, bf16 compute with f32 weights".into(), dtype: bf, err: rel_err(&y16, &y_ref)?, tol: 5e-2 });
    let label = Tensor::rand(0f32, cfg.out_channels as f32, (1, 1, size[0], size[1], size[2]), &dev)?.floor()?;
    let vars = w_dev.trainable_vars(unetr_model::Trainable::All);
    let mut opt = unetr_train::optim::AdamW::new(vars, unetr_train::optim::AdamWConfig { lr: 1e-3, ..Default::default() });
    let loss_opts = unetr_train::losses::DiceCeOptions::research();
    let xd = x.to_device(&dev)?;
    let mut losses = Vec::new();
    // `amp`: the bf16 mixed-precision step of `precision = "bf16"` in the trainer.
    let mut step_p = |amp: bool| -> Result<f64> {
        let x_in = if amp { xd.to_dtype(bf)? } else { xd.clone() };
        let logits = w_dev.model.forward_t(&x_in, true)?.to_dtype(DType::F32)?;
        let loss = unetr_train::losses::dice_ce_loss(&logits, &label, &loss_opts)?;
        let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        opt.step(&loss.backward()?)?;
        Ok(l)
    };
    for i in 0..6 {
        losses.push(step_p(i >= 3)?);
    }
    // Three f32 steps, then three bf16 mixed-precision steps continuing the same optimisation.
    let train_ok = losses.iter().all(|l| l.is_finite()) && losses[2] < losses[0] && losses[5] < losses[3];
    // The trainer itself on the device (a config's `device = "cuda"`): the phantom preset, 4 steps with a
    // sliding-window validation at steps 2 and 4, checkpoints and predictions written.
    let preset = include_str!("../../data/presets/phantom.toml");
    let mut tcfg = unetr_train::TrainConfig::from_toml(preset, std::path::Path::new("data/presets/phantom.toml"))?;
    tcfg.device = if dev.is_cpu() { "cpu" } else { "cuda" }.into();
    (tcfg.optim.steps, tcfg.optim.warmup_steps, tcfg.validation.every, tcfg.data.phantom_cases) = (4, 1, 2, 4);
    tcfg.output.dir = a.out.join("trainer");
    let _ = std::fs::remove_dir_all(&tcfg.output.dir);
    let ts = unetr_train::train(&tcfg, unetr_train::RunMode::Fresh)?;
    let trainer_ok = ts.losses.iter().all(|l| l.is_finite()) && ts.final_dice.is_finite();
    let agreement = infer_agreement(&tcfg.output.dir, &dev)?;
    let infer_ok = agreement >= 0.999;
    let nccl = nccl_one_rank(&dev, &a.out)?;
    // Benchmarks, with the device memory they need at most (the model and optimizer state included).
    unetr_ops::device_memory::reset_peak(&dev)?;
    let fwd_ms = median_ms(&dev, a.repeats, || Ok(drop(w_dev.model.forward_t(&xd, false)?)))?;
    let xb = xd.to_dtype(bf)?;
    let fwd_bf16_ms = median_ms(&dev, a.repeats, || Ok(drop(w_dev.model.forward_t(&xb, false)?)))?;
    let step_ms = median_ms(&dev, a.repeats, || step_p(false).map(drop))?;
    let step_bf16_ms = median_ms(&dev, a.repeats, || step_p(true).map(drop))?;
    let q = Tensor::randn(0f32, 1.0, (1, 12, attn_l, 64), &dev)?;
    let qv = candle_core::Var::from_tensor(&q)?;
    let attn = |fused: bool| -> Result<()> {
        let t = qv.as_tensor();
        let y = if fused { attention(t, t, t, 0.125)? } else { unfused_attention(t, t, t, 0.125)? };
        drop(y.sum_all()?.backward()?);
        Ok(())
    };
    let fused_ms = median_ms(&dev, a.repeats, || attn(true))?;
    let unfused_ms = median_ms(&dev, a.repeats, || attn(false))?;
    let peak_gb = unetr_ops::device_memory::peak_bytes(&dev)?.map(|b| b as f64 / 1e9);
    // Report.
    let failed: Vec<&Check> = checks.iter().filter(|c| !(c.err <= c.tol)).collect();
    let mut r = format!(
        "# gpu-check\n\nDevice: {}  \nCommand: `cargo xtask gpu-check{}`\n\n| check | dtype | rel. error | tolerance | |\n|---|---|---:|---:|---|\n",
        if dev.is_cpu() { "CPU (dry run: the CPU stands in for the device)".to_string() } else { format!("{:?}", dev.location()) },
        if a.dry_run { " --dry-run" } else { "" }
    );
    for c in &checks {
        r += &format!("| {} | {:?} | {:.2e} | {:.0e} | {} |\n", c.name, c.dtype, c.err, c.tol, if c.err <= c.tol { "ok" } else { "FAIL" });
    }
    r += &format!("\nTraining steps (DiceCE + AdamW lr 1e-3 on one batch; 3 in f32, then 3 in bf16 mixed precision): losses {:?} ({})\n\n", losses, if train_ok { "ok: finite, decreasing" } else { "FAIL" });
    r += &format!(
        "Trainer (`unetr_train::train`, phantom preset, device {:?}, 4 steps, validation at 2 and 4): losses {:?}, validation Dice {:.3}, {:.1} s ({})\n\n",
        tcfg.device, ts.losses, ts.final_dice, ts.seconds, if trainer_ok { "ok" } else { "FAIL" }
    );
    r += &format!(
        "Inference (`Predictor` as `unetr infer` runs it, the trainer's best checkpoint on its first validation phantom): {:.4} of the voxels labelled as on the CPU ({})\n\nNCCL, one rank: {nccl}\n\n",
        agreement,
        if infer_ok { "ok" } else { "FAIL" }
    );
    r += &format!("| conv 16 -> 16, 3x3x3, f32{} | size | forward ms | forward + backward ms |\n|---|---:|---:|---:|\n", if dev.is_cpu() { " (dry run: every row is the CPU)" } else { "" });
    for (b, c, f, fb) in &conv_ms {
        r += &format!("| {b} | {c}^3 | {f:.2} | {fb:.2} |\n");
    }
    r += "\n";
    r += &format!(
        "| benchmark (median of {}) | ms |\n|---|---:|\n| UNETR forward {:?}, f32 | {:.2} |\n| UNETR forward, bf16 compute, f32 weights | {:.2} |\n| training step (forward + DiceCE + backward + AdamW), f32 | {:.2} |\n| training step, bf16 mixed precision | {:.2} |\n| attention fwd+bwd, fused, [1, 12, {attn_l}, 64] | {:.3} |\n| attention fwd+bwd, unfused (matmul + softmax + matmul) | {:.3} |\n\nPeak device memory over these benchmarks (the memory pool's high-water mark, as `torch.cuda.max_memory_allocated`): {}\n",
        a.repeats, size, fwd_ms, fwd_bf16_ms, step_ms, step_bf16_ms, fused_ms, unfused_ms,
        peak_gb.map_or("n/a on the CPU".to_string(), |g| format!("{g:.2} GB"))
    );
    // Relative to the working directory: on a GPU machine the binary runs outside the tree it was built in.
    let out = a.out.clone();
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("report.md"), &r)?;
    let j = serde_json::json!({
        "device": if dev.is_cpu() { "cpu".to_string() } else { format!("{:?}", dev.location()) },
        "checks": checks.iter().map(|c| serde_json::json!({"name": c.name, "dtype": format!("{:?}", c.dtype), "err": c.err, "tol": c.tol})).collect::<Vec<_>>(),
        "losses": losses, "trainer_losses": ts.losses, "trainer_dice": ts.final_dice, "forward_ms": fwd_ms, "forward_bf16_ms": fwd_bf16_ms, "train_step_ms": step_ms, "train_step_bf16_ms": step_bf16_ms, "attention_fused_ms": fused_ms, "attention_unfused_ms": unfused_ms,
        "infer_agreement": agreement, "nccl": nccl, "peak_device_gb": peak_gb,
        "conv_ms": conv_ms.iter().map(|(b, c, f, fb)| serde_json::json!({"backend": b, "size": c, "forward": f, "forward_backward": fb})).collect::<Vec<_>>(),
    });
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&j)?)?;
    println!("{r}\nreport: {}", out.join("report.md").display());
    if !failed.is_empty() || !train_ok || !trainer_ok || !infer_ok {
        bail!(
            "{} check(s) failed{}{}{}",
            failed.len(),
            if train_ok { "" } else { ", and the training steps" },
            if trainer_ok { "" } else { ", and the trainer run" },
            if infer_ok { "" } else { ", and inference on the device" }
        );
    }
    Ok(())
}
