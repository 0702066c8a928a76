//! `cargo xtask bench loader`: training-data throughput of our CacheDataset + prefetching loader against
//! MONAI's CacheDataset + DataLoader on the same phantom files with the research recipe's transforms.

use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Instant;
use unetr_data::loader::{CacheDataset, Loader, LoaderConfig};
use unetr_data::phantom::{write_dataset, PhantomConfig};
use unetr_data::{Datalist, ReadOptions};
use unetr_data::TransformConfig;

#[derive(clap::Args)]
pub struct Args {
    /// Phantom volumes to generate (voxels per axis set by --size).
    #[arg(long, default_value_t = 8)]
    cases: usize,
    /// Phantom size (voxels along x, y, z at 2 x 2 x 2.5 mm; resampled to 1.5 x 1.5 x 2 mm).
    #[arg(long, default_value = "128,128,80", value_delimiter = ',', num_args = 3)]
    size: Vec<usize>,
    /// Batches timed (1 volume x 4 crops of 96^3 each).
    #[arg(long, default_value_t = 30)]
    batches: usize,
    /// MONAI's num_workers (ours uses the rayon pool and one prefetch thread).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[arg(long)]
    no_pytorch: bool,
    /// Write the table into docs/benchmarks.md.
    #[arg(long)]
    write_docs: bool,
}

pub fn run(a: Args) -> Result<()> {
    let dir = crate::repo_root().join("runs/bench-loader");
    let size = [a.size[0], a.size[1], a.size[2]];
    let json = dir.join("dataset.json");
    let stamp = dir.join("params.txt");
    let params = format!("{} {:?}", a.cases, size);
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(params.as_str()) {
        let _ = std::fs::remove_dir_all(&dir);
        write_dataset(&PhantomConfig { cases: a.cases + 1, validation: 1, test: 0, size, ..Default::default() }, &dir)?;
        std::fs::write(&stamp, &params)?;
    }
    let dl = Datalist::from_json(&json, Default::default())?;
    let t = TransformConfig::default(); // the research recipe: RAS, 1.5x1.5x2 mm, CT window, foreground crop, 4 x 96^3, flips, rot90, intensity
    let compose = Arc::new(t.compose()?);
    let t0 = Instant::now();
    let ds = Arc::new(CacheDataset::new(dl.training.clone(), compose, ReadOptions::default(), usize::MAX)?);
    let cache_s = t0.elapsed().as_secs_f64();
    let cached_mb = ds.cache_stats().1 as f64 / 1e6;
    let mut loader = Loader::new(ds, LoaderConfig { batch_size: 1, seed: 0, prefetch: 2, shard: Default::default() }, 0);
    let first = loader.next().context("loader ended")??;
    let t0 = Instant::now();
    let mut crops = 0;
    for _ in 0..a.batches {
        crops += loader.next().context("loader ended")??.n;
    }
    let dt = t0.elapsed().as_secs_f64();
    let ours = (cache_s, a.batches as f64 / dt, crops as f64 / dt);
    eprintln!("ours: cache {cache_s:.2} s ({cached_mb:.0} MB), {:.2} batches/s, {:.2} crops/s, crops {:?}", ours.1, ours.2, first.dims);
    let monai: Option<(f64, f64, f64)> = if a.no_pytorch {
        None
    } else {
        match crate::python::find_torch() {
            Err(e) => {
                eprintln!("note: MONAI side skipped: {e}");
                None
            }
            Ok(py) => {
                let script = crate::repo_root().join("benches/loader_monai.py");
                let out = crate::python::run_script(&py, &script, &[json.to_str().unwrap(), &a.batches.to_string(), &a.workers.to_string()])?;
                let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("{}")).context("parsing MONAI's figures")?;
                Some((v["cache_s"].as_f64().unwrap_or(f64::NAN), v["batches_per_s"].as_f64().unwrap_or(f64::NAN), v["crops_per_s"].as_f64().unwrap_or(f64::NAN)))
            }
        }
    };
    let mut s = format!(
        "Command: `cargo xtask bench loader --write-docs` ({} training volumes, phantoms {:?} voxels at 2 x 2 x 2.5 mm; research transforms: RAS, \
         Spacing 1.5 x 1.5 x 2 mm, ScaleIntensityRange, CropForeground, RandCropByPosNegLabel 4 x 96^3, RandFlip x3, RandRotate90, \
         RandScale/ShiftIntensity; batch 1 volume = 4 crops; {} batches after one warm-up; consumer does no work)  \nMachine: {}  \nMONAI: {}\n\n",
        dl.training.len(),
        size,
        a.batches,
        crate::bench_ops::machine(),
        if monai.is_some() { format!("same run, `benches/loader_monai.py`, CacheDataset(cache_rate=1, num_workers={w}) + DataLoader(num_workers={w})", w = a.workers) } else { "skipped".into() }
    );
    s += "| | cache build s | batches/s | crops/s |\n|---|---:|---:|---:|\n";
    s += &format!("| ours (CacheDataset + Loader, rayon + 1 prefetch thread) | {:.2} | {:.2} | {:.2} |\n", ours.0, ours.1, ours.2);
    if let Some(m) = monai {
        s += &format!("| MONAI | {:.2} | {:.2} | {:.2} |\n", m.0, m.1, m.2);
        s += &format!("| ratio ours / MONAI | {:.2}x time | {:.2}x | {:.2}x |\n", ours.0 / m.0, ours.1 / m.1, ours.2 / m.2);
    }
    println!("{s}");
    if a.write_docs {
        crate::docs::replace_section("loader", &s)?;
    }
    Ok(())
}
