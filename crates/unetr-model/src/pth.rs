//! PyTorch `.pth` / `.pt` state dicts (the zip format of `torch.save`), read with every size checked first.
//!
//! candle's unpickler allocates a tensor's full shape before reading its bytes, so a 0.5 KB file whose
//! pickle claims a 4 TB tensor aborts the process (an allocation failure cannot be caught). Here the
//! tensor descriptions are read first and each is checked against its storage, the zip entry that holds
//! the storage and the memory limit; only then are the tensors read.

use crate::error::{ModelError, Result};
use candle_core::pickle::{PthTensors, TensorInfo};
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::Path;

fn file_err(path: &Path, msg: impl std::fmt::Display) -> ModelError {
    ModelError::File { path: path.to_path_buf(), msg: msg.to_string() }
}

/// Uncompressed sizes of the zip's entries (from its central directory; nothing is decompressed).
fn entry_sizes(path: &Path) -> Result<HashMap<String, u64>> {
    let f = std::fs::File::open(path).map_err(|e| file_err(path, format!("cannot open: {e}")))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(|e| file_err(path, format!("not a PyTorch zip archive (torch.save format): {e}")))?;
    let mut sizes = HashMap::new();
    for i in 0..zip.len() {
        let e = zip.by_index_raw(i).map_err(|e| file_err(path, format!("zip entry {i}: {e}")))?;
        let name = e.name().map_err(|err| file_err(path, format!("zip entry {i}: {err}")))?.into_owned();
        sizes.insert(name, e.size());
    }
    Ok(sizes)
}

/// Checks one tensor description against its storage and zip entry; returns its byte size.
fn check_info(path: &Path, t: &TensorInfo, sizes: &HashMap<String, u64>, max_bytes: u64) -> Result<u64> {
    let bad = |m: String| Err(file_err(path, format!("tensor {:?}: {m}", t.name)));
    let dims = t.layout.dims();
    let Some(elems) = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)) else {
        return bad(format!("shape {dims:?} overflows"));
    };
    let esize = t.dtype.size_in_bytes() as u64;
    let offset = t.layout.start_offset() as u64 / esize;
    if !(t.layout.is_contiguous() || t.layout.is_fortran_contiguous()) {
        return bad(format!("strides {:?} for shape {dims:?} are not contiguous", t.layout.stride()));
    }
    if offset.saturating_add(elems) > t.storage_size as u64 {
        return bad(format!("shape {dims:?} at offset {offset} needs {} elements, its storage holds {}", offset.saturating_add(elems), t.storage_size));
    }
    let bytes = elems * esize;
    let storage_bytes = (t.storage_size as u64).saturating_mul(esize);
    match sizes.get(&t.path) {
        None => return bad(format!("its storage {:?} is not in the archive", t.path)),
        Some(&n) if n < storage_bytes => return bad(format!("its storage claims {storage_bytes} bytes, the archive entry {:?} holds {n}", t.path)),
        _ => {}
    }
    if bytes > max_bytes {
        return bad(format!("shape {dims:?} is {bytes} bytes, over the memory limit of {max_bytes} bytes"));
    }
    Ok(bytes)
}

/// The tensors of a `.pth` state dict (bare, or nested under "state_dict" or "model"), each checked before
/// it is allocated: shape against storage, storage against the archive, bytes against `max_bytes` (also
/// their sum).
pub fn read_pth(path: &Path, max_bytes: u64) -> Result<Vec<(String, Tensor)>> {
    let sizes = entry_sizes(path)?;
    // The pickle itself is read whole by the unpickler.
    for (name, &n) in sizes.iter().filter(|(k, _)| k.ends_with(".pkl")) {
        if n > max_bytes {
            return Err(file_err(path, format!("pickle {name:?} is {n} bytes, over the memory limit of {max_bytes} bytes")));
        }
    }
    let mut last_err = String::new();
    for key in [None, Some("state_dict"), Some("model")] {
        // candle's unpickler can panic on malformed input; a bad file must be an error, not a crash.
        let infos = match std::panic::catch_unwind(|| PthTensors::new(path, key)) {
            Ok(Ok(p)) if !p.tensor_infos().is_empty() => p,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => {
                last_err = e.to_string();
                continue;
            }
            Err(_) => {
                last_err = "malformed pickle".into();
                continue;
            }
        };
        let mut total = 0u64;
        let mut names: Vec<&String> = infos.tensor_infos().keys().collect();
        names.sort();
        for name in &names {
            total = total.saturating_add(check_info(path, &infos.tensor_infos()[*name], &sizes, max_bytes)?);
        }
        if total > max_bytes {
            return Err(file_err(path, format!("{} tensors of {total} bytes in all, over the memory limit of {max_bytes} bytes", names.len())));
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let t = std::panic::catch_unwind(|| infos.get(name))
                .map_err(|_| file_err(path, format!("tensor {name:?}: malformed data")))?
                .map_err(|e| file_err(path, format!("tensor {name:?}: {e}")))?;
            if let Some(t) = t {
                out.push((name.clone(), t));
            }
        }
        return Ok(out);
    }
    Err(file_err(path, format!("no tensors found as a PyTorch state dict (bare, 'state_dict' or 'model'): {last_err}")))
}
