//! MONAI weights in and out: `.safetensors` and PyTorch `.pth`/`.pt` state dicts (bare, or nested under
//! "state_dict" / "model"; DataParallel's "module." prefix stripped), checked key by key against the model.

use crate::config::UnetrConfig;
use crate::error::{ModelError, Result};
use crate::unetr::Unetr;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Keys that MONAI versions write but the forward pass never uses.
fn known_unused(key: &str) -> bool {
    key == "vit.patch_embedding.cls_token" // MONAI <= 0.8.1
        || key.contains(".norm_cross_attn.") // MONAI >= 1.4
        || key.contains(".cross_attn.")
        || key.ends_with("num_batches_tracked")
        || key.contains(".conv3.") // MONAI 0.7 creates conv3/norm3 in every UnetResBlock
        || key.contains(".norm3.")
}

fn file_err(path: &Path, msg: impl std::fmt::Display) -> ModelError {
    ModelError::File { path: path.to_path_buf(), msg: msg.to_string() }
}

/// All tensors of a checkpoint, by name. Format by extension (any case): `.safetensors`, else a PyTorch
/// zip pickle. Every tensor's size is checked against `max_bytes` before it is allocated.
pub fn load_state_dict(path: &Path, max_bytes: u64) -> Result<Vec<(String, Tensor)>> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => file_err(path, "no such file"),
        _ => file_err(path, format!("cannot read: {e}")),
    })?;
    if !meta.is_file() {
        return Err(file_err(path, "not a file"));
    }
    let is_st = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let tensors = if is_st {
        // The safetensors reader checks every header offset against the file; the tensors are copies of
        // the file's bytes, so the file's size bounds them.
        if meta.len() > max_bytes {
            return Err(file_err(path, format!("{} bytes, over the memory limit of {max_bytes} bytes", meta.len())));
        }
        candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| file_err(path, format!("not a readable safetensors file: {e}")))?
            .into_iter()
            .collect::<Vec<_>>()
    } else {
        crate::pth::read_pth(path, max_bytes)?
    };
    Ok(tensors.into_iter().map(|(k, t)| (k.strip_prefix("module.").map(str::to_string).unwrap_or(k), t)).collect())
}

/// What loading did besides copying tensors.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub loaded: usize,
    pub ignored: Vec<String>,
    /// Keys left at their initial values because the caller allowed it (e.g. a new head).
    pub skipped: Vec<String>,
}

/// Which parameters train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trainable {
    All,
    /// The encoder frozen (fine-tuning the decoder only).
    DecoderOnly,
}

/// A model whose weights live in a `VarMap` (trainable, saveable).
pub struct UnetrWeights {
    pub model: Unetr,
    pub varmap: VarMap,
}

impl UnetrWeights {
    /// A freshly initialised model (MONAI's/PyTorch's default init), seed 0.
    pub fn init(cfg: &UnetrConfig, device: &Device) -> Result<Self> {
        Self::init_seeded(cfg, device, 0)
    }

    /// A freshly initialised model whose initial weights depend only on `seed` (candle's CPU random
    /// generator cannot be seeded, so the draws come from our own ChaCha generator, in construction order).
    pub fn init_seeded(cfg: &UnetrConfig, device: &Device, seed: u64) -> Result<Self> {
        let varmap = VarMap::new();
        let backend = SeededInit { varmap: varmap.clone(), rng: std::sync::Mutex::new(ChaCha8Rng::seed_from_u64(seed)) };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let model = Unetr::new(cfg, vb)?;
        Ok(Self { model, varmap })
    }

    /// A model with the weights of a MONAI checkpoint. Every expected key must be present with the right
    /// shape, and every key of the file must be expected or known-unused; otherwise the error lists them all.
    /// No tensor larger than `max_bytes` is allocated (see [`load_state_dict`]).
    pub fn load(cfg: &UnetrConfig, path: &Path, device: &Device, max_bytes: u64) -> Result<Self> {
        let w = Self::init(cfg, device)?;
        w.load_from(path, max_bytes, |_| false)?;
        Ok(w)
    }

