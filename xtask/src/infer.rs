//! `cargo xtask infer` and `cargo xtask eval`: a trained checkpoint on new volumes.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};
use unetr_data::nifti::write_nifti;
use unetr_data::{Datalist, Item};
use unetr_model::{UnetrConfig, UnetrWeights};
use unetr_train::inferers::Blend;
use unetr_train::metrics::{dice_per_class, hd95};
use unetr_train::trainer::{predict, preprocess, TrainConfig};

/// A checkpoint folder: model.safetensors, config.json (UNETR) and train_config.toml (preprocessing).
fn load_checkpoint(dir: &Path) -> Result<(unetr_model::Unetr, TrainConfig)> {
    let cfg_text = std::fs::read_to_string(dir.join("config.json")).with_context(|| format!("{}: not a checkpoint folder (no config.json)", dir.display()))?;
    let mcfg: UnetrConfig = serde_json::from_str(&cfg_text).with_context(|| format!("{}/config.json", dir.display()))?;
    let tpath = dir.join("train_config.toml");
    let tcfg = TrainConfig::from_toml(&std::fs::read_to_string(&tpath).with_context(|| format!("{}: cannot read", tpath.display()))?, &tpath)?;
    let w = UnetrWeights::load(&mcfg, &dir.join("model.safetensors"), &Device::Cpu)?;
    Ok((w.inference_model()?, tcfg))
}

#[derive(clap::Args)]
pub struct InferArgs {
    /// Checkpoint folder (e.g. runs/phantom/best).
    #[arg(long)]
    checkpoint: PathBuf,
    /// A NIfTI file, a folder of them, or a dataset.json (its test split, else validation).
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    output: PathBuf,
    /// Sliding-window roi D,H,W (default: the model's img_size).
    #[arg(long)]
    roi: Option<String>,
    #[arg(long)]
    overlap: Option<f64>,
    #[arg(long)]
    sw_batch: Option<usize>,
    /// gaussian or constant.
    #[arg(long)]
    blend: Option<String>,
    /// Average over mirror flips of each axis.
    #[arg(long)]
    tta: bool,
    /// Also write the softmax probabilities (4D, one channel per class).
    #[arg(long)]
    probabilities: bool,
}

fn items(input: &Path) -> Result<Vec<Item>> {
    if input.extension().is_some_and(|e| e == "json") {
        let dl = Datalist::from_json(input)?;
        let v = if !dl.test.is_empty() { dl.test } else if !dl.validation.is_empty() { dl.validation } else { dl.training };
        return Ok(v.into_iter().map(|it| Item { image: it.image, label: None }).collect());
    }
    if input.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(input)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".nii.gz") || p.to_string_lossy().ends_with(".nii"))
            .collect();
        v.sort();
        if v.is_empty() {
            bail!("{}: no .nii / .nii.gz files", input.display());
        }
        return Ok(v.into_iter().map(|p| Item { image: vec![p], label: None }).collect());
    }
    if !input.is_file() {
        bail!("{}: no such file", input.display());
    }
    Ok(vec![Item { image: vec![input.to_path_buf()], label: None }])
}

