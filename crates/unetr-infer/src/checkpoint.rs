//! The checkpoint folder: the one place that writes, reads and recovers it.
//!
//! ```text
//! best/ or checkpoint/
//!   model.safetensors       weights with MONAI's state-dict names
//!   config.json             the model (MONAI's UNETR arguments)
//!   train_config.toml       the whole training config (preprocessing, sliding window)
//!   state.json              step, seed and scores (best/: the score that made it best)
//!   optimizer.safetensors   AdamW's moments (training checkpoints only)
//!   .complete               written last
//! ```
//!
//! A folder is replaced atomically: written as `<dir>.new`, marked complete, then `<dir>` -> `<dir>.old`,
//! `<dir>.new` -> `<dir>`, `<dir>.old` removed, with every file and folder synced in between; a kill at any
//! moment leaves a complete folder that [`recover_dir`] (run by every load) puts back in place.

use crate::error::{ferr, Result};
use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use unetr_data::MemoryLimit;
use unetr_model::{UnetrConfig, UnetrWeights};

pub const MODEL: &str = "model.safetensors";
pub const MODEL_CONFIG: &str = "config.json";
pub const TRAIN_CONFIG: &str = "train_config.toml";
pub const STATE: &str = "state.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";
/// Marks a folder as completely written (written last, after every file was synced).
pub const COMPLETE_MARKER: &str = ".complete";

/// fsync of a file or folder; failures are errors naming the path. Folders on file systems that cannot
/// sync a directory (EINVAL) are the one exception: there is nothing more to make durable.
pub fn sync_path(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| ferr(path, format!("opening to sync: {e}")))?;
    match f.sync_all() {
        Err(e) if path.is_dir() && e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        r => r.map_err(|e| ferr(path, format!("syncing to disk: {e}"))),
    }
}

/// Writes a file atomically: a temporary file beside it, synced, then renamed over it.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(ferr(&tmp, format!("writing: {e}")));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ferr(path, format!("renaming {}: {e}", tmp.display()))
    })
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut n = dir.file_name().unwrap_or_default().to_os_string();
    n.push(suffix);
    dir.with_file_name(n)
}

fn is_complete(d: &Path) -> bool {
    d.join(COMPLETE_MARKER).is_file()
}

fn remove_dir(d: &Path) -> Result<()> {
    if d.exists() {
        std::fs::remove_dir_all(d).map_err(|e| ferr(d, format!("removing: {e}")))?;
    }
    Ok(())
}

/// Brings a folder written by [`write_dir_atomic`] back to a complete state after a crash: `dir` if it is
/// complete, else the complete `dir.new` (crash between the two renames), else `dir.old`; the leftovers
/// are removed. A folder with neither sibling is left as it is (a hand-assembled folder has no marker).
pub fn recover_dir(dir: &Path) -> Result<()> {
    let (new, old) = (sibling(dir, ".new"), sibling(dir, ".old"));
    if !is_complete(dir) {
        for cand in [&new, &old] {
            if is_complete(cand) {
                remove_dir(dir)?;
                std::fs::rename(cand, dir).map_err(|e| ferr(dir, format!("restoring from {}: {e}", cand.display())))?;
                break;
            }
        }
    }
    remove_dir(&new)?;
    remove_dir(&old)
}

/// Replaces folder `dir` by one filled by `fill` (see the module docs).
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    recover_dir(dir)?;
    let (new, old) = (sibling(dir, ".new"), sibling(dir, ".old"));
    std::fs::create_dir_all(&new).map_err(|e| ferr(&new, e))?;
    fill(&new)?;
    for e in std::fs::read_dir(&new).map_err(|e| ferr(&new, e))? {
        sync_path(&e.map_err(|e| ferr(&new, e))?.path())?;
    }
    write_file_atomic(&new.join(COMPLETE_MARKER), b"")?;
    sync_path(&new)?;
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| ferr(dir, format!("moving aside: {e}")))?;
    }
    std::fs::rename(&new, dir).map_err(|e| ferr(dir, format!("moving in place: {e}")))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_path(parent)?;
    }
    remove_dir(&old)
}

/// What a checkpoint folder holds, for [`save`].
pub struct Contents<'a> {
    pub weights: &'a UnetrWeights,
    pub model: &'a UnetrConfig,
    /// The training config as TOML.
    pub train_config: &'a str,
    pub state: &'a serde_json::Value,
    /// AdamW's state (training checkpoints).
    pub optimizer: Option<&'a HashMap<String, Tensor>>,
}