    /// Copies a checkpoint's tensors in; keys for which `may_skip` is true may be missing or mis-shaped
    /// (fine-tuning with a new head) and keep their initial values.
    pub fn load_from(&self, path: &Path, max_bytes: u64, may_skip: impl Fn(&str) -> bool) -> Result<LoadReport> {
        let file: HashMap<String, Tensor> = load_state_dict(path, max_bytes)?.into_iter().collect();
        let vars = self.varmap.data().lock().unwrap();
        let mut missing = Vec::new();
        let mut mismatched = Vec::new();
        let mut report = LoadReport::default();
        let mut assign = Vec::new();
        let expected: BTreeMap<_, _> = vars.iter().collect();
        for (name, var) in &expected {
            match file.get(name.as_str()) {
                None if may_skip(name) => report.skipped.push(name.to_string()),
                None => missing.push(name.to_string()),
                Some(t) if t.dims() != var.dims() => {
                    if may_skip(name) {
                        report.skipped.push(name.to_string());
                    } else {
                        mismatched.push(format!("{name}: file {:?}, model {:?}", t.dims(), var.dims()));
                    }
                }
                Some(t) => assign.push((var, t)),
            }
        }
        let mut unexpected = Vec::new();
        for k in file.keys() {
            if !expected.contains_key(k) {
                if known_unused(k) {
                    report.ignored.push(k.clone());
                } else {
                    unexpected.push(k.clone());
                }
            }
        }
        if !(missing.is_empty() && mismatched.is_empty() && unexpected.is_empty()) {
            unexpected.sort();
            let mut d = String::new();
            for (title, list) in [("missing", &missing), ("wrong shape", &mismatched), ("unexpected", &unexpected)] {
                if !list.is_empty() {
                    d += &format!("  {} {title} key(s):\n", list.len());
                    for k in list.iter() {
                        d += &format!("    {k}\n");
                    }
                }
            }
            d += "  (check the config: feature_size, hidden_size, norm_name, res_block, proj_type, qkv_bias, channels, img_size)";
            return Err(ModelError::Checkpoint { path: path.to_path_buf(), details: d });
        }
        for (var, t) in assign {
            if !t.dtype().is_float() {
                return Err(file_err(path, format!("tensor of shape {:?} has non-float dtype {:?}", t.dims(), t.dtype())));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
            report.loaded += 1;
        }
        report.ignored.sort();
        Ok(report)
    }

    /// The parameters an optimiser updates, sorted by name: every weight except batch-norm running
    /// statistics, and with [`Trainable::DecoderOnly`] none of the encoder's (`vit.*`).
    pub fn trainable_vars(&self, which: Trainable) -> Vec<(String, candle_core::Var)> {
        let vars = self.varmap.data().lock().unwrap();
        let mut v: Vec<(String, candle_core::Var)> = vars
            .iter()
            .filter(|(k, _)| !k.contains("running_"))
            .filter(|(k, _)| !(which == Trainable::DecoderOnly && k.starts_with("vit.")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        save_safetensors(&self.varmap, path)
    }

    /// The same weights as constants (shared storage, no copy) for inference. Ops on `Var`s record the
    /// autograd graph, which keeps every activation alive until the output is dropped; a model built on
    /// detached tensors frees each activation as soon as it has been used.
    pub fn inference_model(&self) -> Result<Unetr> {
        let vars = self.varmap.data().lock().unwrap();
        let tensors: HashMap<String, Tensor> = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
        let (dtype, device) = vars.values().next().map(|v| (v.dtype(), v.device().clone())).unwrap_or((DType::F32, Device::Cpu));
        drop(vars);
        Unetr::new(&self.model.cfg, VarBuilder::from_tensors(tensors, dtype, &device))
    }
}

/// A VarBuilder backend that creates variables in a VarMap with seeded initial values.
struct SeededInit {
    varmap: VarMap,
    rng: std::sync::Mutex<ChaCha8Rng>,
}

impl candle_nn::var_builder::SimpleBackend for SeededInit {
    fn get(&self, s: candle_core::Shape, name: &str, h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().unwrap();
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("{name}: created with shape {:?}, requested {:?}", v.shape(), s);
            }
            return Ok(v.as_tensor().clone());
        }
        let n = s.elem_count();
        let mut rng = self.rng.lock().unwrap();
        let vals: Vec<f32> = match h {
            candle_nn::Init::Const(c) => vec![c as f32; n],
            candle_nn::Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
            candle_nn::Init::Randn { mean, stdev } => (0..n)
                .map(|_| {
                    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
                    (mean + stdev * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
                })
                .collect(),
            other => candle_core::bail!("{name}: init {other:?} is not used by UNETR"),
        };
        let t = Tensor::from_vec(vals, s, dev)?.to_dtype(dtype)?;
        let v = candle_core::Var::from_tensor(&t)?;
        let out = v.as_tensor().clone();
        data.insert(name.to_string(), v);
        Ok(out)
    }
    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        match self.varmap.data().lock().unwrap().get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("{name}: no such variable"),
        }
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().unwrap().contains_key(name)
    }
}

/// Saves with MONAI's names, atomically (temporary file + rename). Batch norms get the
/// `num_batches_tracked` buffer PyTorch's state dict carries.
pub fn save_safetensors(varmap: &VarMap, path: &Path) -> Result<()> {
    let vars = varmap.data().lock().unwrap();
    let mut tensors: BTreeMap<String, Tensor> = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    let bn: Vec<String> = tensors.keys().filter_map(|k| k.strip_suffix(".running_mean").map(str::to_string)).collect();
    for prefix in bn {
        tensors.insert(format!("{prefix}.num_batches_tracked"), Tensor::new(0i64, &Device::Cpu)?);
    }
    drop(vars);
    write_safetensors(&tensors.into_iter().collect(), path)
}

/// Writes tensors to a .safetensors file atomically: a crash leaves either the old file or the new one.
pub fn write_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    candle_core::safetensors::save(tensors, &tmp).map_err(|e| file_err(&tmp, format!("writing: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_err(path, format!("renaming {}: {e}", tmp.display()))
    })?;
    Ok(())
}

/// Reads one named tensor from a .safetensors file, with errors that name the file and the problem.
pub fn read_tensor(path: &Path, name: &str, device: &Device) -> Result<Tensor> {
    if !path.exists() {
        return Err(file_err(path, "no such file"));
    }
    let mut all = candle_core::safetensors::load(path, device).map_err(|e| file_err(path, format!("not a readable safetensors file: {e}")))?;
    all.remove(name).ok_or_else(|| {
        let mut keys: Vec<_> = all.keys().cloned().collect();
        keys.sort();
        file_err(path, format!("no tensor named {name:?} (found: {keys:?})"))
    })
}
