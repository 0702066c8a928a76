//! The training loop behind `cargo xtask train`: cached deterministic preprocessing, random crops prepared
//! on a background thread, DiceCE + AdamW with warmup-cosine and clipping, periodic sliding-window
//! validation with per-class Dice, best-checkpoint tracking, a progress bar, JSONL and CSV logs, checkpoint
//! folders replaced atomically (a kill -9 at any moment leaves the last one intact) and exact resume.

use crate::inferers::{sliding_window_inference, Blend, SlidingWindow};
use crate::losses::{dice_ce_loss, DiceCeOptions};
use crate::metrics::{dice_per_class, mean_dice};
use crate::amp::{GradScaler, Precision};
use crate::optim::{clip_grad_norm, warmup_cosine, AdamW, AdamWConfig};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use unetr_data::loader::{CacheDataset, Loader, LoaderConfig};
use unetr_data::nifti::{write_nifti, NonFinite, ReadOptions};
use unetr_data::phantom::{write_dataset, PhantomConfig};
use unetr_data::transforms::{load_item, Sample};
use unetr_data::{Compose, Datalist, TransformSpec};
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
    /// A MONAI-style transform list (`[[transforms.pipeline]]` entries with `name = "Orientation"`, ...)
    /// replacing the fields above; `roi` stays the model's input size and the validation window.
    pub pipeline: Option<Vec<TransformSpec>>,
    /// Bytes of preprocessed training volumes kept in memory (CacheDataset); the rest is recomputed per use.
    pub cache_bytes: u64,
    /// NaN/Inf voxels in inputs: "fail", or { replace = value }.
    pub nonfinite: NonFinite,
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
            pipeline: None,
            cache_bytes: 4 << 30,
            nonfinite: NonFinite::Fail,
        }
    }
}

impl TransformConfig {
    /// The pipeline: `pipeline` when given, else the research recipe's transforms from the fields above.
    pub fn specs(&self) -> Vec<TransformSpec> {
        if let Some(p) = &self.pipeline {
            return p.clone();
        }
        use TransformSpec as T;
        let mut v = vec![T::Orientation { axcodes: "RAS".into() }];
        if self.spacing {
            v.push(T::Spacing { pixdim: self.pixdim });
        }
        v.push(T::ScaleIntensityRange { a_min: self.a_min, a_max: self.a_max, b_min: self.b_min, b_max: self.b_max, clip: self.clip });
        if self.crop_foreground {
            v.push(T::CropForeground { margin: self.crop_foreground_margin });
        }
        v.push(T::RandCropByPosNegLabel { spatial_size: self.roi, pos: self.pos, neg: self.neg, num_samples: self.num_samples });
        if self.flip_prob > 0.0 {
            v.extend((0..3).map(|a| T::RandFlip { spatial_axis: a, prob: self.flip_prob }));
        }
        if self.rotate90_prob > 0.0 {
            v.push(T::RandRotate90 { prob: self.rotate90_prob, max_k: 3, spatial_axes: [0, 1] });
        }
        if self.intensity_prob > 0.0 {
            v.push(T::RandScaleIntensity { factors: self.intensity_scale, prob: self.intensity_prob });
            v.push(T::RandShiftIntensity { offsets: self.intensity_shift, prob: self.intensity_prob });
        }
        v
    }
    pub fn compose(&self) -> Result<Compose> {
        Ok(Compose::from_specs(&self.specs())?)
    }
    pub fn read_options(&self) -> ReadOptions {
        ReadOptions { nonfinite: self.nonfinite, ..Default::default() }
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
    /// Compute dtype of the training passes: "f32", "bf16" or "f16" (mixed precision: f32 master weights,
    /// loss in f32; f16 adds dynamic loss scaling). On the CPU the half types only round between ops (the
    /// kernels compute in f32), so they are for checking a GPU recipe, not for speed.
    pub precision: Precision,
}
impl Default for OptimConfig {
    fn default() -> Self {
        Self { adamw: AdamWConfig::default(), steps: 25000, warmup_steps: 50, min_lr: 0.0, batch_size: 1, accumulate: 1, grad_clip: 0.0, loss: DiceCeOptions::research(), precision: Precision::F32 }
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// "cpu" (default), "cuda" or "cuda:N" (a build with the `cuda` feature); top-level key of the TOML.
    pub device: String,
    pub data: DataConfig,
    pub transforms: TransformConfig,
    pub model: ModelConfig,
    pub optim: OptimConfig,
    pub validation: ValidationConfig,
    pub output: OutputConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            data: DataConfig::default(),
            transforms: TransformConfig::default(),
            model: ModelConfig::default(),
            optim: OptimConfig::default(),
            validation: ValidationConfig::default(),
            output: OutputConfig::default(),
        }
    }
}

