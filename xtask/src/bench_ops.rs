//! `cargo xtask bench ops`: every conv, transposed-conv and norm shape that UNETR (BTCV config,
//! feature_size 16, 96^3, batch 1) runs, forward and backward, ours and PyTorch's in the same run.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;
use unetr_ops::kernels::conv3d::{conv3d_bwd_input, conv3d_bwd_weight, conv3d_fwd, ConvGeom};
use unetr_ops::kernels::norm::{norm_bwd, norm_fwd, Groups};

#[derive(clap::Args)]
pub struct Args {
    /// Timed runs per measurement (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Skip the PyTorch side.
    #[arg(long)]
    no_pytorch: bool,
    /// Only cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Write the table into docs/benchmarks.md.
    #[arg(long)]
    write_docs: bool,
    /// Also write all figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Case {
    pub name: String,
    /// "conv", "convt", "in_lrelu" (instance norm + LeakyReLU 0.01) or "in".
    pub kind: String,
    pub ci: usize,
    pub co: usize,
    /// Spatial size of the input.
    pub size: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// How often UNETR runs this shape in one forward pass.
    pub count: usize,
}

fn conv(ci: usize, co: usize, size: usize, k: usize, count: usize) -> Case {
    let name = format!("conv{k} {ci}->{co} @{size}");
    Case { name, kind: "conv".into(), ci, co, size, kernel: k, stride: 1, padding: (k - 1) / 2, count }
}
fn convt(ci: usize, co: usize, size: usize, count: usize) -> Case {
    let name = format!("convT2 {ci}->{co} @{size}->{}", size * 2);
    Case { name, kind: "convt".into(), ci, co, size, kernel: 2, stride: 2, padding: 0, count }
}
fn norm(c: usize, size: usize, act: bool, count: usize) -> Case {
    let (kind, label) = if act { ("in_lrelu", "IN+LReLU") } else { ("in", "IN") };
    Case { name: format!("{label} {c} @{size}"), kind: kind.into(), ci: c, co: c, size, kernel: 1, stride: 1, padding: 0, count }
}

/// The shapes of MONAI's UNETR(1 -> 14, 96^3, feature_size 16), with their multiplicity.
pub fn unetr_cases() -> Vec<Case> {
    vec![
        Case { name: "patch k16s16 1->768 @96".into(), kind: "conv".into(), ci: 1, co: 768, size: 96, kernel: 16, stride: 16, padding: 0, count: 1 },
        conv(1, 16, 96, 3, 1),    // encoder1.conv1
        conv(16, 16, 96, 3, 2),   // encoder1.conv2, decoder2.conv2
        conv(32, 16, 96, 3, 1),   // decoder2.conv1
        conv(32, 32, 48, 3, 3),   // encoder2 res block, decoder3.conv2
        conv(64, 32, 48, 3, 1),   // decoder3.conv1
        conv(32, 32, 24, 3, 2),   // encoder2 res block at 24^3
        conv(64, 64, 24, 3, 3),   // encoder3 res block, decoder4.conv2
        conv(128, 64, 24, 3, 1),  // decoder4.conv1
        conv(256, 128, 12, 3, 1), // decoder5.conv1
        conv(128, 128, 12, 3, 1), // decoder5.conv2
        conv(1, 16, 96, 1, 1),    // encoder1.conv3
        conv(32, 16, 96, 1, 1),   // decoder2.conv3
        conv(64, 32, 48, 1, 1),   // decoder3.conv3
        conv(128, 64, 24, 1, 1),  // decoder4.conv3
        conv(256, 128, 12, 1, 1), // decoder5.conv3
        conv(16, 14, 96, 1, 1),   // out (1x1x1 head)
        convt(768, 32, 6, 1),     // encoder2.transp_conv_init
        convt(32, 32, 12, 1),
        convt(32, 32, 24, 1),
        convt(768, 64, 6, 1), // encoder3.transp_conv_init
        convt(64, 64, 12, 1),
        convt(768, 128, 6, 2), // encoder4, decoder5
        convt(128, 64, 12, 1), // decoder4
        convt(64, 32, 24, 1),  // decoder3
        convt(32, 16, 48, 1),  // decoder2
        norm(16, 96, true, 4),
        norm(16, 96, false, 4),
        norm(32, 48, true, 6),
        norm(32, 24, true, 4),
        norm(64, 24, true, 6),
        norm(128, 12, true, 2),
    ]
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default)]
pub struct Timing {
    pub fwd_ms: f64,
    pub bwd_ms: f64,
}

