//! `cargo xtask bench train-memory`: one training step's time and peak memory under each activation
//! checkpointing mode, against PyTorch + MONAI's step in the same run, and the live-bytes timeline of a step
//! as a plot (where the peak sits).

use anyhow::{bail, Result};
use clap::Parser;
use unetr_train::plots::{class_color, line_chart, Chart, Series};

use crate::bench_model::{self, Measured};

#[derive(clap::Args)]
pub struct Args {
    /// Model configuration (btcv, spleen, brats or a JSON of MONAI's arguments).
    #[arg(long, default_value = "btcv")]
    config: String,
    /// Input size D,H,W.
    #[arg(long, default_value = "96,96,96")]
    size: String,
    /// Checkpointing modes to measure, comma-separated.
    #[arg(long, default_value = "none,vit,decoder,all")]
    modes: String,
    /// Timed steps per measuring process, after two warm-ups.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Rounds (fresh processes each: PyTorch once, then each of our modes once).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Skip the PyTorch side.
    #[arg(long)]
    no_pytorch: bool,
    /// Write the table into docs/benchmarks.md and the plot into docs/bench/.
    #[arg(long)]
    write_docs: bool,
}

/// The model bench's arguments for one measuring process (train mode).
fn model_args(a: &Args, checkpointing: &str, skip_pytorch: bool) -> Result<bench_model::Args> {
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        a: bench_model::Args,
    }
    let mut argv = vec!["bench", "--config", &a.config, "--size", &a.size, "--checkpointing", checkpointing];
    let repeats = a.repeats.to_string();
    argv.extend(["--repeats", &repeats]);
    if skip_pytorch {
        argv.push("--no-pytorch");
    }
    Ok(Wrap::try_parse_from(argv)?.a)
}

struct Row {
    mode: String,
    steps: Vec<f64>,
    peak_rss_gb: f64,
    peak_live_gb: f64,
    timeline: Vec<(f64, f64)>,
    /// The most live GB in each part of a step, in order (the largest over the rounds).
    phases: Vec<(String, f64)>,
    param_bytes: u64,
}

fn merge(rows: &mut Vec<Row>, mode: &str, m: Measured) {
    let gb = |kb: u64| kb as f64 / 1e6;
    match rows.iter_mut().find(|r| r.mode == mode) {
        Some(r) => {
            r.steps.extend(m.forward_s);
            r.peak_rss_gb = r.peak_rss_gb.max(gb(m.peak_rss_kb));
            r.peak_live_gb = r.peak_live_gb.max(gb(m.peak_live_kb));
            for ((name, p), (n2, b)) in r.phases.iter_mut().zip(&m.memory_phases) {
                if name == n2 {
                    *p = p.max(*b as f64 / 1e9);
                }
            }
        }
        None => rows.push(Row {
            mode: mode.to_string(),
            steps: m.forward_s,
            peak_rss_gb: gb(m.peak_rss_kb),
            peak_live_gb: gb(m.peak_live_kb),
            timeline: m.memory_timeline,
            phases: m.memory_phases.into_iter().map(|(n, b)| (n, b as f64 / 1e9)).collect(),
            param_bytes: m.param_bytes,
        }),
    }
}

pub fn run(a: Args) -> Result<()> {
    let modes: Vec<&str> = a.modes.split(',').map(str::trim).filter(|m| !m.is_empty()).collect();
    if modes.is_empty() || a.rounds == 0 || a.repeats == 0 {
        bail!("--modes, --rounds and --repeats need at least one each");
    }
    let cfg = bench_model::config(&model_args(&a, modes[0], true)?)?;
    let (mut ours, mut torch, mut torch_info) = (Vec::new(), Vec::new(), None);
    for _ in 0..a.rounds {
        for (i, mode) in modes.iter().enumerate() {
            let (o, t) = bench_model::measure(&model_args(&a, mode, a.no_pytorch || i > 0)?, &cfg, "train")?;
            merge(&mut ours, mode, o);
            if let Some((t, v)) = t {
                merge(&mut torch, "PyTorch + MONAI", t);
                torch_info = Some(v);
            }
        }
    }
    let report = render(&a, &ours, torch.first().zip(torch_info.as_ref()));
    println!("{report}");
    let dir = if a.write_docs { crate::repo_root().join("docs/bench") } else { crate::repo_root().join("target/bench") };
    std::fs::create_dir_all(&dir)?;
    plot(&dir, &ours)?;
    eprintln!("plot: {}", dir.join("train_memory.png").display());
    if a.write_docs {
        crate::docs::replace_section("train-memory", &report)?;
    }
    Ok(())
}

/// f32 weights, gradients and AdamW's two moments, in GB (0 without rows).
fn floor_gb(ours: &[Row]) -> f64 {
    ours.first().map_or(0.0, |r| 4.0 * r.param_bytes as f64 / 1e9)
}

fn median(v: &[f64]) -> f64 {
    bench_model::stats(v).1
}

