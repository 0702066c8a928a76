//! The training loop behind `cargo xtask train`: cached deterministic preprocessing, random crops,
//! DiceCE + AdamW with warmup-cosine and clipping, periodic sliding-window validation with per-class
//! Dice, best-checkpoint tracking, JSONL logs, atomic checkpoints and exact resume.

use crate::inferers::{sliding_window_inference, Blend, SlidingWindow};
use crate::losses::{dice_ce_loss, DiceCeOptions};
use crate::metrics::{dice_per_class, mean_dice};
use crate::optim::{clip_grad_norm, warmup_cosine, AdamW, AdamWConfig};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use unetr_data::nifti::{write_nifti, ReadOptions};
use unetr_data::phantom::{write_dataset, PhantomConfig};
use unetr_data::transforms::{load_item, Sample};
use unetr_data::Datalist;
use unetr_model::{ProjType, UnetrConfig, UnetrWeights};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] unetr_data::DataError),
    #[error(transparent)]
    Model(#[from] unetr_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Config(String),
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
}
pub type Result<T> = std::result::Result<T, TrainError>;

fn ferr(path: &Path, msg: impl std::fmt::Display) -> TrainError {
    TrainError::File { path: path.to_path_buf(), msg: msg.to_string() }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// A Decathlon dataset.json; empty: generate the built-in phantoms into <output>/phantom.
    pub dataset: Option<PathBuf>,
    pub phantom_cases: usize,
    pub phantom_seed: u64,
    /// Phantom voxels along world x, y, z.
    pub phantom_size: [usize; 3],
}
impl Default for DataConfig {
    fn default() -> Self {
        Self { dataset: None, phantom_cases: 16, phantom_seed: 0, phantom_size: PhantomConfig::default().size }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformConfig {
    /// Spacing: resample to `pixdim` mm (trilinear images, nearest labels).
    pub spacing: bool,
    pub pixdim: [f64; 3],
    /// ScaleIntensityRange.
    pub a_min: f32,
    pub a_max: f32,
    pub b_min: f32,
    pub b_max: f32,
    pub clip: bool,
    /// CropForeground (image > 0 after the intensity scaling), with a margin in voxels.
    pub crop_foreground: bool,
    pub crop_foreground_margin: usize,
    /// RandRotate90 in the first two spatial axes, k in 1..=3.
    pub rotate90_prob: f64,
    /// RandCropByPosNegLabel.
    pub roi: [usize; 3],
    pub num_samples: usize,
    pub pos: f64,
    pub neg: f64,
    /// RandFlip per axis.
    pub flip_prob: f64,
    /// RandScaleIntensity / RandShiftIntensity.
    pub intensity_prob: f64,
    pub intensity_scale: f32,
    pub intensity_shift: f32,
}
impl Default for TransformConfig {
    /// The research recipe's values (BTCV CT window, 96^3 crops, 4 samples, pos = neg = 1).
    fn default() -> Self {
        Self {
            spacing: true,
            pixdim: [1.5, 1.5, 2.0],
            a_min: -175.0,
            a_max: 250.0,
            b_min: 0.0,
            b_max: 1.0,
            clip: true,
            crop_foreground: true,
            crop_foreground_margin: 0,
            rotate90_prob: 0.2,
            roi: [96; 3],
            num_samples: 4,
            pos: 1.0,
            neg: 1.0,
            flip_prob: 0.2,
            intensity_prob: 0.1,
            intensity_scale: 0.1,
            intensity_shift: 0.1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub feature_size: usize,
    pub hidden_size: usize,
    pub mlp_dim: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub patch_size: [usize; 3],
    pub proj_type: ProjType,
    pub norm_name: unetr_model::NormKind,
    pub res_block: bool,
    pub dropout_rate: f64,
    pub qkv_bias: bool,
    /// Start from MONAI weights (.pth / .safetensors); a head of another class count is re-initialised.
    pub pretrained: Option<PathBuf>,
    /// Train the decoder only.
    pub freeze_encoder: bool,
}
impl Default for ModelConfig {
    fn default() -> Self {
        let c = UnetrConfig::btcv();
        Self {
            feature_size: c.feature_size,
            hidden_size: c.hidden_size,
            mlp_dim: c.mlp_dim,
            num_heads: c.num_heads,
            num_layers: c.num_layers,
            patch_size: c.patch_size,
            proj_type: c.proj_type,
            norm_name: c.norm_name,
            res_block: c.res_block,
            dropout_rate: c.dropout_rate,
            qkv_bias: c.qkv_bias,
            pretrained: None,
            freeze_encoder: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub adamw: AdamWConfig,
    pub steps: u64,
    pub warmup_steps: u64,
    pub min_lr: f64,
    /// Volumes per step; each contributes `num_samples` crops.
    pub batch_size: usize,
    /// Steps whose gradients are summed before one optimiser update.
    pub accumulate: usize,
    /// Max global gradient norm (0: off).
    pub grad_clip: f64,
    pub loss: DiceCeOptions,
}
impl Default for OptimConfig {
    fn default() -> Self {
        Self { adamw: AdamWConfig::default(), steps: 25000, warmup_steps: 50, min_lr: 0.0, batch_size: 1, accumulate: 1, grad_clip: 0.0, loss: DiceCeOptions::research() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    pub every: u64,
    pub overlap: f64,
    pub sw_batch: usize,
    pub blend: Blend,
    pub include_background: bool,
}
impl Default for ValidationConfig {
    fn default() -> Self {
        Self { every: 500, overlap: 0.5, sw_batch: 4, blend: Blend::Gaussian, include_background: false }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub data: DataConfig,
    pub transforms: TransformConfig,
    pub model: ModelConfig,
    pub optim: OptimConfig,
    pub validation: ValidationConfig,
    pub output: OutputConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    pub dir: PathBuf,
    pub seed: u64,
    /// Print a progress line every this many steps.
    pub log_every: u64,
}
impl Default for OutputConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("runs/train"), seed: 0, log_every: 10 }
    }
}

impl TrainConfig {
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| ferr(origin, format!("invalid training config: {e}")))
    }
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
    pub fn unetr(&self, in_channels: usize, out_channels: usize) -> Result<UnetrConfig> {
        let m = &self.model;
        let mut c = UnetrConfig::monai(in_channels, out_channels, self.transforms.roi);
        c.feature_size = m.feature_size;
        c.hidden_size = m.hidden_size;
        c.mlp_dim = m.mlp_dim;
        c.num_heads = m.num_heads;
        c.num_layers = m.num_layers;
        c.patch_size = m.patch_size;
        c.proj_type = m.proj_type;
        c.norm_name = m.norm_name;
        c.res_block = m.res_block;
        c.dropout_rate = m.dropout_rate;
        c.qkv_bias = m.qkv_bias;
        c.validate()?;
        Ok(c)
    }
}

/// Deterministic preprocessing, cached (MONAI's CacheDataset): load, orient to RAS, resample to the target
/// spacing, scale intensities, crop to the foreground. Every spatial step is recorded, so predictions map
/// back to the input grid.
pub fn preprocess(item: &unetr_data::Item, t: &TransformConfig) -> Result<Sample> {
    let s = load_item(item, &ReadOptions::default())?.orient_ras();
    let s = if t.spacing { s.resample_spacing(t.pixdim) } else { s };
    let s = s.scale_intensity_range(t.a_min, t.a_max, t.b_min, t.b_max, t.clip);
    Ok(if t.crop_foreground { s.crop_foreground(t.crop_foreground_margin) } else { s })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub step: u64,
    pub rng_seed: u64,
    pub rng_word_pos: String,
    pub best_dice: f64,
    pub best_step: u64,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub final_dice: f64,
    pub per_class: Vec<Option<f64>>,
    pub best_dice: f64,
    pub out_dir: PathBuf,
    pub seconds: f64,
    pub losses: Vec<f64>,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| ferr(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| ferr(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ferr(path, e))
}

/// Stacks crops into [B, C, roi] images and [B, 1, roi] labels.
fn batch_tensors(crops: &[Sample], dev: &Device) -> Result<(Tensor, Tensor)> {
    let r = crops[0].dims;
    let c = crops[0].channels;
    let mut img = Vec::with_capacity(crops.len() * c * r.iter().product::<usize>());
    let mut lab = Vec::with_capacity(crops.len() * r.iter().product::<usize>());
    for s in crops {
        img.extend_from_slice(&s.image);
        lab.extend_from_slice(s.label.as_ref().expect("training crops carry labels"));
    }
    Ok((Tensor::from_vec(img, (crops.len(), c, r[0], r[1], r[2]), dev)?, Tensor::from_vec(lab, (crops.len(), 1, r[0], r[1], r[2]), dev)?))
}

/// Sliding-window prediction (argmax labels and logits on the sample's grid) with a detached model.
pub fn predict_labels(model: &unetr_model::Unetr, s: &Sample, v: &ValidationConfig) -> Result<(Vec<f32>, Tensor)> {
    predict(model, s, v, false)
}

/// As [`predict_labels`]; with `tta`, logits are averaged over the identity and a mirror flip of each axis.
pub fn predict(model: &unetr_model::Unetr, s: &Sample, v: &ValidationConfig, tta: bool) -> Result<(Vec<f32>, Tensor)> {
    let d = s.dims;
    let x = Tensor::from_vec(s.image.clone(), (1, s.channels, d[0], d[1], d[2]), &Device::Cpu)?;
    let sw = SlidingWindow { roi: model.cfg.img_size, overlap: v.overlap, sw_batch: v.sw_batch, blend: v.blend };
    let run = |x: &Tensor| sliding_window_inference(x, &sw, |b| model.forward_t(b, false).map_err(candle_core::Error::wrap));
    let mut logits = run(&x)?;
    if tta {
        for axis in 2..5 {
            let flipped = x.flip(&[axis])?;
            logits = (logits + run(&flipped)?.flip(&[axis])?)?;
        }
        logits = (logits / 4.0)?;
    }
    let labels = logits.argmax(1)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((labels, logits))
}

/// Trains as configured; `resume` continues from `<out>/checkpoint`.
pub fn train(cfg: &TrainConfig, resume: bool) -> Result<TrainSummary> {
    let t0 = Instant::now();
    let out = cfg.output.dir.clone();
    std::fs::create_dir_all(&out).map_err(|e| ferr(&out, e))?;
    let dev = Device::Cpu;
    // Data.
    let json = match &cfg.data.dataset {
        Some(p) => p.clone(),
        None => {
            let dir = out.join("phantom");
            let json = dir.join("dataset.json");
            if !json.exists() {
                eprintln!("generating {} phantom volumes in {}", cfg.data.phantom_cases, dir.display());
                let n = cfg.data.phantom_cases;
                let pc = PhantomConfig { cases: n, validation: (n / 4).max(1), test: n / 8, seed: cfg.data.phantom_seed, size: cfg.data.phantom_size, ..Default::default() };
                write_dataset(&pc, &dir)?;
            }
            json
        }
    };
    let dl = Datalist::from_json(&json)?;
    dl.check_files()?;
    if dl.training.is_empty() || dl.validation.is_empty() {
        return Err(TrainError::Config(format!("{}: needs both \"training\" and \"validation\" entries", json.display())));
    }
    let n_classes = dl.labels.iter().map(|l| l.0 + 1).max().unwrap_or(2).max(2);
    let t = &cfg.transforms;
    let train_set: Vec<Sample> = dl.training.par_iter().map(|it| preprocess(it, t)).collect::<Result<_>>()?;
    let val_set: Vec<Sample> = dl.validation.par_iter().map(|it| preprocess(it, t)).collect::<Result<_>>()?;
    for (s, it) in train_set.iter().chain(&val_set).zip(dl.training.iter().chain(&dl.validation)) {
        if let Some(m) = s.label.as_ref().and_then(|l| l.iter().cloned().reduce(f32::max)) {
            if m as usize >= n_classes {
                return Err(ferr(it.label.as_ref().unwrap(), format!("label {m} outside the {n_classes} classes declared in {}", json.display())));
            }
        }
    }
    let in_ch = train_set[0].channels;
    // Model and optimiser.
    let mcfg = cfg.unetr(in_ch, n_classes)?;
    let w = UnetrWeights::init_seeded(&mcfg, &dev, cfg.output.seed)?;
    if let Some(p) = &cfg.model.pretrained {
        let rep = w.load_from(p, |k| k.starts_with("out."))?;
        eprintln!("fine-tuning from {} ({} tensors, new: {:?})", p.display(), rep.loaded, rep.skipped);
    }
    let mut vars: Vec<(String, candle_core::Var)> = w
        .varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.contains("running_"))
        .filter(|(k, _)| !(cfg.model.freeze_encoder && k.starts_with("vit.")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut opt = AdamW::new(vars.clone(), cfg.optim.adamw);
    let ckpt = out.join("checkpoint");
    let mut state = TrainState { step: 0, rng_seed: cfg.output.seed, rng_word_pos: "0".into(), best_dice: f64::NEG_INFINITY, best_step: 0 };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.output.seed);
    if resume {
        let st: TrainState = serde_json::from_str(&std::fs::read_to_string(ckpt.join("state.json")).map_err(|e| ferr(&ckpt.join("state.json"), e))?)
            .map_err(|e| ferr(&ckpt.join("state.json"), e))?;
        w.load_from(&ckpt.join("model.safetensors"), |_| false)?;
        let os = candle_core::safetensors::load(ckpt.join("optimizer.safetensors"), &dev)?;
        opt.load_state(&os)?;
        rng = ChaCha8Rng::seed_from_u64(st.rng_seed);
        rng.set_word_pos(st.rng_word_pos.parse::<u128>().map_err(|e| TrainError::Config(format!("state.json: {e}")))?);
        eprintln!("resuming at step {}", st.step);
        state = st;
    }
    std::fs::write(out.join("config.toml"), cfg.to_toml()).map_err(|e| ferr(&out.join("config.toml"), e))?;
    let log_path = out.join("log.jsonl");
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| ferr(&log_path, e))?;
    let o = &cfg.optim;
    let mut losses = Vec::new();
    let mut last_print = Instant::now();
    let mut last_val = (f64::NAN, vec![]);
    while state.step < o.steps {
        let lr = warmup_cosine(state.step, o.warmup_steps, o.steps, o.adamw.lr, o.min_lr);
        opt.set_lr(lr);
        let mut grads_acc: Option<candle_core::backprop::GradStore> = None;
        let mut loss_v = 0.0;
        for _ in 0..o.accumulate.max(1) {
            let mut crops = Vec::new();
            for _ in 0..o.batch_size.max(1) {
                let s = &train_set[rng.random_range(0..train_set.len())];
                for c in s.rand_crop_pos_neg(t.roi, t.pos, t.neg, t.num_samples, &mut rng)? {
                    let mut c = c;
                    for axis in 0..3 {
                        c = c.rand_flip(axis, t.flip_prob, &mut rng);
                    }
                    if t.rotate90_prob > 0.0 && c.dims[0] == c.dims[1] {
                        c = c.rand_rotate90(t.rotate90_prob, 3, (0, 1), &mut rng);
                    }
                    crops.push(c.rand_intensity(t.intensity_scale, t.intensity_shift, t.intensity_prob, &mut rng));
                }
            }
            let (x, y) = batch_tensors(&crops, &dev)?;
            let logits = w.model.forward_t(&x, true)?;
            let loss = (dice_ce_loss(&logits, &y, &o.loss)? / o.accumulate.max(1) as f64)?;
            loss_v += loss.to_scalar::<f32>()? as f64;
            let g = loss.backward()?;
            grads_acc = Some(match grads_acc {
                None => g,
                Some(mut acc) => {
                    for (_, v) in &vars {
                        if let (Some(a), Some(b)) = (acc.get(v.as_tensor()), g.get(v.as_tensor())) {
                            let s = (a.detach() + b.detach())?;
                            acc.insert(v.as_tensor(), s);
                        }
                    }
                    acc
                }
            });
        }
        let mut grads = grads_acc.unwrap();
        let gnorm = clip_grad_norm(&mut grads, &vars, o.grad_clip)?;
        opt.step(&grads)?;
        state.step += 1;
        losses.push(loss_v);
        if !loss_v.is_finite() {
            return Err(TrainError::Config(format!("loss became {loss_v} at step {}: lower the learning rate or enable grad_clip", state.step)));
        }
        let mut rec = serde_json::json!({"step": state.step, "loss": loss_v, "lr": lr, "grad_norm": gnorm, "elapsed_s": t0.elapsed().as_secs_f64()});
        let validate = state.step % cfg.validation.every.max(1) == 0 || state.step == o.steps;
        if validate {
            let model = w.inference_model()?;
            let mut per = vec![Vec::new(); n_classes];
            for s in &val_set {
                let (pred, _) = predict_labels(&model, s, &cfg.validation)?;
                for (c, d) in dice_per_class(&pred, s.label.as_ref().unwrap(), n_classes).into_iter().enumerate() {
                    if let Some(d) = d {
                        per[c].push(d);
                    }
                }
            }
            let per_class: Vec<Option<f64>> = per.iter().map(|v| if v.is_empty() { None } else { Some(v.iter().sum::<f64>() / v.len() as f64) }).collect();
            let md = mean_dice(&per_class, cfg.validation.include_background);
            rec["val_mean_dice"] = md.into();
            rec["val_dice"] = serde_json::to_value(&per_class).unwrap();
            eprintln!("  validation at step {}: mean Dice {md:.4} per class {:?}", state.step, per_class.iter().map(|d| d.map(|v| (v * 1000.0).round() / 1000.0)).collect::<Vec<_>>());
            if md > state.best_dice {
                state.best_dice = md;
                state.best_step = state.step;
                std::fs::create_dir_all(out.join("best")).map_err(|e| ferr(&out.join("best"), e))?;
                w.save(&out.join("best").join("model.safetensors"))?;
                write_atomic(&out.join("best").join("config.json"), serde_json::to_string_pretty(&mcfg).unwrap().as_bytes())?;
                write_atomic(&out.join("best").join("train_config.toml"), cfg.to_toml().as_bytes())?;
            }
            last_val = (md, per_class);
        }
        writeln!(log, "{rec}").map_err(|e| ferr(&log_path, e))?;
        if state.step % cfg.output.log_every.max(1) == 0 || validate {
            let el = t0.elapsed().as_secs_f64();
            let rate = last_print.elapsed().as_secs_f64() / cfg.output.log_every.max(1) as f64;
            let eta = rate * (o.steps - state.step) as f64;
            eprintln!("step {:>6}/{} loss {loss_v:.4} lr {lr:.2e} {:.2} s/step elapsed {el:.0}s eta {eta:.0}s", state.step, o.steps, rate);
            last_print = Instant::now();
        }
        if validate {
            // Checkpoint: weights (MONAI names), optimiser, step and RNG state, each file written atomically.
            std::fs::create_dir_all(&ckpt).map_err(|e| ferr(&ckpt, e))?;
            w.save(&ckpt.join("model.safetensors"))?;
            unetr_model::write_safetensors(&opt.state()?, &ckpt.join("optimizer.safetensors"))?;
            state.rng_word_pos = rng.get_word_pos().to_string();
            write_atomic(&ckpt.join("state.json"), serde_json::to_string_pretty(&state).unwrap().as_bytes())?;
            write_atomic(&ckpt.join("config.json"), serde_json::to_string_pretty(&mcfg).unwrap().as_bytes())?;
            write_atomic(&ckpt.join("train_config.toml"), cfg.to_toml().as_bytes())?;
        }
    }
    // Curves (loss; validation Dice per class) and overlays, then predictions on each input's original grid.
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| ferr(&plots, e))?;
    let log_text = std::fs::read_to_string(&log_path).map_err(|e| ferr(&log_path, e))?;
    let recs: Vec<serde_json::Value> = log_text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let loss: Vec<(f64, f64)> = recs.iter().filter_map(|r| Some((r["step"].as_f64()?, r["loss"].as_f64()?))).collect();
    crate::plots::curves_png(&plots.join("loss.png"), &[(loss, [40, 90, 200])], None).map_err(|e| ferr(&plots.join("loss.png"), e))?;
    let mut dice_series = Vec::new();
    for c in 0..n_classes {
        let pts: Vec<(f64, f64)> = recs.iter().filter_map(|r| Some((r["step"].as_f64()?, r["val_dice"].get(c)?.as_f64()?))).collect();
        dice_series.push((pts, crate::plots::COLORS[c % crate::plots::COLORS.len()]));
    }
    let mean: Vec<(f64, f64)> = recs.iter().filter_map(|r| Some((r["step"].as_f64()?, r["val_mean_dice"].as_f64()?))).collect();
    dice_series.push((mean, [120, 120, 120]));
    crate::plots::curves_png(&plots.join("val_dice.png"), &dice_series, Some((0.0, 1.0))).map_err(|e| ferr(&plots.join("val_dice.png"), e))?;
    let model = w.inference_model()?;
    let pred_dir = out.join("predictions");
    std::fs::create_dir_all(&pred_dir).map_err(|e| ferr(&pred_dir, e))?;
    for (vi, (s, it)) in val_set.iter().zip(&dl.validation).enumerate() {
        let (pred, _) = predict_labels(&model, s, &cfg.validation)?;
        if vi < 4 {
            let p = plots.join(format!("overlay_{vi}.png"));
            crate::plots::overlay_png(&p, &s.image, s.label.as_ref().unwrap(), &pred, s.dims, 4).map_err(|e| ferr(&p, e))?;
        }
        let vol = s.invert(&pred, 1, 0.0);
        let name = it.image[0].file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "pred.nii.gz".into());
        write_nifti(&pred_dir.join(name), &vol, true)?;
    }
    Ok(TrainSummary { final_dice: last_val.0, per_class: last_val.1, best_dice: state.best_dice, out_dir: out, seconds: t0.elapsed().as_secs_f64(), losses })
}