fn median_ms(repeats: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut t: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

fn rand(n: usize) -> Vec<f32> {
    let mut s = 0x9E3779B97F4A7C15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn time_ours(c: &Case, repeats: usize) -> Timing {
    let s = c.size;
    match c.kind.as_str() {
        "conv" | "convt" => {
            let transposed = c.kind == "convt";
            // A transposed conv is the input-adjoint of the conv from the large grid to the small one.
            let big = if transposed { s * c.stride } else { s };
            let (gci, gco) = if transposed { (c.co, c.ci) } else { (c.ci, c.co) };
            let out = ConvGeom::out_size([big; 3], [c.kernel; 3], [c.stride; 3], [c.padding; 3]).unwrap();
            let g = ConvGeom { n: 1, ci: gci, co: gco, input: [big; 3], kernel: [c.kernel; 3], stride: [c.stride; 3], padding: [c.padding; 3], output: out };
            let large = rand(gci * g.in_vol());
            let small = rand(gco * g.out_vol());
            let w = rand(gco * g.k());
            if transposed {
                // y = B_in(x, w); dx = F(gy, w), dw = B_w(gy, x)
                Timing {
                    fwd_ms: median_ms(repeats, || drop(conv3d_bwd_input(&small, &w, &g))),
                    bwd_ms: median_ms(repeats, || {
                        drop(conv3d_fwd(&large, &w, &g));
                        drop(conv3d_bwd_weight(&large, &small, &g));
                    }),
                }
            } else {
                Timing {
                    fwd_ms: median_ms(repeats, || drop(conv3d_fwd(&large, &w, &g))),
                    bwd_ms: median_ms(repeats, || {
                        drop(conv3d_bwd_input(&small, &w, &g));
                        drop(conv3d_bwd_weight(&large, &small, &g));
                    }),
                }
            }
        }
        kind => {
            let slope = (kind == "in_lrelu").then_some(0.01);
            let len = s * s * s;
            let gs = Groups { groups: c.ci, segs: 1, len };
            let x = rand(c.ci * len);
            let gy = rand(c.ci * len);
            Timing {
                fwd_ms: median_ms(repeats, || drop(norm_fwd(&x, &gs, 1e-5, slope, None))),
                bwd_ms: median_ms(repeats, || drop(norm_bwd(&x, &gy, &gs, 1e-5, slope))),
            }
        }
    }
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpu}, {} threads", rayon::current_num_threads())
}

pub fn run(args: Args) -> Result<()> {
    let cases: Vec<Case> = unetr_cases()
        .into_iter()
        .filter(|c| args.filter.as_ref().is_none_or(|f| c.name.contains(f.as_str())))
        .collect();
    let mut ours = BTreeMap::new();
    for c in &cases {
        let t = time_ours(c, args.repeats);
        eprintln!("ours   {:<28} fwd {:8.2} ms  bwd {:8.2} ms", c.name, t.fwd_ms, t.bwd_ms);
        ours.insert(c.name.clone(), t);
    }
    let torch: Option<BTreeMap<String, Timing>> = if args.no_pytorch {
        None
    } else {
        match crate::python::find_torch() {
            Err(e) => {
                eprintln!("note: PyTorch side skipped: {e}");
                None
            }
            Ok(py) => {
                let spec = std::env::temp_dir().join(format!("unetr-bench-ops-{}.json", std::process::id()));
                std::fs::write(&spec, serde_json::to_string(&cases)?)?;
                let script = crate::repo_root().join("benches/ops_pytorch.py");
                let reps = args.repeats.to_string();
                let out = crate::python::run_script(&py, &script, &[spec.to_str().unwrap(), &reps])?;
                let _ = std::fs::remove_file(&spec);
                Some(serde_json::from_str(out.lines().last().unwrap_or("{}")).context("parsing the PyTorch timings")?)
            }
        }
    };
    let table = render(&cases, &ours, torch.as_ref(), args.repeats);
    println!("{table}");
    if let Some(p) = &args.json {
        let j = serde_json::json!({ "machine": machine(), "ours": ours, "pytorch": torch });
        std::fs::write(p, serde_json::to_string_pretty(&j)?)?;
    }
    if args.write_docs {
        crate::docs::replace_section("ops", &table)?;
    }
    Ok(())
}

fn render(cases: &[Case], ours: &BTreeMap<String, Timing>, torch: Option<&BTreeMap<String, Timing>>, repeats: usize) -> String {
    let mut s = String::new();
    s += &format!(
        "Command: `cargo xtask bench ops --write-docs` (median of {repeats} runs after a warm-up, f32, batch 1)  \nMachine: {}  \nPyTorch: {}\n\n",
        machine(),
        if torch.is_some() { "same run, `benches/ops_pytorch.py`, torch.set_num_threads = ours" } else { "skipped" }
    );
    s += "| op | x/model | ours fwd ms | torch fwd ms | fwd ratio | ours bwd ms | torch bwd ms | bwd ratio |\n";
    s += "|---|---:|---:|---:|---:|---:|---:|---:|\n";
    let (mut of, mut ob, mut tf, mut tb) = (0.0, 0.0, 0.0, 0.0);
    let (mut wo, mut wt) = (0.0, 0.0);
    for c in cases {
        let o = ours[&c.name];
        let t = torch.and_then(|t| t.get(&c.name)).copied();
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let ratio = |a: f64, b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.2}", a / b));
        s += &format!(
            "| {} | {} | {:.2} | {} | {} | {:.2} | {} | {} |\n",
            c.name,
            c.count,
            o.fwd_ms,
            cell(t.map(|t| t.fwd_ms)),
            ratio(o.fwd_ms, t.map(|t| t.fwd_ms)),
            o.bwd_ms,
            cell(t.map(|t| t.bwd_ms)),
            ratio(o.bwd_ms, t.map(|t| t.bwd_ms)),
        );
        of += o.fwd_ms;
        ob += o.bwd_ms;
        wo += c.count as f64 * (o.fwd_ms + o.bwd_ms);
        if let Some(t) = t {
            tf += t.fwd_ms;
            tb += t.bwd_ms;
            wt += c.count as f64 * (t.fwd_ms + t.bwd_ms);
        }
    }
    let r = |a: f64, b: f64| if b > 0.0 { format!("{:.2}", a / b) } else { "-".into() };
    s += &format!("| **total (each shape once)** | | {of:.1} | {tf:.1} | {} | {ob:.1} | {tb:.1} | {} |\n", r(of, tf), r(ob, tb));
    s += &format!("| **total fwd+bwd weighted by x/model** | | | | | {wo:.1} | {wt:.1} | {} |\n", r(wo, wt));
    s
}