/// The device a name stands for: "cpu", "cuda" (GPU 0) or "cuda:N". A CUDA name in a build without the
/// `cuda` feature, or a GPU that cannot be opened, is an error that says so.
pub fn parse_device(name: &str) -> Result<Device> {
    let gpu = match name.trim() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => return Err(TrainError::Config(format!("device {name:?}: expected \"cpu\", \"cuda\" or \"cuda:N\""))),
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(TrainError::Config(format!("device {name:?}: this build has no CUDA support (build with --features cuda)")));
    }
    Device::new_cuda(gpu).map_err(|e| TrainError::Config(format!("device {name:?}: {e}")))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    pub dir: PathBuf,
    pub seed: u64,
    /// Without a terminal (or with `progress = false`): print a progress line every this many steps.
    pub log_every: u64,
    /// A progress bar (loss, learning rate, throughput, ETA) when stderr is a terminal.
    pub progress: bool,
    /// Besides log.jsonl, write log.csv.
    pub log_csv: bool,
    /// Training batches prepared ahead on the loader thread.
    pub prefetch: usize,
}
impl Default for OutputConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("runs/train"), seed: 0, log_every: 10, progress: true, log_csv: true, prefetch: 2 }
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

/// The deterministic part of the pipeline (what training caches; by default load, orient to RAS, resample
/// to the target spacing, scale intensities, crop to the foreground). Every spatial step is recorded, so
/// predictions map back to the input grid.
pub fn preprocess(item: &unetr_data::Item, t: &TransformConfig) -> Result<Sample> {
    Ok(t.compose()?.apply_deterministic(load_item(item, &t.read_options())?)?)
}

/// state.json of a checkpoint. Batches are a function of (seed, step), so this is all a resume needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub step: u64,
    pub seed: u64,
    pub best_dice: f64,
    pub best_step: u64,
    /// The f16 loss scaler's state (absent in f32/bf16 runs and in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_scaler: Option<GradScaler>,
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

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut n = dir.file_name().unwrap_or_default().to_os_string();
    n.push(suffix);
    dir.with_file_name(n)
}

/// Marks a checkpoint folder as completely written (written last, after every file was synced).
pub const COMPLETE_MARKER: &str = ".complete";

/// Brings a checkpoint folder written by [`write_dir_atomic`] back to a complete state after a crash:
/// `dir` if complete, else the complete `dir.new` (crash between the two renames), else `dir.old`.
pub fn recover_dir(dir: &Path) -> Result<()> {
    let (new, old) = (sibling(dir, ".new"), sibling(dir, ".old"));
    let complete = |d: &Path| d.join(COMPLETE_MARKER).is_file();
    let rm = |d: &Path| if d.exists() { std::fs::remove_dir_all(d).map_err(|e| ferr(d, e)) } else { Ok(()) };
    if !complete(dir) {
        for cand in [&new, &old] {
            if complete(cand) {
                rm(dir)?;
                std::fs::rename(cand, dir).map_err(|e| ferr(dir, e))?;
                break;
            }
        }
    }
    rm(&new)?;
    rm(&old)
}

/// Replaces folder `dir` by one filled by `fill`, so that a kill at any moment leaves a complete folder:
/// written as `dir.new`, marked complete, then `dir` -> `dir.old`, `dir.new` -> `dir`, `dir.old` removed.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    recover_dir(dir)?;
    let (new, old) = (sibling(dir, ".new"), sibling(dir, ".old"));
    std::fs::create_dir_all(&new).map_err(|e| ferr(&new, e))?;
    fill(&new)?;
    for e in std::fs::read_dir(&new).map_err(|e| ferr(&new, e))? {
        let p = e.map_err(|e| ferr(&new, e))?.path();
        std::fs::File::open(&p).and_then(|f| f.sync_all()).map_err(|e| ferr(&p, e))?;
    }
    write_atomic(&new.join(COMPLETE_MARKER), b"")?;
    let _ = std::fs::File::open(&new).and_then(|f| f.sync_all());
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| ferr(dir, e))?;
    }
    std::fs::rename(&new, dir).map_err(|e| ferr(dir, e))?;
    if let Some(parent) = dir.parent() {
        let _ = std::fs::File::open(parent).and_then(|f| f.sync_all());
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| ferr(&old, e))?;
    }
    Ok(())
}