pub fn infer(a: InferArgs) -> Result<()> {
    let (model, mut tcfg) = load_checkpoint(&a.checkpoint)?;
    if let Some(r) = &a.roi {
        let v: Vec<usize> = r.split(',').map(|x| x.trim().parse()).collect::<Result<_, _>>().context("--roi D,H,W")?;
        if v.len() != 3 || v[..] != model.cfg.img_size {
            bail!("--roi {r}: UNETR's position embedding fixes the window to the model's img_size {:?}", model.cfg.img_size);
        }
    }
    let v = &mut tcfg.validation;
    if let Some(o) = a.overlap {
        v.overlap = o;
    }
    if let Some(b) = a.sw_batch {
        v.sw_batch = b;
    }
    if let Some(b) = &a.blend {
        v.blend = match b.as_str() {
            "gaussian" => Blend::Gaussian,
            "constant" => Blend::Constant,
            o => bail!("--blend {o}: gaussian or constant"),
        };
    }
    let list = items(&a.input)?;
    for it in &list {
        for p in &it.image {
            if !p.is_file() {
                bail!("{}: does not exist", p.display());
            }
        }
    }
    std::fs::create_dir_all(&a.output)?;
    for it in &list {
        let s = preprocess(it, &tcfg.transforms)?;
        let (labels, logits) = predict(&model, &s, &tcfg.validation, a.tta)?;
        let name = it.image[0].file_name().unwrap().to_string_lossy().into_owned();
        let vol = s.invert(&labels, 1, 0.0);
        let out = a.output.join(&name);
        write_nifti(&out, &vol, true)?;
        if a.probabilities {
            let k = logits.dim(1)?;
            let p = candle_nn::ops::softmax(&logits, 1)?.flatten_all()?.to_vec1::<f32>()?;
            let pv = s.invert(&p, k, 0.0);
            write_nifti(&a.output.join(name.replace(".nii", "_prob.nii")), &pv, false)?;
        }
        println!("{} -> {}", it.image[0].display(), out.display());
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct EvalArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long)]
    datalist: PathBuf,
    /// training, validation or test.
    #[arg(long, default_value = "validation")]
    split: String,
    /// Also write the metrics as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    tta: bool,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let (model, tcfg) = load_checkpoint(&a.checkpoint)?;
    let dl = Datalist::from_json(&a.datalist)?;
    dl.check_files()?;
    let list = match a.split.as_str() {
        "training" => dl.training,
        "validation" => dl.validation,
        "test" => dl.test,
        o => bail!("--split {o}: training, validation or test"),
    };
    if list.iter().any(|it| it.label.is_none()) {
        bail!("{}: every {} item needs a label to evaluate", a.datalist.display(), a.split);
    }
    let k = model.cfg.out_channels;
    let names: Vec<String> = (0..k).map(|c| dl.labels.iter().find(|l| l.0 == c).map(|l| l.1.clone()).unwrap_or(format!("class {c}"))).collect();
    let mut dice = vec![Vec::new(); k];
    let mut hd = vec![Vec::new(); k];
    let mut cases = Vec::new();
    for it in &list {
        let s = preprocess(it, &tcfg.transforms)?;
        let (pred, _) = predict(&model, &s, &tcfg.validation, a.tta)?;
        let lab = s.label.as_ref().unwrap();
        let sp = unetr_data::nifti::spacing(&s.affine);
        let d = dice_per_class(&pred, lab, k);
        let h: Vec<Option<f64>> = (0..k).map(|c| hd95(&pred, lab, c, s.dims, sp)).collect();
        for c in 0..k {
            if let Some(v) = d[c] {
                dice[c].push(v);
            }
            if let Some(v) = h[c] {
                hd[c].push(v);
            }
        }
        cases.push(serde_json::json!({"image": it.image[0], "dice": d, "hd95_mm": h}));
    }
    let mean = |v: &Vec<f64>| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
    println!("{:<16} {:>8} {:>10}", "class", "Dice", "HD95 (mm)");
    let mut rows = Vec::new();
    for c in 0..k {
        println!("{:<16} {:>8.4} {:>10.3}", names[c], mean(&dice[c]), mean(&hd[c]));
        rows.push(serde_json::json!({"class": c, "name": names[c], "dice": mean(&dice[c]), "hd95_mm": mean(&hd[c])}));
    }
    let fg: Vec<f64> = (1..k).map(|c| mean(&dice[c])).filter(|v| v.is_finite()).collect();
    let fh: Vec<f64> = (1..k).map(|c| mean(&hd[c])).filter(|v| v.is_finite()).collect();
    let (md, mh) = (fg.iter().sum::<f64>() / fg.len().max(1) as f64, fh.iter().sum::<f64>() / fh.len().max(1) as f64);
    println!("{:<16} {:>8.4} {:>10.3}", "mean (fg)", md, mh);
    if let Some(p) = &a.json {
        let j = serde_json::json!({"split": a.split, "classes": rows, "mean_dice_foreground": md, "mean_hd95_foreground_mm": mh, "cases": cases});
        std::fs::write(p, serde_json::to_string_pretty(&j)?)?;
    }
    Ok(())
}
