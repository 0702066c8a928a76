//! A training process killed with SIGKILL at random moments (it checkpoints every step, so kills land in
//! the middle of checkpoint writes too) always leaves a loadable checkpoint, and resuming after the kills
//! reproduces the uninterrupted run's losses exactly.
//!
//! The test re-runs its own binary as the child (`child_training_run`, ignored when run directly).

use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use unetr_infer::checkpoint::recover_dir;
use unetr_train::checkpoint::TrainState;
use unetr_train::{train, RunMode, TrainConfig};

mod common;

const STEPS: u64 = 40;

/// The shared tiny run, checkpointing every step (so kills land inside checkpoint writes).
fn config(dir: &Path) -> TrainConfig {
    let mut c = common::tiny(dir, STEPS);
    c.data.phantom_cases = 4;
    c.optim.grad_clip = 0.0;
    c.validation.every = 1;
    c.validation.sw_batch = 1;
    c.output.log_every = 1000;
    c.output.progress = false;
    c
}

fn losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
#[ignore = "the child process of kill_9_leaves_a_loadable_checkpoint"]
fn child_training_run() {
    let dir = PathBuf::from(std::env::var("UNETR_KILL9_DIR").expect("run by kill_9_leaves_a_loadable_checkpoint"));
    let resume = dir.join("checkpoint").exists() || dir.join("checkpoint.new").exists() || dir.join("checkpoint.old").exists();
    // Killed before the first checkpoint: start over (the folder holds that attempt's logs).
    train(&config(&dir), if resume { RunMode::Resume } else { RunMode::Overwrite }).unwrap();
}

/// What a user would load after a crash: state, weights and optimiser, all present and parseable.
fn checkpoint_is_loadable(dir: &Path) -> Option<u64> {
    let ck = dir.join("checkpoint");
    recover_dir(&ck).unwrap();
    if !ck.exists() {
        return None; // killed before the first checkpoint
    }
    let st: TrainState = serde_json::from_str(&std::fs::read_to_string(ck.join("state.json")).expect("state.json")).expect("state.json parses");
    let w = safetensors::SafeTensors::deserialize(&std::fs::read(ck.join("model.safetensors")).unwrap()).map(|t| t.len()).expect("model.safetensors parses");
    let o = safetensors::SafeTensors::deserialize(&std::fs::read(ck.join("optimizer.safetensors")).unwrap()).map(|t| t.len()).expect("optimizer.safetensors parses");
    assert!(w > 0 && o > 0);
    Some(st.step)
}

#[test]
fn kill_9_leaves_a_loadable_checkpoint() {
    let base = std::env::temp_dir().join(format!("unetr-kill9-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    // The uninterrupted reference (phantoms generated once and shared through a copy of the folder).
    let reference = train(&config(&base.join("ref")), RunMode::Fresh).unwrap();
    let dir = base.join("killed");
    std::fs::create_dir_all(&dir).unwrap();
    let ph = base.join("ref/phantom");
    let dst = dir.join("phantom");
    std::fs::create_dir_all(dst.join("imagesTr")).unwrap();
    std::fs::create_dir_all(dst.join("labelsTr")).unwrap();
    for sub in ["", "imagesTr", "labelsTr"] {
        for e in std::fs::read_dir(ph.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, dst.join(sub).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let run = reference.seconds;
    let mut last = 0;
    let mut kills = 0;
    for _ in 0..12 {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_training_run", "--ignored", "--nocapture", "--test-threads=1"])
            .env("UNETR_KILL9_DIR", &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a random moment of the remaining run (startup included).
        let wait = Duration::from_secs_f64(rng.random_range(0.05..0.4) * run + 0.1);
        let t = Instant::now();
        let mut finished = false;
        while t.elapsed() < wait {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if !finished {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        if let Some(step) = checkpoint_is_loadable(&dir) {
            assert!(step >= last, "checkpoint went back from step {last} to {step}");
            last = step;
        }
        if finished {
            break;
        }
    }
    eprintln!("{kills} kill(s); last checkpoint before the final resume: step {last}");
    assert!(kills >= 1, "the child always finished before being killed");
    // Resume to the end: the same losses as the uninterrupted run, step by step.
    train(&config(&dir), if dir.join("checkpoint").exists() { RunMode::Resume } else { RunMode::Overwrite }).unwrap();
    let (a, b) = (losses(&base.join("ref")), losses(&dir));
    assert_eq!(a, b, "after {kills} kill(s) and resume, the log must equal the uninterrupted run's");
    let _ = std::fs::remove_dir_all(&base);
}