/// The training log: log.jsonl (read back for the plots) and optionally log.csv, one row per step.
struct TrainLog {
    jsonl: std::fs::File,
    csv: Option<std::fs::File>,
    paths: (PathBuf, PathBuf),
    n_classes: usize,
}

impl TrainLog {
    const CSV_COLS: [&'static str; 5] = ["step", "loss", "lr", "grad_norm", "elapsed_s"];

    /// Opens the logs for appending; on resume, first drops the records after the checkpoint's step (a
    /// killed run may have logged steps that the resumed run repeats).
    fn open(out: &Path, n_classes: usize, csv: bool, keep_until: Option<u64>) -> Result<Self> {
        let paths = (out.join("log.jsonl"), out.join("log.csv"));
        for p in [&paths.0, &paths.1] {
            match keep_until {
                Some(step) if p.exists() => {
                    let text = std::fs::read_to_string(p).map_err(|e| ferr(p, e))?;
                    // Only whole records of steps <= the checkpoint's (a kill may have cut the last line).
                    let is_csv = p.extension().is_some_and(|e| e == "csv");
                    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
                    let ncol = whole.lines().next().map_or(0, |h| h.split(',').count());
                    let kept: String = whole
                        .lines()
                        .enumerate()
                        .filter(|(i, l)| {
                            let rec_step = if is_csv {
                                if *i == 0 {
                                    return true;
                                }
                                let f: Vec<&str> = l.split(',').collect();
                                if f.len() == ncol { f[0].parse::<u64>().ok() } else { None }
                            } else {
                                serde_json::from_str::<serde_json::Value>(l).ok().and_then(|r| r["step"].as_u64())
                            };
                            rec_step.is_some_and(|s| s <= step)
                        })
                        .map(|(_, l)| format!("{l}\n"))
                        .collect();
                    write_atomic(p, kept.as_bytes())?;
                }
                None if p.exists() => std::fs::remove_file(p).map_err(|e| ferr(p, e))?,
                _ => {}
            }
        }
        let open = |p: &Path| std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(|e| ferr(p, e));
        let jsonl = open(&paths.0)?;
        let csv = if csv {
            let fresh = !paths.1.exists() || std::fs::metadata(&paths.1).map(|m| m.len() == 0).unwrap_or(true);
            let mut f = open(&paths.1)?;
            if fresh {
                let mut head: Vec<String> = Self::CSV_COLS.iter().map(|s| s.to_string()).collect();
                head.push("val_mean_dice".into());
                head.extend((0..n_classes).map(|c| format!("val_dice_{c}")));
                writeln!(f, "{}", head.join(",")).map_err(|e| ferr(&paths.1, e))?;
            }
            Some(f)
        } else {
            None
        };
        Ok(Self { jsonl, csv, paths, n_classes })
    }

    fn write(&mut self, rec: &serde_json::Value) -> Result<()> {
        writeln!(self.jsonl, "{rec}").map_err(|e| ferr(&self.paths.0, e))?;
        if let Some(f) = &mut self.csv {
            let num = |v: &serde_json::Value| v.as_f64().map(|x| x.to_string()).unwrap_or_default();
            let mut row: Vec<String> = Self::CSV_COLS.iter().map(|k| num(&rec[*k])).collect();
            row.push(num(&rec["val_mean_dice"]));
            row.extend((0..self.n_classes).map(|c| num(&rec["val_dice"][c])));
            writeln!(f, "{}", row.join(",")).map_err(|e| ferr(&self.paths.1, e))?;
        }
        Ok(())
    }
}

/// Sliding-window prediction (argmax labels and logits on the sample's grid) with a detached model.
pub fn predict_labels(model: &unetr_model::Unetr, s: &Sample, v: &ValidationConfig) -> Result<(Vec<f32>, Tensor)> {
    predict(model, s, v, false)
}

/// As [`predict_labels`]; with `tta`, logits are averaged over the identity and a mirror flip of each axis.
pub fn predict(model: &unetr_model::Unetr, s: &Sample, v: &ValidationConfig, tta: bool) -> Result<(Vec<f32>, Tensor)> {
    let d = s.dims;
    let x = Tensor::from_vec(s.image.clone(), (1, s.channels, d[0], d[1], d[2]), model.device())?;
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
    let dev = parse_device(&cfg.device)?;
    std::fs::create_dir_all(&out).map_err(|e| ferr(&out, e))?;
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
    let compose = Arc::new(t.compose()?);
    let read = t.read_options();
    let train_ds = Arc::new(CacheDataset::new(dl.training.clone(), compose.clone(), read.clone(), t.cache_bytes as usize)?);
    let val_set: Vec<Sample> = dl.validation.par_iter().map(|it| Ok(compose.apply_deterministic(load_item(it, &read)?)?)).collect::<Result<_>>()?;
    let train_set: Vec<Arc<Sample>> = (0..train_ds.len()).map(|i| train_ds.get(i)).collect::<std::result::Result<_, _>>()?;
    for (s, it) in train_set.iter().map(|s| &**s).chain(&val_set).zip(dl.training.iter().chain(&dl.validation)) {
        if let Some(m) = s.label.as_ref().and_then(|l| l.iter().cloned().reduce(f32::max)) {
            if m as usize >= n_classes {
                return Err(ferr(it.label.as_ref().unwrap(), format!("label {m} outside the {n_classes} classes declared in {}", json.display())));
            }
        }
    }
    let in_ch = train_set[0].channels;
    drop(train_set);
    // Model and optimiser.
    let mcfg = cfg.unetr(in_ch, n_classes)?;
    let w = UnetrWeights::init_seeded(&mcfg, &dev, cfg.output.seed)?;
    if let Some(p) = &cfg.model.pretrained {
        let rep = w.load_from(p, |k| k.starts_with("out."))?;
        tracing::info!("fine-tuning from {} ({} tensors, new: {:?})", p.display(), rep.loaded, rep.skipped);
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
    let precision = cfg.optim.precision;
    let mut state = TrainState {
        step: 0,
        seed: cfg.output.seed,
        best_dice: f64::NEG_INFINITY,
        best_step: 0,
        grad_scaler: precision.needs_loss_scaling().then(GradScaler::default),
    };
    if resume {
        recover_dir(&ckpt)?;
        let sp = ckpt.join("state.json");
        let st: TrainState = serde_json::from_str(&std::fs::read_to_string(&sp).map_err(|e| ferr(&sp, format!("cannot resume: {e}")))?).map_err(|e| ferr(&sp, e))?;
        if st.seed != cfg.output.seed {
            return Err(ferr(&sp, format!("checkpoint was trained with seed {}, the config says {}: resume would not continue the same run", st.seed, cfg.output.seed)));
        }
        w.load_from(&ckpt.join("model.safetensors"), |_| false)?;
        let os = candle_core::safetensors::load(ckpt.join("optimizer.safetensors"), &dev)?;
        opt.load_state(&os)?;
        tracing::info!("resuming at step {}", st.step);
        let scaler = st.grad_scaler.or(state.grad_scaler);
        state = TrainState { grad_scaler: if precision.needs_loss_scaling() { scaler } else { None }, ..st };
    }
    std::fs::write(out.join("config.toml"), cfg.to_toml()).map_err(|e| ferr(&out.join("config.toml"), e))?;
    let mut log = TrainLog::open(&out, n_classes, cfg.output.log_csv, resume.then_some(state.step))?;
    let o = &cfg.optim;
    let acc = o.accumulate.max(1) as u64;
    let mut loader = Loader::new(train_ds.clone(), LoaderConfig { batch_size: o.batch_size.max(1), seed: cfg.output.seed, prefetch: cfg.output.prefetch }, state.step * acc);
    let pb = if cfg.output.progress && std::io::stderr().is_terminal() {
        let pb = ProgressBar::new(o.steps).with_position(state.step);
        pb.set_style(ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]").unwrap_or_else(|_| ProgressStyle::default_bar()));
        pb.reset_eta();
        pb
    } else {
        ProgressBar::hidden()
    };
    let say = |m: String| if pb.is_hidden() { eprintln!("{m}") } else { pb.println(m) };
    let mut losses = Vec::new();
    let mut last_print = Instant::now();
    let mut last_val = (f64::NAN, vec![]);
    let run_start = (Instant::now(), state.step);
    while state.step < o.steps {
        let lr = warmup_cosine(state.step, o.warmup_steps, o.steps, o.adamw.lr, o.min_lr);
        opt.set_lr(lr);
        let mut grads_acc: Option<candle_core::backprop::GradStore> = None;
        let mut loss_v = 0.0;
        for _ in 0..acc {
            let b = loader.next().unwrap_or_else(|| Err(unetr_data::DataError::Invalid("the loader thread stopped".into())))?;
            let [d0, d1, d2] = b.dims;
            let x = Tensor::from_vec(b.image, (b.n, b.channels, d0, d1, d2), &dev)?;
            let y = Tensor::from_vec(b.label, (b.n, 1, d0, d1, d2), &dev)?;
            let logits = w.model.forward_t(&x.to_dtype(precision.dtype())?, true)?.to_dtype(DType::F32)?;
            let loss = (dice_ce_loss(&logits, &y, &o.loss)? / acc as f64)?;
            loss_v += loss.to_scalar::<f32>()? as f64;
            let g = match &state.grad_scaler {
                Some(s) => s.scale_loss(&loss)?.backward()?,
                None => loss.backward()?,
            };
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
        // f16: unscale first (clipping sees true norms); an overflowed step is skipped, as GradScaler does.
        let finite = match &state.grad_scaler {
            Some(s) => s.unscale(&mut grads, &vars)?,
            None => true,
        };
        let gnorm = if finite { clip_grad_norm(&mut grads, &vars, o.grad_clip)? } else { f64::NAN };
        if finite {
            opt.step(&grads)?;
        }
        if let Some(s) = state.grad_scaler.as_mut() {
            s.update(finite);
            if !finite {
                tracing::warn!("step {}: f16 gradients overflowed, step skipped, loss scale now {}", state.step + 1, s.scale);
            }
        }
        state.step += 1;
        losses.push(loss_v);
        if !loss_v.is_finite() {
            return Err(TrainError::Config(format!("loss became {loss_v} at step {}: lower the learning rate or enable grad_clip", state.step)));
        }
        let mut rec = serde_json::json!({"step": state.step, "loss": loss_v, "lr": lr, "grad_norm": gnorm, "elapsed_s": t0.elapsed().as_secs_f64()});
        if let Some(s) = &state.grad_scaler {
            rec["loss_scale"] = s.scale.into();
            rec["skipped"] = (!finite).into();
        }
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
            say(format!("  validation at step {}: mean Dice {md:.4} per class {:?}", state.step, per_class.iter().map(|d| d.map(|v| (v * 1000.0).round() / 1000.0)).collect::<Vec<_>>()));
            if md > state.best_dice {
                state.best_dice = md;
                state.best_step = state.step;
                write_dir_atomic(&out.join("best"), |d| {
                    w.save(&d.join("model.safetensors"))?;
                    write_atomic(&d.join("config.json"), serde_json::to_string_pretty(&mcfg).unwrap().as_bytes())?;
                    write_atomic(&d.join("train_config.toml"), cfg.to_toml().as_bytes())
                })?;
            }
            last_val = (md, per_class);
        }
        log.write(&rec)?;
        let steps_per_s = (state.step - run_start.1) as f64 / run_start.0.elapsed().as_secs_f64();
        pb.set_position(state.step);
        pb.set_message(format!("loss {loss_v:.4} lr {lr:.2e} {steps_per_s:.2} step/s"));
        if pb.is_hidden() && (state.step % cfg.output.log_every.max(1) == 0 || validate) {
            let el = t0.elapsed().as_secs_f64();
            let rate = last_print.elapsed().as_secs_f64() / cfg.output.log_every.max(1) as f64;
            let eta = (o.steps - state.step) as f64 / steps_per_s;
            eprintln!("step {:>6}/{} loss {loss_v:.4} lr {lr:.2e} {:.2} s/step elapsed {el:.0}s eta {eta:.0}s", state.step, o.steps, rate);
            last_print = Instant::now();
        }
        if validate {
            // Checkpoint: weights (MONAI names), optimiser, step, seed and configs, the folder replaced atomically.
            write_dir_atomic(&ckpt, |d| {
                w.save(&d.join("model.safetensors"))?;
                unetr_model::write_safetensors(&opt.state()?, &d.join("optimizer.safetensors"))?;
                write_atomic(&d.join("state.json"), serde_json::to_string_pretty(&state).unwrap().as_bytes())?;
                write_atomic(&d.join("config.json"), serde_json::to_string_pretty(&mcfg).unwrap().as_bytes())?;
                write_atomic(&d.join("train_config.toml"), cfg.to_toml().as_bytes())
            })?;
        }
    }
    pb.finish_and_clear();
    drop(loader);
    let log_path = out.join("log.jsonl");
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
