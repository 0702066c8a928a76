//! `unetr infer`: segment volumes with a trained checkpoint; label maps on each input's grid.

use crate::commands::{progress, window_overrides, DeviceArgs, WindowArgs};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use unetr_data::{Datalist, Item, MemoryLimit};
use unetr_infer::outputs::{absolute, case_ids, nifti_extension, nifti_files};
use unetr_infer::{parse_device, OutputPlan, Overwrite, Predictor, Probabilities, Tta};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint folder (e.g. runs/phantom/best).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A NIfTI file, a folder of them, or a dataset.json (its test split, else validation).
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder: CASE.nii.gz per input (and CASE_prob.nii.gz with --probabilities).
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Average the logits over mirror flips of each axis.
    #[arg(long)]
    pub tta: bool,
    /// Also write the softmax probabilities (4D, one channel per class).
    #[arg(long)]
    pub probabilities: bool,
    /// Keep only the largest connected component of each label value (MONAI's
    /// KeepLargestConnectedComponent, as the paper's BTCV submission).
    #[arg(long)]
    pub largest_component: bool,
    #[command(flatten)]
    pub run: DeviceArgs,
    /// Replace existing outputs.
    #[arg(long)]
    pub overwrite: bool,
}

/// The cases an input names: a dataset.json's test split (else validation, else training), the NIfTI
/// files of a folder, or one file. Labels are dropped (inference only).
pub fn items(input: &Path, limit: MemoryLimit) -> Result<Vec<Item>> {
    if input.is_dir() {
        let v = nifti_files(input)?;
        if v.is_empty() {
            bail!("{}: no .nii / .nii.gz files", input.display());
        }
        return Ok(v.into_iter().map(|p| Item { image: vec![p], label: None }).collect());
    }
    if !input.is_file() {
        bail!("{}: no such file or folder", input.display());
    }
    if input.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        let dl = Datalist::from_json(input, limit)?;
        let v = if !dl.test.is_empty() { dl.test } else if !dl.validation.is_empty() { dl.validation } else { dl.training };
        return Ok(v.into_iter().map(|it| Item { image: it.image, label: None }).collect());
    }
    if nifti_extension(input).is_none() {
        bail!("{}: expected a .nii / .nii.gz file, a folder of them, or a dataset.json", input.display());
    }
    Ok(vec![Item { image: vec![input.to_path_buf()], label: None }])
}

pub fn run(a: Args) -> Result<()> {
    a.window.check()?;
    let list = items(&a.input, a.run.memory_limit)?;
    let missing: Vec<String> = list.iter().flat_map(|it| &it.image).filter(|p| !p.is_file()).map(|p| p.display().to_string()).collect();
    if !missing.is_empty() {
        bail!("{} input file(s) do not exist: {}", missing.len(), missing.join(", "));
    }
    if a.input.is_dir() && absolute(&a.input) == absolute(&a.output) {
        bail!("--output {} is the input folder: outputs never go among the inputs; choose another folder", a.output.display());
    }
    let ids = case_ids(&list)?;
    let mut plan = OutputPlan::new();
    let mut outputs = Vec::with_capacity(list.len());
    for (it, id) in list.iter().zip(&ids) {
        let ext = nifti_extension(&it.image[0]).unwrap_or(".nii.gz");
        let labels = a.output.join(format!("{id}{ext}"));
        let probs = a.probabilities.then(|| a.output.join(format!("{id}_prob{ext}")));
        plan.add(labels.clone());
        if let Some(p) = &probs {
            plan.add(p.clone());
        }
        outputs.push((labels, probs));
    }
    let inputs: Vec<PathBuf> = list.iter().flat_map(|it| it.image.iter().cloned()).chain([a.input.clone()]).collect();
    plan.check(&inputs, if a.overwrite { Overwrite::Allow } else { Overwrite::Refuse })?;
    let device = parse_device(&a.run.device)?;
    let mut p = Predictor::from_checkpoint(&a.checkpoint, &device, a.run.memory_limit)?;
    window_overrides(&mut p, &a.window)?;
    let tta = if a.tta { Tta::Flips } else { Tta::Off };
    let keep = if a.probabilities { Probabilities::Keep } else { Probabilities::Skip };
    let bar = progress(list.len() as u64, "segmenting");
    for (it, (labels, probs)) in list.iter().zip(&outputs) {
        let mut seg = p.segment(it, tta, keep)?;
        if a.largest_component {
            unetr_infer::postprocess::keep_largest_component(&mut seg.labels.data, seg.labels.header.dims);
        }
        // Created at the first result, so that an input that fails leaves nothing behind.
        std::fs::create_dir_all(&a.output).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", a.output.display()))?;
        unetr_data::write_nifti(labels, &seg.labels, true)?;
        if let (Some(path), Some(v)) = (probs, &seg.probabilities) {
            unetr_data::write_nifti(path, v, false)?;
        }
        bar.println(format!("{} -> {}", it.image[0].display(), labels.display()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}
