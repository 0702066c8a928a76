//! The training loop, composed of the parts beside it: the data (`data`), one optimiser update (`step`),
//! periodic sliding-window validation (`unetr_infer::Predictor`), checkpoints (`checkpoint`), logs
//! (`log`) and, at the end, plots and predictions on each validation input's grid.
//!
//! A run owns its folder: a fresh run refuses a folder that holds a run (`--resume` continues it,
//! `--overwrite` replaces it), and nothing it writes may be one of its inputs.

use crate::checkpoint::{best_score, resume, save_best, save_training, BestState, TrainState};
use crate::config::TrainConfig;
use crate::data::{self, RunData};
use crate::error::{ferr, Result, TrainError};
use crate::log::TrainLog;
use crate::optim::warmup_cosine;
use crate::step::TrainStep;
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;
use unetr_data::loader::{Loader, LoaderConfig};
use unetr_data::nifti::write_nifti;
use unetr_infer::checkpoint::write_file_atomic;
use crate::plots::{class_color, line_chart, Chart, Series};
use crate::report::{self, peak_rss_bytes, Extremes, Report};
use unetr_infer::evaluate::{aggregate, case_result};
use unetr_infer::metrics::{class_means, dice_per_set, mean_dice, Background};
use unetr_infer::outputs::{case_ids, nifti_extension, OutputPlan, Overwrite};
use unetr_infer::{parse_device, Predictor, Probabilities, Tta};
use unetr_model::{Trainable, UnetrConfig, UnetrWeights};

/// How a run treats its output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// A new run: the folder must not hold one.
    Fresh,
    /// Continue the run in the folder from its `checkpoint/`.
    Resume,
    /// Replace the run in the folder (its checkpoints, logs, plots and predictions are removed first).
    Overwrite,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub final_dice: f64,
    pub per_class: Vec<Option<f64>>,
    /// Names of the output channels (classes, or regions).
    pub class_names: Vec<String>,
    /// Whether channel 0 is the background (classes), which summaries leave out.
    pub first_is_background: bool,
    pub best_dice: f64,
    pub out_dir: PathBuf,
    pub seconds: f64,
    pub losses: Vec<f64>,
}

/// What a run writes into its folder (besides `phantom/`, see `data::dataset_json`).
const RUN_OUTPUTS: [&str; 12] =
    ["checkpoint", "checkpoint.new", "checkpoint.old", "best", "best.new", "best.old", "log.jsonl", "log.csv", "config.toml", "plots", "predictions", "report.html"];

fn check_run_folder(out: &Path, mode: RunMode) -> Result<()> {
    let present: Vec<&str> = RUN_OUTPUTS.iter().copied().filter(|n| out.join(n).exists()).collect();
    match mode {
        RunMode::Fresh if !present.is_empty() => Err(ferr(
            out,
            format!("holds a training run ({}): pass --resume to continue it or --overwrite to replace it, or choose another output folder", present.join(", ")),
        )),
        RunMode::Resume if !present.iter().any(|n| n.starts_with("checkpoint")) => Err(ferr(out, "--resume: no checkpoint/ to resume from")),
        _ => Ok(()),
    }
}

fn remove_run_outputs(out: &Path) -> Result<()> {
    for n in RUN_OUTPUTS {
        let p = out.join(n);
        let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else if p.exists() { std::fs::remove_file(&p) } else { Ok(()) };
        r.map_err(|e| ferr(&p, format!("removing the previous run's output: {e}")))?;
    }
    Ok(())
}

