//! `cargo xtask ablation`: the UNETR paper's ablation on one dataset with one budget and seed: every decoder
//! (UNETR's and SETR's NUP, PUP, MLA) at patch 16, and UNETR's decoder at patch 32. One table of parameters,
//! GFLOPs, time per step and Dice per class into docs/ablation.md.

use anyhow::{Context, Result};
use std::path::PathBuf;
use unetr_model::{count_macs, count_params, DecoderKind};
use unetr_train::{train, RunMode, TrainConfig};

#[derive(clap::Args)]
pub struct Args {
    /// A datalist (Decathlon or nnU-Net dataset.json); default: the built-in phantoms.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Training config the runs share (default: data/presets/ablation.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Optimiser steps per run (overrides the config).
    #[arg(long)]
    steps: Option<u64>,
    /// Write the table into docs/ablation.md.
    #[arg(long)]
    write_docs: bool,
}

pub fn run(a: Args) -> Result<()> {
    let root = crate::repo_root();
    let path = a.config.clone().unwrap_or_else(|| root.join("data/presets/ablation.toml"));
    let mut set = Vec::new();
    if let Some(d) = &a.data {
        set.push(format!("data.dataset={:?}", d.display().to_string()));
    }
    if let Some(s) = a.steps {
        set.push(format!("optim.steps={s}"));
    }
    let runs = [(DecoderKind::Unetr, 16), (DecoderKind::Nup, 16), (DecoderKind::Pup, 16), (DecoderKind::Mla, 16), (DecoderKind::Unetr, 32)];
    let mut rows = Vec::new();
    let mut classes = Vec::new();
    let mut base = TrainConfig::load(&path, &set)?;
    for (kind, patch) in runs {
        let name = format!("{kind:?}-p{patch}").to_lowercase();
        let mut cfg = base.clone();
        cfg.model.decoder = kind;
        cfg.model.patch_size = [patch; 3];
        cfg.output.dir = root.join("runs/ablation").join(&name);
        cfg.validate().map_err(anyhow::Error::msg).with_context(|| name.clone())?;
        let s = train(&cfg, RunMode::Overwrite).with_context(|| format!("ablation run {name}"))?;
        let mcfg = cfg.unetr(1, s.class_names.len())?;
        let steps = cfg.optim.steps as f64;
        eprintln!("{name}: mean Dice {:.3} in {:.0} s", s.final_dice, s.seconds);
        classes = s.class_names.clone();
        rows.push((kind, patch, count_params(&mcfg), 2.0 * count_macs(&mcfg) as f64 / 1e9, s.seconds / steps, s.per_class.clone(), s.final_dice));
        base = cfg;
    }
    let c = &base;
    let mut t = format!(
        "Command: `cargo xtask ablation{}{}` ({} config: hidden {} x {} layers, feature_size {}, input {:?}, {} steps of {} volume(s) x {} crop(s), AdamW lr {}, seed {}; Dice of the final weights on the validation split by sliding window, background excluded from the mean)  \nData: {}  \nMachine: {}  \nDate: {}\n\n",
        a.data.as_ref().map(|d| format!(" --data {}", d.display())).unwrap_or_default(),
        if a.write_docs { " --write-docs" } else { "" },
        path.strip_prefix(&root).unwrap_or(&path).display(),
        c.model.hidden_size,
        c.model.num_layers,
        c.model.feature_size,
        c.transforms.roi,
        c.optim.steps,
        c.optim.batch_size,
        c.transforms.num_samples,
        c.optim.adamw.lr,
        c.output.seed,
        a.data.as_ref().map_or("the built-in phantoms".to_string(), |d| d.display().to_string()),
        crate::bench_ops::machine(),
        crate::docs::today(),
    );
    t += "| decoder | patch | params | GFLOPs | s / step |";
    for n in classes.iter().skip(1) {
        t += &format!(" {n} |");
    }
    t += " mean Dice |\n|---|---:|---:|---:|---:|";
    t += &"---:|".repeat(classes.len().saturating_sub(1));
    t += "---:|\n";
    for (kind, patch, params, gflops, sps, per, mean) in &rows {
        t += &format!("| {} | {patch} | {params} | {gflops:.2} | {sps:.2} |", format!("{kind:?}").to_uppercase());
        for d in per.iter().skip(1) {
            t += &format!(" {} |", d.map_or("-".into(), |v| format!("{v:.3}")));
        }
        t += &format!(" **{mean:.3}** |\n");
    }
    println!("{t}");
    if a.write_docs {
        let doc = root.join("docs/ablation.md");
        let text = std::fs::read_to_string(&doc).with_context(|| format!("{}: cannot read", doc.display()))?;
        let (start, end) = ("<!-- ablation:start -->", "<!-- ablation:end -->");
        let (i, j) = (text.find(start).context("docs/ablation.md has no ablation:start marker")?, text.find(end).context("no ablation:end marker")?);
        let new = format!("{}{start}\n{}\n{}", &text[..i], t.trim_end(), &text[j..]);
        std::fs::write(&doc, new)?;
    }
    Ok(())
}
