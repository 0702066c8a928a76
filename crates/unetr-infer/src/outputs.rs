//! Where results go, decided and checked before any work starts: one output name per case (nnU-Net style
//! case identifiers), no two outputs on one path, never a path that is an input, and never an existing file
//! replaced unless the user asked for it.

use crate::error::{ferr, InferError, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use unetr_data::Item;

/// Whether existing outputs may be replaced (`--overwrite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    Refuse,
    Allow,
}

/// The NIfTI extension of a file name, matched without regard to case: ".nii.gz" or ".nii".
pub fn nifti_extension(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".nii.gz") && name.len() > 7 {
        Some(".nii.gz")
    } else if name.ends_with(".nii") && name.len() > 4 {
        Some(".nii")
    } else {
        None
    }
}

/// The file name without its NIfTI extension (any case); None for other files.
pub fn nifti_stem(path: &Path) -> Option<String> {
    let ext = nifti_extension(path)?;
    let name = path.file_name()?.to_string_lossy();
    Some(name[..name.len() - ext.len()].to_string())
}

/// The NIfTI files of a folder (any extension case), sorted.
pub fn nifti_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ferr(dir, format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && nifti_extension(p).is_some())
        .collect();
    v.sort();
    Ok(v)
}

/// One identifier per case, unique: each case's first image path relative to the folder all cases share,
/// without its extension (and without nnU-Net's first-channel suffix `_0000`), folders joined by `_`. Cases
/// that still share an identifier (compared without case, as on case-insensitive file systems) are an
/// error listing them.
pub fn case_ids(items: &[Item]) -> Result<Vec<String>> {
    let firsts: Vec<&Path> = items.iter().map(|it| it.image[0].as_path()).collect();
    let root = common_folder(&firsts);
    let mut ids = Vec::with_capacity(items.len());
    for p in &firsts {
        let rel = p.strip_prefix(&root).unwrap_or(p);
        let stem = nifti_stem(rel).ok_or_else(|| ferr(p, "not a NIfTI file (.nii or .nii.gz)"))?;
        let stem = stem.strip_suffix("_0000").filter(|s| !s.is_empty()).map(str::to_string).unwrap_or(stem);
        let mut parts: Vec<String> = rel.parent().map(|d| d.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect()).unwrap_or_default();
        parts.push(stem);
        ids.push(parts.join("_"));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut clashes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if let Some(&j) = seen.get(&id.to_lowercase()) {
            clashes.push(format!("{} and {} both map to case {id:?}", firsts[j].display(), firsts[i].display()));
        } else {
            seen.insert(id.to_lowercase(), i);
        }
    }
    if !clashes.is_empty() {
        return Err(InferError::Config(format!("case names collide (outputs would overwrite each other): {}", clashes.join("; "))));
    }
    Ok(ids)
}

/// The deepest folder containing every path.
fn common_folder(paths: &[&Path]) -> PathBuf {
    let mut it = paths.iter();
    let Some(first) = it.next() else { return PathBuf::new() };
    let mut root: PathBuf = first.parent().map(Path::to_path_buf).unwrap_or_default();
    for p in it {
        while !p.starts_with(&root) {
            if !root.pop() {
                return PathBuf::new();
            }
        }
    }
    root
}

/// The files a command will write, checked as a whole before it starts.
#[derive(Debug, Default, Clone)]
pub struct OutputPlan {
    files: Vec<PathBuf>,
}

impl OutputPlan {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn add(&mut self, path: PathBuf) -> &mut Self {
        self.files.push(path);
        self
    }
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Errors when two outputs share a path (without regard to case), when an output is one of `inputs`
    /// (never allowed, even with [`Overwrite::Allow`]), or when an output exists and `overwrite` refuses.
    /// Every problem is listed.
    pub fn check(&self, inputs: &[PathBuf], overwrite: Overwrite) -> Result<()> {
        let mut problems = Vec::new();
        let mut seen: HashMap<String, &PathBuf> = HashMap::new();
        for f in &self.files {
            let key = absolute(f).to_string_lossy().to_lowercase();
            if let Some(prev) = seen.insert(key, f) {
                problems.push(format!("{} and {} are the same output", prev.display(), f.display()));
            }
        }
        let input_ids: Vec<(PathBuf, Option<FileId>)> = inputs.iter().map(|p| (absolute(p), file_id(p))).collect();
        for f in &self.files {
            let (abs, id) = (absolute(f), file_id(f));
            if let Some((inp, _)) = input_ids.iter().find(|(p, i)| *p == abs || (id.is_some() && *i == id)) {
                problems.push(format!("{} is an input ({}): outputs never replace inputs; choose another output folder", f.display(), inp.display()));
            } else if overwrite == Overwrite::Refuse && f.exists() {
                problems.push(format!("{} exists (pass --overwrite to replace it)", f.display()));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let n = problems.len();
        if n > 10 {
            problems.truncate(10);
            problems.push(format!("... and {} more", n - 10));
        }
        Err(InferError::Config(format!("refusing to write {n} output(s): {}", problems.join("; "))))
    }
}

/// The path made absolute and, where the folder exists, with symbolic links and `..` resolved.
pub fn absolute(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf()) };
    match (abs.parent().and_then(|d| std::fs::canonicalize(d).ok()), abs.file_name()) {
        (Some(d), Some(n)) => d.join(n),
        _ => abs,
    }
}

#[cfg(unix)]
type FileId = (u64, u64);
#[cfg(not(unix))]
type FileId = ();

/// Device and inode of an existing file (hard links of an input are inputs too).
fn file_id(p: &Path) -> Option<FileId> {
    let m = std::fs::metadata(p).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(p: &str) -> Item {
        Item { image: vec![PathBuf::from(p)], label: None }
    }

    #[test]
    fn extensions_any_case_and_unique_case_ids() {
        assert_eq!(nifti_extension(Path::new("a/X.NII.GZ")), Some(".nii.gz"));
        assert_eq!(nifti_stem(Path::new("a/X.Nii")).as_deref(), Some("X"));
        assert_eq!(nifti_stem(Path::new("a/x.gz")), None);
        assert_eq!(nifti_stem(Path::new(".nii")), None);
        let ids = case_ids(&[item("/d/imagesTs/case_001.nii.gz"), item("/d/imagesTs/case_002.NII.GZ")]).unwrap();
        assert_eq!(ids, ["case_001", "case_002"]);
        let ids = case_ids(&[item("/d/a/img.nii.gz"), item("/d/b/img.nii.gz")]).unwrap();
        assert_eq!(ids, ["a_img", "b_img"]);
        let ids = case_ids(&[item("/d/BRATS_001_0000.nii.gz")]).unwrap();
        assert_eq!(ids, ["BRATS_001"]);
        let e = case_ids(&[item("/d/a/x.nii.gz"), item("/d/a/X.nii")]).unwrap_err().to_string();
        assert!(e.contains("collide") && e.contains("x.nii.gz") && e.contains("X.nii"), "{e}");
        assert!(case_ids(&[item("/d/a/notes.txt")]).is_err());
    }
}
