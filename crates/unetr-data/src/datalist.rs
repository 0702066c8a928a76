//! Decathlon-style `dataset.json` (MONAI's `load_decathlon_datalist`) and the imagesTr/labelsTr layout.

use crate::error::{ferr, DataError, Result};
use crate::limits::MemoryLimit;
use std::path::{Path, PathBuf};

/// One case: image file(s) (several = modalities, stacked as channels) and an optional label.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub image: Vec<PathBuf>,
    pub label: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct Datalist {
    pub training: Vec<Item>,
    pub validation: Vec<Item>,
    pub test: Vec<Item>,
    /// Class index -> name, from `labels`.
    pub labels: Vec<(usize, String)>,
    pub path: PathBuf,
}

fn parse_item(v: &serde_json::Value, base: &Path, json: &Path, where_: &str) -> Result<Item> {
    let to_path = |s: &serde_json::Value| -> Result<PathBuf> {
        let s = s.as_str().ok_or_else(|| ferr(json, format!("{where_}: expected a path string, got {s}")))?;
        Ok(base.join(s))
    };
    let (img, lab) = match v {
        serde_json::Value::String(_) => (v.clone(), None),
        serde_json::Value::Object(o) => (
            o.get("image").cloned().ok_or_else(|| ferr(json, format!("{where_}: no \"image\"")))?,
            o.get("label").cloned(),
        ),
        _ => return Err(ferr(json, format!("{where_}: expected an object or a path, got {v}"))),
    };
    let image = match &img {
        serde_json::Value::Array(a) if !a.is_empty() => a.iter().map(to_path).collect::<Result<_>>()?,
        serde_json::Value::String(_) => vec![to_path(&img)?],
        _ => return Err(ferr(json, format!("{where_}: \"image\" must be a path or a non-empty list of paths"))),
    };
    let label = lab.filter(|l| !l.is_null()).map(|l| to_path(&l)).transpose()?;
    Ok(Item { image, label })
}

