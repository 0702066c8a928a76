//! Data-parallel training with the in-process group (ranks as threads): 2 ranks with one volume each give
//! the losses and weights of 1 rank with a batch of two (within float-summation tolerance), a 2-rank
//! checkpoint resumes exactly, and resuming with another world size is refused.

use std::path::Path;
use std::time::Duration;
use unetr_train::distributed::local::local_group;
use unetr_train::{train, train_with, RunMode, TrainConfig, TrainSummary};

mod common;

fn config(dir: &Path, steps: u64) -> TrainConfig {
    let mut c = common::tiny(dir, steps);
    c.optim.batch_size = 2;
    // AdamW divides by sqrt(v) + eps: with a tiny eps, gradients that differ in their last bits (the sums
    // run in another order) give updates that differ by up to lr wherever a gradient is near zero. A larger
    // eps keeps the update proportional to the gradient, so the weights compare within summation noise.
    c.optim.adamw.eps = 1e-2;
    c.validation.every = 2;
    c.output.progress = false;
    c
}

fn weights(dir: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(dir.join("checkpoint/model.safetensors"), &candle_core::Device::Cpu).unwrap()
}

/// Runs `world` ranks as threads; returns rank 0's summary (or the first error).
fn run_ranks(cfg: &TrainConfig, mode: RunMode, world: usize) -> Result<TrainSummary, String> {
    let group = local_group(world, Duration::from_secs(120));
    std::thread::scope(|s| {
        let hs: Vec<_> = group.iter().map(|c| s.spawn(move || train_with(cfg, mode, c))).collect();
        let rs: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let mut rs = rs.into_iter();
        let first = rs.next().unwrap();
        for r in rs {
            r.map_err(|e| e.to_string())?;
        }
        first.map_err(|e| e.to_string())
    })
}

#[test]
fn two_ranks_equal_one_rank_with_twice_the_batch_and_resume() {
    let base = std::env::temp_dir().join(format!("unetr-dp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let single = train(&config(&base.join("single"), 4), RunMode::Fresh).unwrap();
    let dp = run_ranks(&config(&base.join("dp"), 4), RunMode::Fresh, 2).unwrap();
    for (a, b) in single.losses.iter().zip(&dp.losses) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "losses: 1 rank {:?}, 2 ranks {:?}", single.losses, dp.losses);
    }
    let (wa, wb) = (weights(&base.join("single")), weights(&base.join("dp")));
    let mut worst = 0f32;
    for (k, a) in &wa {
        let d = (a - &wb[k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        worst = worst.max(d);
    }
    assert!(worst < 1e-5, "weights differ by up to {worst}");
    // Only rank 0 wrote: one log line per step.
    assert_eq!(std::fs::read_to_string(base.join("dp/log.jsonl")).unwrap().lines().count(), 4);
    // A 2-rank checkpoint resumes exactly; another world size is refused.
    run_ranks(&config(&base.join("resumed"), 2), RunMode::Fresh, 2).unwrap();
    let e = train(&config(&base.join("resumed"), 4), RunMode::Resume).unwrap_err().to_string();
    assert!(e.contains("world size") || e.contains("rank"), "{e}");
    let resumed = run_ranks(&config(&base.join("resumed"), 4), RunMode::Resume, 2).unwrap();
    assert_eq!(resumed.losses[..], dp.losses[2..], "resumed 2-rank losses");
    // A batch that does not split over the ranks is an error before any work.
    let mut odd = config(&base.join("odd"), 2);
    odd.optim.batch_size = 3;
    let e = run_ranks(&odd, RunMode::Fresh, 2).unwrap_err();
    assert!(e.contains("multiple of the world size"), "{e}");
    let _ = std::fs::remove_dir_all(&base);
}
