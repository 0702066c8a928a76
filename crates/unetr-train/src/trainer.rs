//! The training loop, composed of the parts beside it: the data (`data`), one optimiser update (`step`),
//! periodic sliding-window validation (`unetr_infer::Predictor`), checkpoints (`checkpoint`), logs
//! (`log`) and, at the end, plots and predictions on each validation input's grid.
//!
//! A run owns its folder: a fresh run refuses a folder that holds a run (`--resume` continues it,
//! `--overwrite` replaces it), and nothing it writes may be one of its inputs.

use crate::checkpoint::{best_score, resume, save_best, save_training, BestState, TrainState};
use crate::config::TrainConfig;
use crate::data::{self, RunData};
use crate::distributed::{mean_over_ranks, Communicator, SingleProcess};
use crate::error::{ferr, Result, TrainError};
use crate::log::TrainLog;
use crate::optim::warmup_cosine;
use crate::step::TrainStep;
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;
use unetr_data::loader::{Loader, LoaderConfig, Shard};
use unetr_data::nifti::write_nifti;
use unetr_infer::checkpoint::write_file_atomic;
use crate::plots::{class_color, line_chart, Chart, Series};
use crate::report::{self, peak_rss_bytes, Extremes, Report};
use unetr_infer::evaluate::{aggregate, case_result};
use unetr_infer::metrics::{dice_per_set, mean_dice, Background};
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

/// The validation score of the current weights: Dice per output channel (class or region; mean over the
/// cases where it is present) and their mean. The cases are split over the ranks (case i on rank
/// i mod world) and the per-channel sums and counts summed over them.
fn validate(w: &UnetrWeights, cfg: &TrainConfig, data: &RunData, comm: &dyn Communicator) -> Result<(f64, Vec<Option<f64>>)> {
    let p = predictor(w, cfg)?;
    let k = data.channels;
    // [sum of Dice per channel, cases per channel]
    let mut acc = vec![0f32; 2 * k];
    for (i, s) in data.validation.iter().enumerate() {
        if i % comm.world_size() != comm.rank() {
            continue;
        }
        let pred = p.predict(s, Tta::Off)?;
        for (c, d) in dice_per_set(&pred.labels, s.label.as_ref().expect("checked by data::load"), &data.sets).into_iter().enumerate() {
            if let Some(d) = d {
                acc[c] += d as f32;
                acc[k + c] += 1.0;
            }
        }
    }
    comm.all_reduce_sum(&mut acc)?;
    let per_class: Vec<Option<f64>> = (0..k).map(|c| (acc[k + c] > 0.0).then(|| acc[c] as f64 / acc[k + c] as f64)).collect();
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
    train_with(cfg, mode, &SingleProcess)
}

/// Trains as one rank of a data-parallel group (`comm`; [`SingleProcess`] for one device): every rank runs
/// this with the same config, each on its shard of every batch; gradients are averaged over the ranks
/// before each update, validation is sharded and reduced, and only rank 0 writes. A rank that fails
/// aborts the group, so the others stop too.
pub fn train_with(cfg: &TrainConfig, mode: RunMode, comm: &dyn Communicator) -> Result<TrainSummary> {
    let r = train_rank(cfg, mode, comm);
    if let Err(e) = &r {
        comm.abort(&e.to_string());
    }
    r
}

/// Rank 0's preparation of the run folder: checks, data generation, overwrite; returns the datalist.
fn prepare_folder(cfg: &TrainConfig, mode: RunMode, out: &Path) -> Result<PathBuf> {
    check_run_folder(out, mode)?;
    data::dataset_json(cfg, out, mode == RunMode::Overwrite)
}

