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
    /// Seeds 0..N, each run on both sides (output.seed; MONAI's set_determinism).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    #[arg(long)]
    no_monai: bool,
    /// Write the table into docs/benchmarks.md.
    #[arg(long)]
    write_docs: bool,
}

/// One side's results over the seeds: per-class Dice (without background) and seconds per step.
#[derive(Default)]
struct Runs {
    dice: Vec<Vec<f64>>,
    mean: Vec<f64>,
    step_s: Vec<f64>,
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 { (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { f64::NAN };
    (m, sd)
}

fn cell(v: &[f64], digits: usize) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let (m, sd) = mean_sd(v);
    if sd.is_nan() {
        format!("{m:.digits$}")
    } else {
        format!("{m:.digits$} ± {sd:.digits$}")
    }
}

pub fn run(a: Args) -> Result<()> {
    let root = crate::repo_root();
    let base = root.join("runs/colin27");
    let json = colin27_lobes(&a.templates, &base.join("data"), 8).context("building the Colin27 lobes dataset (is mricron-data installed?)")?;
    let path = a.config.clone().unwrap_or_else(|| root.join("data/presets/colin27.toml"));
    let py = if a.no_monai { None } else { Some(crate::python::find_torch()?) };
    let (mut ours, mut monai) = (Runs::default(), Runs::default());
    let mut cfg = TrainConfig::load(&path, &[format!("data.dataset={:?}", json.display().to_string())])?;
    for seed in 0..a.seeds.max(1) {
        if let Some(s) = a.steps {
            cfg.optim.steps = s;
        }
        cfg.output.seed = seed;
        cfg.output.dir = base.join(format!("ours-seed{seed}"));
        let r = train(&cfg, RunMode::Overwrite)?;
        ours.dice.push(r.per_class.iter().skip(1).map(|d| d.unwrap_or(0.0)).collect());
        ours.mean.push(r.final_dice);
        ours.step_s.push(r.seconds / cfg.optim.steps as f64);
        if let Some(py) = &py {
            let cj = base.join(format!("effective_config-seed{seed}.json"));
            std::fs::write(&cj, serde_json::to_string_pretty(&cfg)?)?;
            let oj = base.join(format!("monai-seed{seed}.json"));
            crate::python::run_script(py, &root.join("benches/colin27_monai.py"), &[cj.to_str().unwrap(), oj.to_str().unwrap()])?;
            let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&oj)?)?;
            monai.dice.push((0..LOBES.len()).map(|c| m["final"]["val_dice"][c].as_f64().unwrap_or(0.0)).collect());
            monai.mean.push(m["final"]["val_mean_dice"].as_f64().unwrap_or(f64::NAN));
            monai.step_s.push(m["seconds"].as_f64().unwrap_or(f64::NAN) / cfg.optim.steps as f64);
            eprintln!("seed {seed}: ours mean Dice {:.3}, MONAI {:.3}", r.final_dice, monai.mean.last().unwrap());
        }
    }
    let n = a.seeds.max(1);
    let mut s = format!(
        "Command: `cargo xtask colin27 --seeds {n}{}` (data/presets/colin27.toml: UNETR f={} hidden {} x {} layers, crops {:?} x 2, {} steps, AdamW lr {}, \
         validation by sliding window on the mirrored right hemisphere, Dice per lobe without background; seeds 0..{n}, mean ± sample standard deviation)  \nMachine: {}  \nMONAI: {}\n\n",
        if a.write_docs { " --write-docs" } else { "" },
        cfg.model.feature_size,
        cfg.model.hidden_size,
        cfg.model.num_layers,
        cfg.transforms.roi,
        cfg.optim.steps,
        cfg.optim.adamw.lr,
        crate::bench_ops::machine(),
        if py.is_some() { "same run, `benches/colin27_monai.py` (the same transform list, model, loss, optimiser, schedule and budget)".to_string() } else { "skipped".into() }
    );
    s += "| lobe | ours Dice | MONAI Dice | difference within the seed spread? |\n|---|---:|---:|---|\n";
    let verdict = |o: &[f64], m: &[f64]| -> String {
        if m.is_empty() || o.len() < 2 {
            return "-".into();
        }
        let ((mo, so), (mm, sm)) = (mean_sd(o), mean_sd(m));
        // Welch's t with the two spreads: |t| < 2 reads as "within".
        let se = (so * so / o.len() as f64 + sm * sm / m.len() as f64).sqrt();
        let t = if se > 0.0 { (mo - mm) / se } else if mo == mm { 0.0 } else { f64::INFINITY };
        if t.abs() < 2.0 { format!("yes (t = {t:.1})") } else { format!("no (t = {t:.1})") }
    };
    for (c, name) in LOBES.iter().enumerate() {
        let o: Vec<f64> = ours.dice.iter().map(|d| d[c]).collect();
        let m: Vec<f64> = monai.dice.iter().map(|d| d[c]).collect();
        s += &format!("| {name} | {} | {} | {} |\n", cell(&o, 3), cell(&m, 3), verdict(&o, &m));
    }
    s += &format!("| **mean** | **{}** | **{}** | {} |\n", cell(&ours.mean, 3), cell(&monai.mean, 3), verdict(&ours.mean, &monai.mean));
    s += &format!("| time per step (s) | {} | {} | |\n", cell(&ours.step_s, 2), cell(&monai.step_s, 2));
    println!("{s}");
    if a.write_docs {
        crate::docs::replace_section("colin27-seeds", &s)?;
    }
    Ok(())
}
