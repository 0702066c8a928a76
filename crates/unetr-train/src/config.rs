//! The training configuration (TOML): its schema, loading (with `--set section.key=value` overrides and
//! paths resolved against the config file's folder) and the validation of every field, which runs when
//! the config is loaded so that a bad value stops the command before any work.

use crate::error::{ferr, Result, TrainError};
use crate::losses::Loss;
use crate::optim::AdamWConfig;
use crate::amp::Precision;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use unetr_data::phantom::{PhantomConfig, PhantomKind};
use unetr_data::{Checks, MemoryLimit, TransformConfig};
use unetr_infer::inferers::{Blend, SlidingWindow};
use unetr_infer::{LabelMode, WindowSettings};
use unetr_model::{Checkpointing, UnetrConfig};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// A Decathlon dataset.json; empty: generate the built-in phantoms into the run's `phantom/` folder.
    pub dataset: Option<PathBuf>,
    pub phantom_cases: usize,
    pub phantom_seed: u64,
    /// Phantom voxels along world x, y, z.
    pub phantom_size: [usize; 3],
    /// Which phantoms: "ct" (four abdominal structures), "spleen" (CT, spleen only: MSD Task09's stand-in)
    /// or "brats" (4 MRI channels, nested tumour regions: MSD Task01's stand-in).
    pub phantom_kind: PhantomKind,
    /// For datalists without "validation" entries (the Decathlon's): the fraction of the training cases,
    /// taken from the end of the list, that validate.
    pub validation_fraction: f64,
}
impl Default for DataConfig {
    fn default() -> Self {
        Self { dataset: None, phantom_cases: 16, phantom_seed: 0, phantom_size: PhantomConfig::default().size, phantom_kind: PhantomKind::Ct, validation_fraction: 0.2 }
    }
}

impl DataConfig {
    /// The phantom dataset this section describes.
    pub fn phantom(&self) -> PhantomConfig {
        let n = self.phantom_cases;
        PhantomConfig { cases: n, validation: (n / 4).max(1), test: n / 8, seed: self.phantom_seed, size: self.phantom_size, kind: self.phantom_kind, ..Default::default() }
    }
}

/// Where training starts from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InitConfig {
    /// MONAI weights (.pth / .safetensors) to fine-tune; a head of another class count is re-initialised.
    pub pretrained: Option<PathBuf>,
    /// Train the decoder only.
    pub freeze_encoder: bool,
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
    pub loss: Loss,
    /// Compute dtype of the training passes: "f32", "bf16" or "f16" (mixed precision: f32 master weights,
    /// loss in f32; f16 adds dynamic loss scaling). On the CPU the half types only round between ops (the
    /// kernels compute in f32), so they are for checking a GPU recipe, not for speed.
    pub precision: Precision,
    /// Activation checkpointing: "none" (default), "vit", "decoder" or "all" blocks keep only their inputs
    /// in the forward and recompute their activations in the backward (less memory, one more forward).
    pub checkpointing: Checkpointing,
}
impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            adamw: AdamWConfig::default(),
            steps: 25000,
            warmup_steps: 50,
            min_lr: 0.0,
            batch_size: 1,
            accumulate: 1,
            grad_clip: 0.0,
            loss: Loss::default(),
            precision: Precision::F32,
            checkpointing: Checkpointing::None,
        }
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
        let w = WindowSettings::default();
        Self { every: 500, overlap: w.overlap, sw_batch: w.sw_batch, blend: w.blend, include_background: false }
    }
}
impl ValidationConfig {
    pub fn window(&self) -> WindowSettings {
        WindowSettings { overlap: self.overlap, sw_batch: self.sw_batch, blend: self.blend }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// The run's folder; empty: `runs/NAME` under the working directory, NAME being the config file's name.
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
        Self { dir: PathBuf::new(), seed: 0, log_every: 10, progress: true, log_csv: true, prefetch: 2 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// "cpu" (default), "cuda" or "cuda:N" (a build with the `cuda` feature).
    pub device: String,
    /// The largest single allocation a file may cause (a volume, a resampled grid, a checkpoint tensor).
    pub memory_limit: MemoryLimit,
    pub data: DataConfig,
    pub transforms: TransformConfig,
    /// MONAI's UNETR arguments; `in_channels`, `out_channels` and `img_size` come from the data and
    /// `transforms.roi` when left out.
    pub model: UnetrConfig,
    pub init: InitConfig,
    /// What the output channels mean: `mode = "classes"` (softmax over the label values, the default) or
    /// `mode = "regions"` with `regions = [{ name = "TC", values = [2, 3] }, ...]` (sigmoid per region).
    pub labels: LabelMode,
    pub optim: OptimConfig,
    pub validation: ValidationConfig,
    pub output: OutputConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            memory_limit: MemoryLimit::default(),
            data: DataConfig::default(),
            transforms: TransformConfig::default(),
            model: UnetrConfig::default(),
            init: InitConfig::default(),
            labels: LabelMode::Classes,
            optim: OptimConfig::default(),
            validation: ValidationConfig::default(),
            output: OutputConfig::default(),
        }
    }
}