fn render(a: &Args, ours: &[Row], torch: Option<(&Row, &serde_json::Value)>) -> String {
    let mut s = format!(
        "Command: `cargo xtask bench train-memory --config {} --size {} --modes {} --repeats {} --rounds {}{}` (forward + DiceCE + \
         block-wise backward + AdamW, batch 1, f32; each round: PyTorch's step in one process, then ours in one process per mode; \
         step time = median over all timed steps, peaks = the largest of the rounds)  \nMachine: {}  \nPyTorch: {}\n\n",
        a.config,
        a.size,
        a.modes,
        a.repeats,
        a.rounds,
        if a.write_docs { " --write-docs" } else { "" },
        crate::bench_ops::machine(),
        torch.map_or("skipped".to_string(), |t| format!("torch {}, MONAI {}, {} threads, `benches/model_pytorch.py`", t.1["torch"], t.1["monai"], t.1["threads"]))
    );
    let floor = floor_gb(ours);
    let (t_step, t_rss) = torch.map_or((None, None), |t| (Some(median(&t.0.steps)), Some(t.0.peak_rss_gb)));
    let ratio = |x: f64, t: Option<f64>| t.map_or("-".to_string(), |t| format!("{:.2}", x / t));
    s += "| checkpointing | step s (median) | vs PyTorch | recompute cost vs none | peak RSS GB | vs PyTorch | peak live GB | live above the floor GB |\n";
    s += "|---|---:|---:|---:|---:|---:|---:|---:|\n";
    if let Some((t, _)) = torch {
        s += &format!("| PyTorch + MONAI (none) | {:.3} | 1.00 | | {:.2} | 1.00 | | |\n", median(&t.steps), t.peak_rss_gb);
    }
    let none = ours.iter().find(|r| r.mode == "none").map(|r| median(&r.steps));
    for r in ours {
        let m = median(&r.steps);
        s += &format!(
            "| {} | {m:.3} | {} | {} | {:.2} | {} | {:.2} | {:.2} |\n",
            r.mode,
            ratio(m, t_step),
            none.map_or("-".to_string(), |n| format!("{:+.0}%", 100.0 * (m / n - 1.0))),
            r.peak_rss_gb,
            ratio(r.peak_rss_gb, t_rss),
            r.peak_live_gb,
            r.peak_live_gb - floor
        );
    }
    s += &format!(
        "\nThe floor: f32 weights, gradients and AdamW's two moments, 4 x {:.3} GB = {floor:.2} GB, held through the whole step. \
         Peak RSS is the whole process (PyTorch's includes the Python and torch runtime); peak live is what our program \
         holds at its highest (the allocator keeps some freed pages, hence RSS above it). Live bytes through one step \
         (sampled every millisecond):\n\n![live bytes through one training step](bench/train_memory.svg)\n",
        floor / 4.0
    );
    s += &phase_table(ours);
    s
}

/// The most live bytes in each part of a step, one column per mode, each column's largest in bold: where
/// the peak sits.
fn phase_table(ours: &[Row]) -> String {
    let Some(first) = ours.iter().find(|r| !r.phases.is_empty()) else { return String::new() };
    let mut s = String::from("\nWhere the peak sits: the most live GB in each part of one step (`unetr_ops::profile::memory_phase`; \
         a segment's backward includes its recomputed forward), each mode's largest in bold.\n\n| part of the step |");
    for r in ours {
        s += &format!(" {} |", r.mode);
    }
    s += &format!("\n|---|{}\n", "---:|".repeat(ours.len()));
    for (i, (name, _)) in first.phases.iter().enumerate() {
        s += &format!("| {name} |");
        for r in ours {
            let top = r.phases.iter().map(|p| p.1).fold(0.0, f64::max);
            s += &match r.phases.get(i).filter(|p| &p.0 == name) {
                Some(&(_, gb)) if gb == top => format!(" **{gb:.2}** |"),
                Some(&(_, gb)) => format!(" {gb:.2} |"),
                None => " - |".to_string(),
            };
        }
        s += "\n";
    }
    s
}

fn plot(dir: &std::path::Path, ours: &[Row]) -> Result<()> {
    let mut series: Vec<Series> = ours
        .iter()
        .enumerate()
        .map(|(i, r)| Series {
            name: format!("checkpointing = {}", r.mode),
            points: r.timeline.iter().map(|&(ms, b)| (ms / 1e3, b / 1e9)).collect(),
            color: class_color(i + 1),
        })
        .collect();
    if !ours.is_empty() {
        let end = ours.iter().flat_map(|r| r.timeline.last()).map(|p| p.0 / 1e3).fold(0.0, f64::max);
        let floor = floor_gb(ours);
        series.push(Series { name: "weights + gradients + AdamW moments".into(), points: vec![(0.0, floor), (end, floor)], color: class_color(0) });
    }
    let top = ours.iter().map(|r| r.peak_live_gb).fold(0.0, f64::max);
    line_chart(
        &dir.join("train_memory.png"),
        Some(&dir.join("train_memory.svg")),
        &Chart { title: "Live heap through one training step", x_label: "time in the step (s)", y_label: "live bytes (GB)", y_range: Some((0.0, top * 1.1)), log_y: false, series: &series },
    )
    .map_err(|e| anyhow::anyhow!("writing the plot: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mode: &str, phases: &[(&str, f64)]) -> Row {
        Row {
            mode: mode.into(),
            steps: vec![1.0],
            peak_rss_gb: 0.0,
            peak_live_gb: 0.0,
            timeline: Vec::new(),
            phases: phases.iter().map(|&(n, g)| (n.to_string(), g)).collect(),
            param_bytes: 0,
        }
    }

    #[test]
    fn the_phase_table_marks_each_modes_peak() {
        let t = phase_table(&[row("none", &[("loss", 2.3), ("vit backward", 1.6)]), row("all", &[("loss", 1.5), ("vit backward", 1.61)])]);
        assert!(t.contains("| part of the step | none | all |"), "{t}");
        assert!(t.contains("| loss | **2.30** | 1.50 |"), "{t}");
        assert!(t.contains("| vit backward | 1.60 | **1.61** |"), "{t}");
        assert!(phase_table(&[row("none", &[])]).is_empty());
    }
}