/// The dropout seed of one micro-batch: a function of the run's seed and position only (so a resumed
/// run draws the same masks).
fn dropout_seed(seed: u64, step: u64, micro: usize) -> u64 {
    let mut x = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (micro as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// Whether the mean over output channels leaves channel 0 out: only classes have a background channel.
fn background(cfg: &TrainConfig) -> Background {
    if cfg.labels.has_background() {
        Background::from_include(cfg.validation.include_background)
    } else {
        Background::Include
    }
}

/// The predictor of the current weights, with the run's preprocessing, window and label mode.
fn predictor(w: &UnetrWeights, cfg: &TrainConfig) -> Result<Predictor> {
    Ok(Predictor::new(w.inference_model()?, cfg.transforms.clone(), cfg.validation.window(), cfg.memory_limit)?.with_labels(cfg.labels.clone())?)
}

/// The validation score of the current weights: Dice per output channel (class or region; mean over
/// cases) and their mean.
fn validate(w: &UnetrWeights, cfg: &TrainConfig, data: &RunData) -> Result<(f64, Vec<Option<f64>>)> {
    let p = predictor(w, cfg)?;
    let mut cases = Vec::with_capacity(data.validation.len());
    for s in &data.validation {
        let pred = p.predict(s, Tta::Off)?;
        cases.push(dice_per_set(&pred.labels, s.label.as_ref().expect("checked by data::load"), &data.sets));
    }
    let per_class = class_means(&cases, data.channels);
    Ok((mean_dice(&per_class, background(cfg)), per_class))
}

fn progress_bar(cfg: &TrainConfig, start: u64) -> ProgressBar {
    if !(cfg.output.progress && std::io::stderr().is_terminal()) {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(cfg.optim.steps).with_position(start);
    pb.set_style(ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]").unwrap_or_else(|_| ProgressStyle::default_bar()));
    pb.reset_eta();
    pb
}

/// Trains as configured (see [`RunMode`] for what happens to an existing run folder).
pub fn train(cfg: &TrainConfig, mode: RunMode) -> Result<TrainSummary> {
    let t0 = Instant::now();
    cfg.validate().map_err(TrainError::Config)?;
    let dev = parse_device(&cfg.device)?;
    let out = cfg.output.dir.clone();
    check_run_folder(&out, mode)?;
    let json = data::dataset_json(cfg, &out, mode == RunMode::Overwrite)?;
    let data = data::load(cfg, &json)?;
    let val_ids = case_ids(&data.datalist.validation)?;
    let pred_dir = out.join("predictions");
    let pred_paths: Vec<PathBuf> = val_ids
        .iter()
        .zip(&data.datalist.validation)
        .map(|(id, it)| pred_dir.join(format!("{id}{}", nifti_extension(&it.image[0]).unwrap_or(".nii.gz"))))
        .collect();
    let mut plan = OutputPlan::new();
    for f in ["config.toml", "log.jsonl", "log.csv"] {
        plan.add(out.join(f));
    }
    pred_paths.iter().for_each(|p| {
        plan.add(p.clone());
    });
    let mut inputs: Vec<PathBuf> = data.datalist.training.iter().chain(&data.datalist.validation).chain(&data.datalist.test).flat_map(|it| it.image.iter().chain(&it.label).cloned()).collect();
    inputs.push(json.clone());
    inputs.extend(cfg.init.pretrained.iter().cloned());
    plan.check(&inputs, if mode == RunMode::Fresh { Overwrite::Refuse } else { Overwrite::Allow })?;
    if mode == RunMode::Overwrite {
        remove_run_outputs(&out)?;
    }
    std::fs::create_dir_all(&out).map_err(|e| ferr(&out, e))?;

    let mcfg = cfg.unetr(data.in_channels, data.channels)?;
    let w = UnetrWeights::init_seeded(&mcfg, &dev, cfg.output.seed)?;
    if let Some(p) = &cfg.init.pretrained {
        let rep = w.load_from(p, cfg.memory_limit.bytes(), |k| k.starts_with("out."))?;
        tracing::info!("fine-tuning from {} ({} tensors, new: {:?})", p.display(), rep.loaded, rep.skipped);
    }
    let which = if cfg.init.freeze_encoder { Trainable::DecoderOnly } else { Trainable::All };
    let mut step = TrainStep::new(w.trainable_vars(which), &cfg.optim);
    if !cfg.labels.has_background() {
        step.regions = Some(data.sets.clone());
    }
    let ckpt = out.join("checkpoint");
    let best_dir = out.join("best");
    let mut state = TrainState { step: 0, seed: cfg.output.seed, best_dice: f64::NEG_INFINITY, best_step: 0, grad_scaler: step.scaler };
    if mode == RunMode::Resume {
        let st = resume(&ckpt, &w, &mut step.opt, cfg)?;
        tracing::info!("resuming at step {}", st.step);
        step.scaler = if cfg.optim.precision.needs_loss_scaling() { st.grad_scaler.or(step.scaler) } else { None };
        state = TrainState { grad_scaler: step.scaler, ..st };
        if let Some(b) = best_score(&best_dir)? {
            state.best_dice = b.mean_dice;
            state.best_step = b.step;
        }
    }
    write_file_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let mut log = TrainLog::open(&out, data.channels, cfg.output.log_csv, (mode == RunMode::Resume).then_some(state.step))?;
    let last_val = run_loop(cfg, &dev, &w, &mcfg, &mut step, &mut state, &data, &mut log, &out, t0)?;
    let losses = last_val.2;

    let summary = vec![
        ("steps".to_string(), format!("{} ({} this session)", state.step, losses.len())),
        ("best validation mean Dice".into(), format!("{:.4} at step {}", state.best_dice, state.best_step)),
        ("last validation mean Dice".into(), format!("{:.4}", last_val.0)),
        ("training time".into(), format!("{:.0} s", t0.elapsed().as_secs_f64())),
        ("device".into(), cfg.device.clone()),
    ];
    write_outputs(cfg, &w, &data, &out, &pred_paths, summary)?;
    Ok(TrainSummary {
        final_dice: last_val.0,
        per_class: last_val.1,
        class_names: data.channel_names.clone(),
        first_is_background: cfg.labels.has_background(),
        best_dice: state.best_dice,
        out_dir: out,
        seconds: t0.elapsed().as_secs_f64(),
        losses,
    })
}

/// The steps from `state.step` to `optim.steps`; returns the last validation (mean, per class) and the
/// losses of the steps run.
#[allow(clippy::too_many_arguments)]
fn run_loop(
    cfg: &TrainConfig,
    dev: &Device,
    w: &UnetrWeights,
    mcfg: &UnetrConfig,
    step: &mut TrainStep,
    state: &mut TrainState,
    data: &RunData,
    log: &mut TrainLog,
    out: &Path,
    t0: Instant,
) -> Result<(f64, Vec<Option<f64>>, Vec<f64>)> {
    let o = &cfg.optim;
    let acc = o.accumulate.max(1);
    let mut loader = Loader::new(data.train.clone(), LoaderConfig { batch_size: o.batch_size.max(1), seed: cfg.output.seed, prefetch: cfg.output.prefetch }, state.step * acc as u64);
    let pb = progress_bar(cfg, state.step);
    let say = |m: String| if pb.is_hidden() { eprintln!("{m}") } else { pb.println(m) };
    let mut losses = Vec::new();
    let mut last_print = Instant::now();
    let mut last_val = (f64::NAN, vec![]);
    let run_start = (Instant::now(), state.step);
    while state.step < o.steps {
        let lr = warmup_cosine(state.step, o.warmup_steps, o.steps, o.adamw.lr, o.min_lr);
        let at = state.step;
        let batches = (0..acc).map(|m| -> Result<(Tensor, Tensor)> {
            let b = loader.next().unwrap_or_else(|| Err(unetr_data::DataError::Invalid("the loader thread stopped".into())))?;
            let [d0, d1, d2] = b.dims;
            w.model.vit.reseed_dropout(dropout_seed(cfg.output.seed, at, m));
            Ok((Tensor::from_vec(b.image, (b.n, b.channels, d0, d1, d2), dev)?, Tensor::from_vec(b.label, (b.n, 1, d0, d1, d2), dev)?))
        });
        let r = step.run(&w.model, batches, lr)?;
        if let (Some(s), false) = (&step.scaler, r.applied) {
            tracing::warn!("step {}: f16 gradients overflowed, step skipped, loss scale now {}", state.step + 1, s.scale);
        }
        state.grad_scaler = step.scaler;
        state.step += 1;
        losses.push(r.loss);
        if !r.loss.is_finite() {
            return Err(TrainError::Config(format!("loss became {} at step {}: lower the learning rate or enable grad_clip", r.loss, state.step)));
        }
        let mut rec = serde_json::json!({"step": state.step, "loss": r.loss, "lr": lr, "grad_norm": r.grad_norm, "elapsed_s": t0.elapsed().as_secs_f64()});
        if let Some(s) = &step.scaler {
            rec["loss_scale"] = s.scale.into();
            rec["skipped"] = (!r.applied).into();
        }
        let validating = state.step % cfg.validation.every.max(1) == 0 || state.step == o.steps;
        if validating {
            let (md, per_class) = validate(w, cfg, data)?;
            rec["val_mean_dice"] = md.into();
            rec["val_dice"] = serde_json::to_value(&per_class).unwrap_or_default();
            let named: Vec<String> = per_class.iter().zip(&data.channel_names).map(|(d, n)| format!("{n} {}", d.map_or("-".into(), |v| format!("{v:.3}")))).collect();
            say(format!("  validation at step {}: mean Dice {md:.4} ({})", state.step, named.join(", ")));
            if md > state.best_dice {
                state.best_dice = md;
                state.best_step = state.step;
                save_best(&out.join("best"), w, mcfg, cfg, &BestState { step: state.step, mean_dice: md, dice_per_class: per_class.clone() })?;
            }
            last_val = (md, per_class);
        }
        log.write(&rec)?;
        let steps_per_s = (state.step - run_start.1) as f64 / run_start.0.elapsed().as_secs_f64();
        pb.set_position(state.step);
        pb.set_message(format!("loss {:.4} lr {lr:.2e} {steps_per_s:.2} step/s", r.loss));
        if pb.is_hidden() && (state.step % cfg.output.log_every.max(1) == 0 || validating) {
            let el = t0.elapsed().as_secs_f64();
            let rate = last_print.elapsed().as_secs_f64() / cfg.output.log_every.max(1) as f64;
            let eta = (o.steps - state.step) as f64 / steps_per_s;
            eprintln!("step {:>6}/{} loss {:.4} lr {lr:.2e} {:.2} s/step elapsed {el:.0}s eta {eta:.0}s", state.step, o.steps, r.loss, rate);
            last_print = Instant::now();
        }
        if validating {
            save_training(&out.join("checkpoint"), w, mcfg, cfg, &step.opt, state)?;
        }
    }
    pb.finish_and_clear();
    Ok((last_val.0, last_val.1, losses))
}

/// The run's curves from log.jsonl, as PNG (quick look) and SVG (returned, for the report).
fn write_curves(out: &Path, class_names: &[String], skip: usize) -> Result<Vec<String>> {
    let log_path = out.join("log.jsonl");
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| ferr(&plots, e))?;
    let log_text = std::fs::read_to_string(&log_path).map_err(|e| ferr(&log_path, e))?;
    let recs: Vec<serde_json::Value> = log_text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let field = |k: &str| -> Vec<(f64, f64)> { recs.iter().filter_map(|r| Some((r["step"].as_f64()?, r[k].as_f64()?))).collect() };
    let run = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let one = |name: &str, pts| vec![Series { name: name.into(), points: pts, color: class_color(2) }];
    let mut dice: Vec<Series> = class_names
        .iter()
        .enumerate()
        .skip(skip)
        .map(|(c, n)| Series { name: n.clone(), points: recs.iter().filter_map(|r| Some((r["step"].as_f64()?, r["val_dice"].get(c)?.as_f64()?))).collect(), color: class_color(c) })
        .collect();
    dice.push(Series { name: "mean".into(), points: field("val_mean_dice"), color: plotters::style::BLACK });
    let charts = [
        ("loss", Chart { title: &format!("{run}: training loss"), x_label: "step", y_label: "loss (log scale)", y_range: None, log_y: true, series: &one("loss", field("loss")) }),
        ("lr", Chart { title: &format!("{run}: learning rate"), x_label: "step", y_label: "learning rate", y_range: None, log_y: false, series: &one("learning rate", field("lr")) }),
        ("val_dice", Chart { title: &format!("{run}: validation Dice per class"), x_label: "step", y_label: "Dice", y_range: Some((0.0, 1.0)), log_y: false, series: &dice }),
    ];
    let mut svgs = Vec::new();
    for (name, c) in &charts {
        let (png, svg) = (plots.join(format!("{name}.png")), plots.join(format!("{name}.svg")));
        line_chart(&png, Some(&svg), c).map_err(|e| ferr(&png, e))?;
        svgs.push(std::fs::read_to_string(&svg).map_err(|e| ferr(&svg, e))?);
    }
    Ok(svgs)
}

/// Curves, the validation cases evaluated (Dice and HD95 per case and class), overlays of the first cases,
/// their predictions on each input's grid, and the HTML report.
fn write_outputs(cfg: &TrainConfig, w: &UnetrWeights, data: &RunData, out: &Path, pred_paths: &[PathBuf], summary: Vec<(String, String)>) -> Result<()> {
    let curves = write_curves(out, &data.channel_names, cfg.labels.has_background() as usize)?;
    let plots = out.join("plots");
    let p = predictor(w, cfg)?;
    let pred_dir = out.join("predictions");
    std::fs::create_dir_all(&pred_dir).map_err(|e| ferr(&pred_dir, e))?;
    let ids = case_ids(&data.datalist.validation)?;
    let background = background(cfg);
    let mut extremes = Extremes::default();
    let mut cases = Vec::new();
    for (vi, ((s, path), (it, id))) in data.validation.iter().zip(pred_paths).zip(data.datalist.validation.iter().zip(&ids)).enumerate() {
        let pred = p.predict(s, Tta::Off)?;
        let lab = s.label.as_ref().expect("checked by data::load");
        let r = case_result(id, it, &pred, lab, s.dims, unetr_data::nifti::spacing(&s.affine), &data.sets);
        extremes.consider(s, &pred, &r, &data.class_names, background)?;
        if vi < 4 {
            let png = plots.join(format!("overlay_{vi}.png"));
            crate::plots::overlay_png(&png, &format!("{id} (validation)"), &s.image[..s.dims.iter().product()], lab, &pred.labels, s.dims, &data.class_names).map_err(|e| ferr(&png, e))?;
        }
        let seg = p.invert(s, &pred, Probabilities::Skip)?;
        write_nifti(path, &seg.labels, true)?;
        cases.push(r);
    }
    let evaluation = aggregate(&data.channel_names, cases, data.channels, background);
    let title = format!("UNETR training run {}", out.display());
    let mut summary = summary;
    summary.push(("validation mean Dice (final weights)".into(), format!("{:.4}", evaluation.mean_dice)));
    summary.push(("validation mean HD95 (final weights)".into(), format!("{:.2} mm", evaluation.mean_hd95_mm)));
    if let Some(b) = peak_rss_bytes() {
        summary.push(("peak resident memory".into(), format!("{:.2} GB", b as f64 / 1e9)));
    }
    report::write(&out.join("report.html"), &Report { title, summary, curves, evaluation: Some(&evaluation), extremes: &extremes, config: &cfg.to_toml() })
}
