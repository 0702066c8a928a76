//! `unetr eval`: Dice and HD95 per case and class of a checkpoint on a datalist split.

use crate::commands::{progress, window_overrides, DeviceArgs, WindowArgs};
use anyhow::{bail, Result};
use std::path::PathBuf;
use unetr_data::Datalist;
use unetr_infer::evaluate::{evaluate, Evaluation};
use unetr_infer::metrics::Background;
use unetr_infer::outputs::case_ids;
use unetr_infer::{parse_device, OutputPlan, Overwrite, Predictor, Tta};
use unetr_train::report::{self, peak_rss_bytes, Extremes, Report};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub datalist: PathBuf,
    /// training, validation or test.
    #[arg(long, default_value = "validation")]
    pub split: String,
    /// Write the results as JSON (nnU-Net summary.json layout: mean per class, and per case).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write one row per case and class as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write an HTML report (per-class and per-case tables, overlays of the best and worst cases).
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Average the logits over mirror flips of each axis.
    #[arg(long)]
    pub tta: bool,
    /// Count the background class in the means.
    #[arg(long)]
    pub include_background: bool,
    #[command(flatten)]
    pub run: DeviceArgs,
    /// Replace existing --json / --csv files.
    #[arg(long)]
    pub overwrite: bool,
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.filter(|x| x.is_finite()).map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// nnU-Net's summary.json layout: per-class means and every case's metrics, by class name.
fn summary_json(e: &Evaluation, split: &str) -> serde_json::Value {
    let by_class = |d: &[Option<f64>], h: &[Option<f64>]| -> serde_json::Map<String, serde_json::Value> {
        e.classes.iter().enumerate().map(|(c, n)| (n.clone(), serde_json::json!({"Dice": d[c], "HD95_mm": h[c]}))).collect()
    };
    serde_json::json!({
        "split": split,
        "include_background": e.include_background,
        "foreground_mean": {"Dice": e.mean_dice, "HD95_mm": e.mean_hd95_mm},
        "mean": by_class(&e.mean_dice_per_class, &e.mean_hd95_per_class),
        "metric_per_case": e.cases.iter().map(|c| serde_json::json!({"case": c.case, "image": c.image, "label": c.label, "metrics": by_class(&c.dice, &c.hd95_mm)})).collect::<Vec<_>>(),
    })
}

fn cases_csv(e: &Evaluation) -> String {
    let mut s = String::from("case,class_index,class,dice,hd95_mm\n");
    for c in &e.cases {
        for (k, n) in e.classes.iter().enumerate() {
            let f = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
            s += &format!("{},{k},{},{},{}\n", c.case, n, f(c.dice[k]), f(c.hd95_mm[k]));
        }
    }
    s
}

pub fn run(a: Args) -> Result<()> {
    a.window.check()?;
    let dl = Datalist::from_json(&a.datalist, a.run.memory_limit)?;
    let list = match a.split.as_str() {
        "training" => dl.training.clone(),
        "validation" => dl.validation.clone(),
        "test" => dl.test.clone(),
        o => bail!("--split {o}: training, validation or test"),
    };
    if list.is_empty() {
        bail!("{}: the {} split is empty", a.datalist.display(), a.split);
    }
    if list.iter().any(|it| it.label.is_none()) {
        bail!("{}: every {} item needs a label to evaluate", a.datalist.display(), a.split);
    }
    dl.check_files()?;
    let ids = case_ids(&list)?;
    let mut plan = OutputPlan::new();
    a.json.iter().chain(&a.csv).chain(&a.report).for_each(|p| {
        plan.add(p.clone());
    });
    let inputs: Vec<PathBuf> = list.iter().flat_map(|it| it.image.iter().chain(&it.label).cloned()).chain([a.datalist.clone()]).collect();
    plan.check(&inputs, if a.overwrite { Overwrite::Allow } else { Overwrite::Refuse })?;
    let device = parse_device(&a.run.device)?;
    let mut p = Predictor::from_checkpoint(&a.checkpoint, &device, a.run.memory_limit)?;
    window_overrides(&mut p, &a.window)?;
    let k = p.model.cfg.out_channels;
    let class_names: Vec<String> = if dl.labels.is_empty() { (0..k).map(|c| format!("class {c}")).collect() } else { dl.labels.iter().map(|l| l.1.clone()).collect() };
    match &p.labels {
        unetr_infer::LabelMode::Classes if class_names.len() != k => bail!("{}: declares {} classes, the checkpoint predicts {k}", a.datalist.display(), class_names.len()),
        labels => labels.check(Some(class_names.len())).map_err(|e| anyhow::anyhow!("{}: {e}", a.datalist.display()))?,
    }
    let names = p.labels.names(&class_names);
    let bar = progress(list.len() as u64, "evaluating");
    let tta = if a.tta { Tta::Flips } else { Tta::Off };
    let background = if p.labels.has_background() { Background::from_include(a.include_background) } else { Background::Include };
    let mut extremes = Extremes::default();
    let t0 = std::time::Instant::now();
    let e = evaluate(&p, &list, &ids, &names, tta, background, |s, pred, c| {
        let d: Vec<String> = c.dice.iter().zip(&names).skip(p.labels.has_background() as usize).map(|(v, n)| format!("{n} {}", fmt(*v, 3))).collect();
        bar.println(format!("{}: Dice {}", c.case, d.join(", ")));
        bar.inc(1);
        if a.report.is_some() {
            extremes.consider(s, pred, c, &class_names, background).map_err(|e| unetr_infer::InferError::Config(e.to_string()))?;
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let w = names.iter().map(|n| n.len()).max().unwrap_or(5).max(10);
    println!("{:<w$} {:>8} {:>10}", "class", "Dice", "HD95 (mm)");
    for c in 0..k {
        println!("{:<w$} {:>8} {:>10}", names[c], fmt(e.mean_dice_per_class[c], 4), fmt(e.mean_hd95_per_class[c], 2));
    }
    let which = if a.include_background { "mean" } else { "mean (fg)" };
    println!("{:<w$} {:>8} {:>10}", which, fmt(Some(e.mean_dice), 4), fmt(Some(e.mean_hd95_mm), 2));
    if let Some(p) = &a.json {
        unetr_infer::checkpoint::write_file_atomic(p, serde_json::to_string_pretty(&summary_json(&e, &a.split))?.as_bytes())?;
    }
    if let Some(p) = &a.csv {
        unetr_infer::checkpoint::write_file_atomic(p, cases_csv(&e).as_bytes())?;
    }
    if let Some(path) = &a.report {
        let mut summary = vec![
            ("checkpoint".to_string(), a.checkpoint.display().to_string()),
            ("datalist, split".into(), format!("{}, {}", a.datalist.display(), a.split)),
            ("test-time augmentation".into(), if a.tta { "mirror flips" } else { "none" }.into()),
            ("evaluation time".into(), format!("{:.1} s", t0.elapsed().as_secs_f64())),
        ];
        if let Some(b) = peak_rss_bytes() {
            summary.push(("peak resident memory".into(), format!("{:.2} GB", b as f64 / 1e9)));
        }
        let config = std::fs::read_to_string(a.checkpoint.join(unetr_infer::checkpoint::TRAIN_CONFIG)).unwrap_or_default();
        let r = Report { title: format!("UNETR evaluation: {}", a.checkpoint.display()), summary, curves: vec![], evaluation: Some(&e), extremes: &extremes, config: &config };
        report::write(path, &r)?;
    }
    Ok(())
}
