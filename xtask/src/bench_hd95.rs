//! `cargo xtask bench hd95`: HD95 per class on a whole-body-CT-sized volume (512 x 512 x 200 by default),
//! ours (`unetr_infer::metrics::hd95`) against MONAI's HausdorffDistanceMetric in the same run.

use anyhow::{Context, Result};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Volume size D,H,W.
    #[arg(long, default_value = "200,512,512", value_delimiter = ',', num_args = 3)]
    size: Vec<usize>,
    /// Foreground classes (ellipsoids; class 0 is the background and is not scored).
    #[arg(long, default_value_t = 3)]
    classes: usize,
    #[arg(long)]
    no_pytorch: bool,
    /// Write the table into docs/benchmarks.md.
    #[arg(long)]
    write_docs: bool,
}

/// A label volume of `classes` ellipsoids and a prediction with shifted, resized ones and speckle noise.
fn volumes(d: [usize; 3], classes: usize) -> (Vec<u8>, Vec<u8>) {
    let n = d.iter().product();
    let (mut lab, mut pred) = (vec![0u8; n], vec![0u8; n]);
    let mut s = 0x2545F4914F6CDD1Du64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    for c in 1..=classes {
        let centre = [0, 1, 2].map(|a| d[a] as f64 * (0.25 + 0.5 * rnd()));
        let radius = [0, 1, 2].map(|a| d[a] as f64 * (0.06 + 0.08 * rnd()));
        let shift = [0, 1, 2].map(|_| 3.0 * (rnd() - 0.5));
        let scale = 0.9 + 0.2 * rnd();
        for i in 0..d[0] {
            for j in 0..d[1] {
                for k in 0..d[2] {
                    let p = [i as f64, j as f64, k as f64];
                    let q = |sh: [f64; 3], sc: f64| (0..3).map(|a| ((p[a] - centre[a] - sh[a]) / (radius[a] * sc)).powi(2)).sum::<f64>() <= 1.0;
                    let idx = (i * d[1] + j) * d[2] + k;
                    if q([0.0; 3], 1.0) {
                        lab[idx] = c as u8;
                    }
                    if q(shift, scale) {
                        pred[idx] = c as u8;
                    }
                }
            }
        }
    }
    for v in pred.iter_mut() {
        if rnd() < 1e-4 {
            *v = 1;
        }
    }
    (pred, lab)
}

pub fn run(a: Args) -> Result<()> {
    let d = [a.size[0], a.size[1], a.size[2]];
    let spacing = [2.0, 0.8, 0.8];
    let (pred, lab) = volumes(d, a.classes);
    let (pf, lf): (Vec<f32>, Vec<f32>) = (pred.iter().map(|&v| v as f32).collect(), lab.iter().map(|&v| v as f32).collect());
    let t = Instant::now();
    let ours: Vec<Option<f64>> = (1..=a.classes).map(|c| unetr_infer::metrics::hd95(&pf, &lf, c, d, spacing)).collect();
    let ours_s = t.elapsed().as_secs_f64();
    eprintln!("ours: {ours_s:.2} s, HD95 {ours:?}");
    let monai = if a.no_pytorch {
        None
    } else {
        let py = crate::python::find_torch()?;
        let path = std::env::temp_dir().join(format!("unetr-hd95-{}.safetensors", std::process::id()));
        let dev = candle_core::Device::Cpu;
        let tensors = std::collections::HashMap::from([
            ("pred".to_string(), candle_core::Tensor::from_vec(pred, (d[0], d[1], d[2]), &dev)?),
            ("label".to_string(), candle_core::Tensor::from_vec(lab, (d[0], d[1], d[2]), &dev)?),
        ]);
        candle_core::safetensors::save(&tensors, &path)?;
        let out = crate::python::run_script(&py, &crate::repo_root().join("benches/hd95_monai.py"), &[path.to_str().unwrap(), &serde_json::to_string(&spacing)?]);
        let _ = std::fs::remove_file(&path);
        let v: serde_json::Value = serde_json::from_str(out?.lines().last().unwrap_or("{}")).context("parsing MONAI's timing")?;
        eprintln!("MONAI: {v}");
        Some(v)
    };
    let mut s = format!(
        "Command: `cargo xtask bench hd95{}` ({}x{}x{} voxels of {:?} mm, {} foreground classes, background not scored)  \nMachine: {}  \nMONAI: {}\n\n",
        if a.write_docs { " --write-docs" } else { "" },
        d[0],
        d[1],
        d[2],
        spacing,
        a.classes,
        crate::bench_ops::machine(),
        if monai.is_some() { "same run, `benches/hd95_monai.py` (compute_hausdorff_distance, percentile 95)" } else { "skipped" }
    );
    s += "| | ours | MONAI |\n|---|---:|---:|\n";
    let m_s = monai.as_ref().and_then(|m| m["seconds"].as_f64());
    s += &format!("| seconds (all classes) | {ours_s:.2} | {} |\n", m_s.map_or("-".into(), |v| format!("{v:.2}")));
    for c in 0..a.classes {
        let m = monai.as_ref().and_then(|m| m["hd95"][c].as_f64());
        s += &format!("| HD95 class {} (mm) | {} | {} |\n", c + 1, ours[c].map_or("-".into(), |v| format!("{v:.4}")), m.map_or("-".into(), |v| format!("{v:.4}")));
    }
    println!("{s}");
    if a.write_docs {
        crate::docs::replace_section("hd95", &s)?;
    }
    Ok(())
}