/// Keys whose values are paths: relative ones are resolved against the config file's folder (or, given
/// with `--set`, against the working directory).
const PATH_KEYS: [(&str, &str); 3] = [("data", "dataset"), ("init", "pretrained"), ("output", "dir")];

/// Config files larger than this are not configs.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

fn resolve_paths(t: &mut toml::Table, base: &Path) {
    for (sec, key) in PATH_KEYS {
        if let Some(toml::Value::String(s)) = t.get_mut(sec).and_then(|v| v.as_table_mut()).and_then(|s| s.get_mut(key)) {
            let p = Path::new(s.as_str());
            if !s.is_empty() && p.is_relative() {
                *s = base.join(p).to_string_lossy().into_owned();
            }
        }
    }
}

/// Applies one `section.key=value` (dotted keys of any depth); the value is read as TOML (a number,
/// boolean, array, inline table or quoted string), or else as a bare string.
pub fn apply_override(t: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, value) = spec.split_once('=').ok_or_else(|| TrainError::Config(format!("--set {spec:?}: expected section.key=value")))?;
    let parts: Vec<&str> = key.trim().split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(TrainError::Config(format!("--set {spec:?}: empty key part")));
    }
    let value = value.trim();
    let parsed = format!("v = {value}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut cur = t;
    for p in &parts[..parts.len() - 1] {
        let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| TrainError::Config(format!("--set {spec:?}: {p} is not a section")))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), parsed);
    Ok(())
}