fn train_rank(cfg: &TrainConfig, mode: RunMode, comm: &dyn Communicator) -> Result<TrainSummary> {
    let t0 = Instant::now();
    let writer = comm.rank() == 0;
    cfg.validate().map_err(TrainError::Config)?;
    let dev = parse_device(&cfg.device)?;
    let out = cfg.output.dir.clone();
    if cfg.optim.batch_size % comm.world_size() != 0 {
        return Err(TrainError::Config(format!("optim.batch_size = {} (volumes per step over all ranks) must be a multiple of the world size {}", cfg.optim.batch_size, comm.world_size())));
    }
    // Rank 0 checks and prepares the folder (and generates phantoms) while the others wait.
    let prepared = if writer { Some(prepare_folder(cfg, mode, &out)) } else { None };
    let json = match prepared {
        Some(Err(e)) => return Err(e),
        Some(Ok(j)) => j,
        None => match &cfg.data.dataset {
            Some(p) => p.clone(),
            None => data::phantom_dir(&out).join("dataset.json"),
        },
    };
    comm.barrier()?;
    let data = data::load(cfg, &json)?;
    let val_ids = case_ids(&data.datalist.validation)?;
    let pred_dir = out.join("predictions");
    let pred_paths: Vec<PathBuf> = val_ids
        .iter()
        .zip(&data.datalist.validation)
        .map(|(id, it)| pred_dir.join(format!("{id}{}", nifti_extension(&it.image[0]).unwrap_or(".nii.gz"))))
        .collect();
    if writer {
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
    }

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
    let mut state = TrainState { step: 0, seed: cfg.output.seed, best_dice: f64::NEG_INFINITY, best_step: 0, grad_scaler: step.scaler, world_size: comm.world_size() };
    if mode == RunMode::Resume {
        let st = resume(&ckpt, &w, &mut step.opt, cfg)?;
        if st.world_size != comm.world_size() {
            return Err(ferr(&ckpt, format!("was trained by {} rank(s), this run has {}: resume with the same world size (batches are sharded by rank)", st.world_size, comm.world_size())));
        }
        tracing::info!("resuming at step {}", st.step);
        step.scaler = if cfg.optim.precision.needs_loss_scaling() { st.grad_scaler.or(step.scaler) } else { None };
        state = TrainState { grad_scaler: step.scaler, ..st };
        if let Some(b) = best_score(&best_dir)? {
            state.best_dice = b.mean_dice;
            state.best_step = b.step;
        }
    }
    let mut log = if writer {
        write_file_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
        Some(TrainLog::open(&out, data.channels, cfg.output.log_csv, (mode == RunMode::Resume).then_some(state.step))?)
    } else {
        None
    };
    let run = Run { cfg, dev: &dev, w: &w, mcfg: &mcfg, data: &data, out: &out, t0, comm };
    let last_val = run_loop(&run, &mut step, &mut state, log.as_mut())?;
    let losses = last_val.2;

    if writer {
        let summary = vec![
            ("steps".to_string(), format!("{} ({} this session)", state.step, losses.len())),
            ("best validation mean Dice".into(), format!("{:.4} at step {}", state.best_dice, state.best_step)),
            ("last validation mean Dice".into(), format!("{:.4}", last_val.0)),
            ("training time".into(), format!("{:.0} s", t0.elapsed().as_secs_f64())),
            ("device".into(), if comm.world_size() > 1 { format!("{} x {} ranks", cfg.device, comm.world_size()) } else { cfg.device.clone() }),
        ];
        write_outputs(cfg, &w, &data, &out, &pred_paths, summary)?;
    }
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

/// What the loop reads.
struct Run<'a> {
    cfg: &'a TrainConfig,
    dev: &'a Device,
    w: &'a UnetrWeights,
    mcfg: &'a UnetrConfig,
    data: &'a RunData,
    out: &'a Path,
    t0: Instant,
    comm: &'a dyn Communicator,
}

/// The steps from `state.step` to `optim.steps`; returns the last validation (mean, per class) and the
/// losses of the steps run (means over the ranks). `log` is rank 0's.
fn run_loop(run: &Run, step: &mut TrainStep, state: &mut TrainState, mut log: Option<&mut TrainLog>) -> Result<(f64, Vec<Option<f64>>, Vec<f64>)> {
    let Run { cfg, dev, w, mcfg, data, out, t0, comm } = *run;
    let writer = comm.rank() == 0;
    let o = &cfg.optim;
    let acc = o.accumulate.max(1);
    let shard = Shard { rank: comm.rank(), world: comm.world_size() };
    let mut loader = Loader::new(data.train.clone(), LoaderConfig { batch_size: o.batch_size.max(1), seed: cfg.output.seed, prefetch: cfg.output.prefetch, shard }, state.step * acc as u64);
    let pb = if writer { progress_bar(cfg, state.step) } else { ProgressBar::hidden() };
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
            w.model.vit.reseed_dropout(dropout_seed(cfg.output.seed, at, m) ^ (comm.rank() as u64).wrapping_mul(0x9E37_79B9));
            Ok((Tensor::from_vec(b.image, (b.n, b.channels, d0, d1, d2), dev)?, Tensor::from_vec(b.label, (b.n, 1, d0, d1, d2), dev)?))
        });
        let mut r = step.run(&w.model, batches, lr, comm)?;
        r.loss = mean_over_ranks(comm, r.loss)?;
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
            let (md, per_class) = validate(w, cfg, data, comm)?;
            rec["val_mean_dice"] = md.into();
            rec["val_dice"] = serde_json::to_value(&per_class).unwrap_or_default();
            let named: Vec<String> = per_class.iter().zip(&data.channel_names).map(|(d, n)| format!("{n} {}", d.map_or("-".into(), |v| format!("{v:.3}")))).collect();
            if writer {
                say(format!("  validation at step {}: mean Dice {md:.4} ({})", state.step, named.join(", ")));
            }
            if md > state.best_dice {
                state.best_dice = md;
                state.best_step = state.step;
                if writer {
                    save_best(&out.join("best"), w, mcfg, cfg, &BestState { step: state.step, mean_dice: md, dice_per_class: per_class.clone() })?;
                }
            }
            last_val = (md, per_class);
        }
        if let Some(l) = log.as_deref_mut() {
            l.write(&rec)?;
        }
        let steps_per_s = (state.step - run_start.1) as f64 / run_start.0.elapsed().as_secs_f64();
        pb.set_position(state.step);
        pb.set_message(format!("loss {:.4} lr {lr:.2e} {steps_per_s:.2} step/s", r.loss));
        if writer && pb.is_hidden() && (state.step % cfg.output.log_every.max(1) == 0 || validating) {
            let el = t0.elapsed().as_secs_f64();
            let rate = last_print.elapsed().as_secs_f64() / cfg.output.log_every.max(1) as f64;
            let eta = (o.steps - state.step) as f64 / steps_per_s;
            eprintln!("step {:>6}/{} loss {:.4} lr {lr:.2e} {:.2} s/step elapsed {el:.0}s eta {eta:.0}s", state.step, o.steps, r.loss, rate);
            last_print = Instant::now();
        }
        if validating && writer {
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
