//! `cargo xtask colin27`: the real-data experiment of issue 5. Builds the Colin27 lobes dataset (left
//! hemisphere for training, mirrored right for validation), trains ours with data/presets/colin27.toml, runs
//! MONAI's recipe on the same data, transforms, model, optimiser and step budget (benches/colin27_monai.py),
//! and prints both Dice tables side by side.

use anyhow::{Context, Result};
use std::path::PathBuf;
use unetr_data::datasets::{colin27_lobes, LOBES};
use unetr_train::{train, RunMode, TrainConfig};

#[derive(clap::Args)]
pub struct Args {
    /// mricron-data's template folder (apt-get install mricron-data).
    #[arg(long, default_value = "/usr/share/mricron/templates")]
    templates: PathBuf,
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override optim.steps (both sides).
    #[arg(long)]
    steps: Option<u64>,
    /// Override output.seed (both sides).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    no_monai: bool,
    /// Write the table into docs/benchmarks.md.
    #[arg(long)]
    write_docs: bool,
}

pub fn run(a: Args) -> Result<()> {
    let root = crate::repo_root();
    let base = root.join("runs/colin27");
    let json = colin27_lobes(&a.templates, &base.join("data"), 8).context("building the Colin27 lobes dataset (is mricron-data installed?)")?;
    let path = a.config.unwrap_or_else(|| root.join("data/presets/colin27.toml"));
    let mut cfg = TrainConfig::load(&path, &[format!("data.dataset={:?}", json.display().to_string())])?;
    if let Some(s) = a.steps {
        cfg.optim.steps = s;
    }
    if let Some(s) = a.seed {
        cfg.output.seed = s;
    }
    cfg.output.dir = base.join(format!("ours-seed{}", cfg.output.seed));
    let ours = train(&cfg, RunMode::Overwrite)?;
    let monai = if a.no_monai {
        None
    } else {
        let py = crate::python::find_torch()?;
        let cj = base.join("effective_config.json");
        std::fs::write(&cj, serde_json::to_string_pretty(&cfg)?)?;
        let oj = base.join(format!("monai-seed{}.json", cfg.output.seed));
        crate::python::run_script(&py, &root.join("benches/colin27_monai.py"), &[cj.to_str().unwrap(), oj.to_str().unwrap()])?;
        Some(serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&oj)?)?)
    };
    let mut s = format!(
        "Command: `cargo xtask colin27{}` (data/presets/colin27.toml: UNETR f={} hidden {} x {} layers, crops {:?} x 2, {} steps, AdamW lr {}, \
         validation by sliding window on the mirrored right hemisphere, Dice per lobe without background; seed {})  \nMachine: {}  \nMONAI: {}\n\n",
        if a.write_docs { " --write-docs" } else { "" },
        cfg.model.feature_size,
        cfg.model.hidden_size,
        cfg.model.num_layers,
        cfg.transforms.roi,
        cfg.optim.steps,
        cfg.optim.adamw.lr,
        cfg.output.seed,
        crate::bench_ops::machine(),
        monai.as_ref().map_or("skipped".to_string(), |m| format!("same run, `benches/colin27_monai.py`, MONAI {} + PyTorch {}", m["monai"].as_str().unwrap_or("?"), m["torch"].as_str().unwrap_or("?")))
    );
    s += "| lobe | ours Dice | MONAI Dice |\n|---|---:|---:|\n";
    let md = |m: &serde_json::Value, c: usize| m["final"]["val_dice"][c].as_f64();
    for (c, name) in LOBES.iter().enumerate() {
        let o = ours.per_class.get(c + 1).copied().flatten();
        let t = monai.as_ref().and_then(|m| md(m, c));
        s += &format!("| {name} | {} | {} |\n", o.map_or("-".into(), |v| format!("{v:.3}")), t.map_or("-".into(), |v| format!("{v:.3}")));
    }
    let tm = monai.as_ref().and_then(|m| m["final"]["val_mean_dice"].as_f64());
    s += &format!("| **mean** | **{:.3}** | **{}** |\n", ours.final_dice, tm.map_or("-".into(), |v| format!("{v:.3}")));
    let ts = monai.as_ref().and_then(|m| m["seconds"].as_f64());
    s += &format!("| training time (s) | {:.0} | {} |\n", ours.seconds, ts.map_or("-".into(), |v| format!("{v:.0}")));
    println!("{s}");
    if a.write_docs {
        crate::docs::replace_section(&format!("colin27-seed{}", cfg.output.seed), &s)?;
    }
    Ok(())
}
