//! A run's data: the configured datalist or the built-in phantoms, the cached training set, the
//! preprocessed validation set, and the class count, all checked before training starts.

use crate::config::TrainConfig;
use crate::error::{ferr, Result, TrainError};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use unetr_data::loader::CacheDataset;
use unetr_data::phantom::{recorded_config, write_dataset};
use unetr_data::transforms::{load_item, Sample};
use unetr_data::Datalist;

/// The phantom folder of a run, and whether it may be (re)generated.
pub fn phantom_dir(out: &Path) -> PathBuf {
    out.join("phantom")
}

/// The datalist a run trains on: `data.dataset`, or the phantoms in `<out>/phantom`, generated when
/// absent. A phantom folder generated with other settings is never reused silently: it is an error,
/// unless `regenerate` (the user asked to overwrite the run) replaces it.
pub fn dataset_json(cfg: &TrainConfig, out: &Path, regenerate: bool) -> Result<PathBuf> {
    if let Some(p) = &cfg.data.dataset {
        return Ok(p.clone());
    }
    let dir = phantom_dir(out);
    let json = dir.join("dataset.json");
    let want = cfg.data.phantom();
    if dir.exists() {
        match recorded_config(&dir) {
            Some(have) if have == want && json.is_file() => return Ok(json),
            _ if !regenerate => {
                return Err(ferr(
                    &dir,
                    "holds phantoms generated with other settings (data.phantom_*) or by an older version: pass --overwrite to regenerate them, or choose another output folder",
                ))
            }
            _ => std::fs::remove_dir_all(&dir).map_err(|e| ferr(&dir, format!("removing the old phantoms: {e}")))?,
        }
    }
    eprintln!("generating {} phantom volumes in {}", want.cases, dir.display());
    write_dataset(&want, &dir)?;
    Ok(json)
}

/// The loaded data of a run.
pub struct RunData {
    pub datalist: Datalist,
    pub train: Arc<CacheDataset>,
    pub validation: Vec<Sample>,
    pub in_channels: usize,
    /// Label values 0..n_classes of the datalist, and their names.
    pub n_classes: usize,
    pub class_names: Vec<String>,
    /// The model's output channels, their names, and the label values each stands for (one class each,
    /// or the regions of `[labels]`).
    pub channels: usize,
    pub channel_names: Vec<String>,
    pub sets: Vec<Vec<u32>>,
}

/// Reads the datalist, preprocesses every training and validation case (so a bad file stops the run
/// before the first step), and checks channels and label values against the declared classes.
pub fn load(cfg: &TrainConfig, json: &Path) -> Result<RunData> {
    let mut dl = Datalist::from_json(json, cfg.memory_limit)?;
    dl.check_files()?;
    if dl.validation.is_empty() && dl.training.len() >= 2 {
        // As MONAI's tutorials for the Decathlon's datalists (which have no validation split): the last
        // cases of the training list.
        let n = ((dl.training.len() as f64 * cfg.data.validation_fraction).ceil() as usize).clamp(1, dl.training.len() - 1);
        dl.validation = dl.training.split_off(dl.training.len() - n);
        tracing::info!("{}: no \"validation\" entries; the last {n} training case(s) validate (data.validation_fraction)", json.display());
    }
    if dl.training.is_empty() || dl.validation.is_empty() {
        return Err(ferr(json, "needs at least two labelled cases (\"training\", and \"validation\" or data.validation_fraction)"));
    }
    if dl.labels.len() < 2 {
        return Err(ferr(json, "\"labels\" must name at least two classes (index 0 is the background)"));
    }
    let n_classes = dl.labels.len();
    let class_names: Vec<String> = dl.labels.iter().map(|l| l.1.clone()).collect();
    cfg.labels.check(Some(n_classes)).map_err(|e| ferr(json, e))?;
    let (channels, channel_names, sets) = (cfg.labels.out_channels(n_classes), cfg.labels.names(&class_names), cfg.labels.value_sets(n_classes));
    let t = &cfg.transforms;
    let compose = Arc::new(t.compose()?);
    let read = t.read_options(cfg.memory_limit);
    let train = Arc::new(CacheDataset::new(dl.training.clone(), compose.clone(), read.clone(), t.cache_bytes as usize)?);
    let validation: Vec<Sample> = dl.validation.par_iter().map(|it| Ok(compose.apply_deterministic(load_item(it, &read)?)?)).collect::<Result<_>>()?;
    let train_set: Vec<Arc<Sample>> = (0..train.len()).map(|i| train.get(i)).collect::<std::result::Result<_, _>>()?;
    let in_channels = train_set[0].channels;
    for (s, it) in train_set.iter().map(|s| &**s).chain(&validation).zip(dl.training.iter().chain(&dl.validation)) {
        if s.channels != in_channels {
            return Err(ferr(&it.image[0], format!("{} channel(s), the first training case has {in_channels}", s.channels)));
        }
        let Some(lab) = s.label.as_ref() else {
            return Err(ferr(&it.image[0], "training and validation cases need a \"label\""));
        };
        if let Some(m) = lab.iter().cloned().reduce(f32::max) {
            if m as usize >= n_classes {
                return Err(ferr(it.label.as_ref().unwrap(), format!("label {m} outside the {n_classes} classes declared in {}", json.display())));
            }
        }
    }
    if in_channels == 0 {
        return Err(TrainError::Config("the data has no image channels".into()));
    }
    Ok(RunData { datalist: dl, train, validation, in_channels, n_classes, class_names, channels, channel_names, sets })
}