/// Writes (or atomically replaces) a checkpoint folder.
pub fn save(dir: &Path, c: &Contents) -> Result<()> {
    write_dir_atomic(dir, |d| {
        c.weights.save(&d.join(MODEL))?;
        if let Some(o) = c.optimizer {
            unetr_model::write_safetensors(o, &d.join(OPTIMIZER))?;
        }
        write_file_atomic(&d.join(STATE), pretty(c.state).as_bytes())?;
        write_file_atomic(&d.join(MODEL_CONFIG), pretty(c.model).as_bytes())?;
        write_file_atomic(&d.join(TRAIN_CONFIG), c.train_config.as_bytes())
    })
}

/// Pretty JSON (serde_json cannot fail on plain data like these configs).
fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A checkpoint folder opened for reading (after crash recovery).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    /// The model's configuration (config.json).
    pub model: UnetrConfig,
    train_config: toml::Table,
}

impl Checkpoint {
    /// Recovers the folder if a write was interrupted, then reads its configs; a missing or malformed
    /// file is an error naming it.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            let msg = if dir.exists() { "not a folder (expected a checkpoint folder such as runs/phantom/best)" } else { "no such checkpoint folder" };
            // A crash may have left only the siblings.
            if !(sibling(dir, ".new").exists() || sibling(dir, ".old").exists()) {
                return Err(ferr(dir, msg));
            }
        }
        recover_dir(dir)?;
        for f in [MODEL, MODEL_CONFIG, TRAIN_CONFIG] {
            if !dir.join(f).is_file() {
                return Err(ferr(dir, format!("not a checkpoint folder: {f} is missing")));
            }
        }
        let mp = dir.join(MODEL_CONFIG);
        let text = read_small(&mp)?;
        let model: UnetrConfig = serde_json::from_str(&text).map_err(|e| ferr(&mp, format!("not a UNETR config: {e}")))?;
        model.validate().map_err(|e| ferr(&mp, e))?;
        let tp = dir.join(TRAIN_CONFIG);
        let train_config: toml::Table = read_small(&tp)?.parse().map_err(|e| ferr(&tp, format!("malformed TOML: {e}")))?;
        Ok(Self { dir: dir.to_path_buf(), model, train_config })
    }

    /// One section of the training config (e.g. "transforms"), absent sections as their defaults.
    pub fn section<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        match self.train_config.get(name) {
            None => Ok(T::default()),
            Some(v) => v.clone().try_into().map_err(|e| ferr(&self.dir.join(TRAIN_CONFIG), format!("[{name}]: {e}"))),
        }
    }

    /// The training config as written.
    pub fn train_config(&self) -> &toml::Table {
        &self.train_config
    }

    /// state.json, if the folder has one.
    pub fn state<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        let p = self.dir.join(STATE);
        if !p.is_file() {
            return Ok(None);
        }
        serde_json::from_str(&read_small(&p)?).map(Some).map_err(|e| ferr(&p, format!("malformed: {e}")))
    }

    /// The weights, every tensor checked against `limit` before it is allocated.
    pub fn weights(&self, device: &Device, limit: MemoryLimit) -> Result<UnetrWeights> {
        Ok(UnetrWeights::load(&self.model, &self.dir.join(MODEL), device, limit.bytes())?)
    }

    /// Copies the weights into an existing model (resume).
    pub fn load_weights_into(&self, w: &UnetrWeights, limit: MemoryLimit) -> Result<()> {
        w.load_from(&self.dir.join(MODEL), limit.bytes(), |_| false)?;
        Ok(())
    }

    /// AdamW's state tensors.
    pub fn optimizer(&self, device: &Device, limit: MemoryLimit) -> Result<HashMap<String, Tensor>> {
        let p = self.dir.join(OPTIMIZER);
        let t = unetr_model::load_state_dict(&p, limit.bytes())?;
        t.into_iter().map(|(k, v)| Ok((k, v.to_device(device)?))).collect()
    }
}

/// A small text file (a config or state), refused above 16 MiB before it is read.
fn read_small(p: &Path) -> Result<String> {
    let len = std::fs::metadata(p).map_err(|e| ferr(p, format!("cannot read: {e}")))?.len();
    if len > 16 << 20 {
        return Err(ferr(p, format!("{len} bytes: not a config file")));
    }
    std::fs::read_to_string(p).map_err(|e| ferr(p, format!("cannot read: {e}")))
}