impl TrainConfig {
    /// Parses TOML text; `origin` names it in errors. No path resolution, no overrides.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        let t: toml::Table = text.parse().map_err(|e| ferr(origin, format!("invalid training config: {e}")))?;
        Self::from_table(t, origin)
    }

    fn from_table(t: toml::Table, origin: &Path) -> Result<Self> {
        let c: Self = toml::Value::Table(t).try_into().map_err(|e| ferr(origin, format!("invalid training config: {e}")))?;
        c.validate().map_err(|e| ferr(origin, e))?;
        Ok(c)
    }

    /// Reads a config file, resolves its relative paths against its folder, applies `overrides`
    /// (`section.key=value`; relative paths in them against the working directory) and validates the
    /// result. An empty `output.dir` becomes `runs/<file name>` under the working directory.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let len = std::fs::metadata(path).map_err(|e| ferr(path, format!("cannot read: {e}")))?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(ferr(path, format!("{len} bytes: not a training config")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| ferr(path, format!("cannot read: {e}")))?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Self::from_text(&text, path, base, overrides)
    }

    /// As [`load`](Self::load) for config text named `origin` whose relative paths are relative to `base`.
    pub fn from_text(text: &str, origin: &Path, base: &Path, overrides: &[String]) -> Result<Self> {
        let mut t: toml::Table = text.parse().map_err(|e| ferr(origin, format!("invalid training config: {e}")))?;
        resolve_paths(&mut t, base);
        let mut over = toml::Table::new();
        for o in overrides {
            apply_override(&mut over, o)?;
        }
        resolve_paths(&mut over, Path::new("."));
        merge(&mut t, over);
        let mut c = Self::from_table(t, origin)?;
        if c.output.dir.as_os_str().is_empty() {
            let stem = origin.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "train".into());
            c.output.dir = PathBuf::from("runs").join(stem);
        }
        Ok(c)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The model configuration for data with `in_channels` channels and `out_channels` classes: fields
    /// left out of `[model]` are filled in; ones given must agree.
    pub fn unetr(&self, in_channels: usize, out_channels: usize) -> Result<UnetrConfig> {
        let mut c = self.model.clone();
        for (field, given, data) in [("in_channels", &mut c.in_channels, in_channels), ("out_channels", &mut c.out_channels, out_channels)] {
            if *given == 0 {
                *given = data;
            } else if *given != data {
                return Err(TrainError::Config(format!("model.{field} = {given} but the data has {data}")));
            }
        }
        c.img_size = self.img_size();
        c.validate()?;
        Ok(c)
    }

    /// The model's input size: `model.img_size` when given, else the crop size `transforms.roi`.
    pub fn img_size(&self) -> [usize; 3] {
        if self.model.img_size == [0; 3] {
            self.transforms.roi
        } else {
            self.model.img_size
        }
    }

    /// The sliding window used for validation and inference.
    pub fn sliding_window(&self) -> SlidingWindow {
        let w = self.validation.window();
        SlidingWindow { roi: self.img_size(), overlap: w.overlap, sw_batch: w.sw_batch, blend: w.blend }
    }

    /// Every field's range (all problems listed at once, each naming its field).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let mut c = Checks::new();
        if let Err(e) = unetr_infer::device::check_device_name(&self.device) {
            c.fail(e.to_string());
        }
        let d = &self.data;
        c.count("data.phantom_cases", d.phantom_cases as u64, 2, 100_000).within_open("data.validation_fraction", d.validation_fraction, 0.0, 1.0);
        if let Err(e) = self.labels.check(None) {
            c.fail(e);
        }
        match (&self.labels, &self.optim.loss) {
            (LabelMode::Regions { .. }, Loss::SigmoidDice(_)) | (LabelMode::Classes, Loss::DiceCe(_) | Loss::Dice(_) | Loss::Ce) => {}
            (LabelMode::Regions { .. }, _) => {
                c.fail("labels.mode = \"regions\" trains with optim.loss.name = \"sigmoid_dice\" (one sigmoid per overlapping region)".into());
            }
            (LabelMode::Classes, _) => {
                c.fail("optim.loss.name = \"sigmoid_dice\" needs labels.mode = \"regions\"".into());
            }
        }
        for (a, &n) in d.phantom_size.iter().enumerate() {
            c.count(&format!("data.phantom_size[{a}]"), n as u64, 8, 2048);
        }
        self.transforms.check(&mut c);
        self.check_model(&mut c);
        let o = &self.optim;
        let w = &o.adamw;
        c.positive("optim.adamw.lr", w.lr)
            .within_open("optim.adamw.beta1", w.beta1, 0.0, 1.0)
            .within_open("optim.adamw.beta2", w.beta2, 0.0, 1.0)
            .positive("optim.adamw.eps", w.eps)
            .within("optim.adamw.weight_decay", w.weight_decay, 0.0, 1.0)
            .count("optim.steps", o.steps, 1, 1 << 40)
            .count("optim.warmup_steps", o.warmup_steps, 0, 1 << 40)
            .within("optim.min_lr", o.min_lr, 0.0, w.lr)
            .count("optim.batch_size", o.batch_size as u64, 1, 4096)
            .count("optim.accumulate", o.accumulate as u64, 1, 4096)
            .within("optim.grad_clip", o.grad_clip, 0.0, f64::MAX);
        o.loss.check(&mut c);
        let v = &self.validation;
        c.count("validation.every", v.every, 1, 1 << 40).within_open("validation.overlap", v.overlap, 0.0, 1.0).count("validation.sw_batch", v.sw_batch as u64, 1, 4096);
        let out = &self.output;
        c.count("output.log_every", out.log_every, 1, 1 << 40).count("output.prefetch", out.prefetch as u64, 0, 64);
        if let Some(p) = &self.init.pretrained {
            if !p.is_file() {
                c.fail(format!("init.pretrained = {}: no such file", p.display()));
            }
        }
        if let Some(p) = &self.data.dataset {
            if !p.is_file() {
                c.fail(format!("data.dataset = {}: no such file", p.display()));
            }
        }
        let problems = c.take();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The model section with placeholder channels (the data fills them in): ranges, divisibility of the
    /// input size by the patch size, and the weights' size against the memory limit.
    fn check_model(&self, c: &mut Checks) {
        let m = &self.model;
        let mut probe = m.clone();
        probe.in_channels = m.in_channels.max(1);
        probe.out_channels = m.out_channels.max(2);
        if let LabelMode::Regions { regions } = &self.labels {
            if m.out_channels != 0 && m.out_channels != regions.len() {
                c.fail(format!("model.out_channels = {} but labels has {} regions", m.out_channels, regions.len()));
            }
        }
        probe.img_size = self.img_size();
        if m.img_size != [0; 3] && m.img_size != self.transforms.roi {
            c.fail(format!("model.img_size = {:?} differs from transforms.roi = {:?} (the crop size is the model's input size)", m.img_size, self.transforms.roi));
        }
        c.count("model.feature_size", m.feature_size as u64, 1, 1024)
            .count("model.hidden_size", m.hidden_size as u64, 1, 16384)
            .count("model.mlp_dim", m.mlp_dim as u64, 1, 65536)
            .count("model.num_heads", m.num_heads as u64, 1, 1024)
            .count("model.num_layers", m.num_layers as u64, 4, 256);
        if !c.is_ok() {
            return;
        }
        match probe.validate() {
            Err(e) => {
                c.fail(format!("model: {e}"));
            }
            Ok(()) => {
                let bytes = unetr_model::count_params(&probe) as u64 * 4;
                if bytes > self.memory_limit.bytes() {
                    c.fail(format!("model: {} parameters ({bytes} bytes) are over the memory limit of {}", bytes / 4, self.memory_limit));
                }
            }
        }
    }
}

/// Merges `over` into `base`, table by table.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}