impl Datalist {
    /// Parses a Decathlon `dataset.json`; paths are relative to its folder. A file larger than `limit` is
    /// refused before it is read; `labels` keys must be the class indices 0..K-1.
    pub fn from_json(path: &Path, limit: MemoryLimit) -> Result<Self> {
        let len = std::fs::metadata(path).map_err(|e| ferr(path, format!("cannot read: {e}")))?.len();
        if len > limit.bytes() {
            return Err(ferr(path, format!("{len} bytes, over the memory limit of {limit} (memory_limit in the config, --memory-limit on the command line)")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| ferr(path, format!("cannot read: {e}")))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ferr(path, format!("malformed JSON: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if v.get("channel_names").is_some() {
            return Self::from_nnunet(path, base, &v);
        }
        let mut d = Datalist { path: path.to_path_buf(), ..Default::default() };
        for (key, dst) in [("training", &mut d.training), ("validation", &mut d.validation), ("test", &mut d.test)] {
            if let Some(list) = v.get(key) {
                let arr = list.as_array().ok_or_else(|| ferr(path, format!("\"{key}\" must be a list")))?;
                for (i, it) in arr.iter().enumerate() {
                    dst.push(parse_item(it, base, path, &format!("{key}[{i}]"))?);
                }
            }
        }
        if let Some(l) = v.get("labels").and_then(|l| l.as_object()) {
            for (k, name) in l {
                let idx = k.trim().parse::<usize>().map_err(|_| ferr(path, format!("labels: key {k:?} is not a class index (0, 1, 2, ...)")))?;
                let name = name.as_str().ok_or_else(|| ferr(path, format!("labels[{k:?}]: the class name must be a string, got {name}")))?;
                d.labels.push((idx, name.to_string()));
            }
            d.labels.sort();
            if let Some((i, (idx, _))) = d.labels.iter().enumerate().find(|(i, (idx, _))| idx != i) {
                let keys: Vec<usize> = d.labels.iter().map(|l| l.0).collect();
                return Err(ferr(
                    path,
                    format!("labels: keys must be the class indices 0..{} without gaps; found {keys:?} (index {i} is {idx})", d.labels.len().saturating_sub(1)),
                ));
            }
        }
        if d.training.is_empty() && d.validation.is_empty() && d.test.is_empty() {
            return Err(ferr(path, "no \"training\", \"validation\" or \"test\" entries"));
        }
        Ok(d)
    }

    /// An nnU-Net v2 dataset (dataset.json with `channel_names`, name -> index `labels` and `file_ending`;
    /// images `imagesTr/CASE_XXXX<ending>` one file per channel, labels `labelsTr/CASE<ending>`, test cases
    /// in `imagesTs/`). Cases are the label files, sorted; nnU-Net has no validation list (its folds live
    /// in the preprocessed data), so the training cases are all in `training`.
    fn from_nnunet(path: &Path, base: &Path, v: &serde_json::Value) -> Result<Self> {
        let ch = v["channel_names"].as_object().ok_or_else(|| ferr(path, "channel_names must map channel indices to names"))?;
        let mut channels: Vec<usize> = ch.keys().map(|k| k.parse::<usize>().map_err(|_| ferr(path, format!("channel_names: key {k:?} is not a channel index")))).collect::<Result<_>>()?;
        channels.sort();
        if channels.iter().enumerate().any(|(i, &c)| i != c) {
            return Err(ferr(path, format!("channel_names: keys must be 0..{} without gaps, found {channels:?}", channels.len().saturating_sub(1))));
        }
        let ending = v.get("file_ending").and_then(|e| e.as_str()).unwrap_or(".nii.gz").to_string();
        let mut d = Datalist { path: path.to_path_buf(), ..Default::default() };
        if let Some(l) = v.get("labels").and_then(|l| l.as_object()) {
            for (name, idx) in l {
                let i = idx.as_u64().ok_or_else(|| {
                    ferr(path, format!("labels[{name:?}] = {idx}: region-based nnU-Net labels are not read; give one index per class and use [labels] mode = \"regions\""))
                })?;
                d.labels.push((i as usize, name.clone()));
            }
            d.labels.sort();
            if let Some((i, (idx, _))) = d.labels.iter().enumerate().find(|(i, (idx, _))| idx != i) {
                return Err(ferr(path, format!("labels: indices must be 0..{} without gaps (index {i} is {idx})", d.labels.len().saturating_sub(1))));
            }
        }
        let list = |sub: &str| -> Result<Vec<String>> {
            let dir = base.join(sub);
            if !dir.is_dir() {
                return Ok(vec![]);
            }
            let mut v: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|e| ferr(&dir, format!("cannot list: {e}")))?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .filter_map(|n| n.strip_suffix(ending.as_str()).map(str::to_string))
                .collect();
            v.sort();
            Ok(v)
        };
        let images = |sub: &str, case: &str| -> Vec<PathBuf> { channels.iter().map(|c| base.join(sub).join(format!("{case}_{c:04}{ending}"))).collect() };
        for case in list("labelsTr")? {
            d.training.push(Item { image: images("imagesTr", &case), label: Some(base.join("labelsTr").join(format!("{case}{ending}"))) });
        }
        let mut test_cases: Vec<String> = list("imagesTs")?.into_iter().filter_map(|n| n.rsplit_once('_').map(|(c, _)| c.to_string())).collect();
        test_cases.dedup();
        d.test = test_cases.iter().map(|c| Item { image: images("imagesTs", c), label: None }).collect();
        if d.training.is_empty() && d.test.is_empty() {
            return Err(ferr(path, format!("an nnU-Net dataset without cases: no labelsTr/*{ending} or imagesTs/*{ending} beside it")));
        }
        Ok(d)
    }

    /// The imagesTr/labelsTr (and imagesTs) folder layout: labels matched by file name.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let list = |sub: &str| -> Result<Vec<PathBuf>> {
            let p = dir.join(sub);
            if !p.exists() {
                return Ok(vec![]);
            }
            let mut v: Vec<PathBuf> = std::fs::read_dir(&p)
                .map_err(|e| ferr(&p, format!("cannot list: {e}")))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".nii.gz") || p.to_string_lossy().ends_with(".nii"))
                .collect();
            v.sort();
            Ok(v)
        };
        let mut d = Datalist { path: dir.to_path_buf(), ..Default::default() };
        for img in list("imagesTr")? {
            let label = dir.join("labelsTr").join(img.file_name().unwrap());
            d.training.push(Item { image: vec![img], label: Some(label) });
        }
        d.test = list("imagesTs")?.into_iter().map(|p| Item { image: vec![p], label: None }).collect();
        if d.training.is_empty() && d.test.is_empty() {
            return Err(ferr(dir, "no imagesTr/ or imagesTs/ volumes found"));
        }
        Ok(d)
    }

    /// Every file the datalist names that does not exist, all reported at once before any work starts.
    pub fn check_files(&self) -> Result<()> {
        let mut missing = Vec::new();
        for (split, items) in [("training", &self.training), ("validation", &self.validation), ("test", &self.test)] {
            for (i, it) in items.iter().enumerate() {
                for p in it.image.iter().chain(it.label.iter()) {
                    if !p.is_file() {
                        missing.push(format!("  {split}[{i}]: {} does not exist", p.display()));
                    }
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(DataError::Files { datalist: self.path.clone(), count: missing.len(), list: missing.join("\n") })
        }
    }
}
