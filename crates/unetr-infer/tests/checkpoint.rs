//! Crash recovery of checkpoint folders: every intermediate state a kill can leave `write_dir_atomic` in
//! is brought back to the last complete folder, and every load runs the recovery.

use std::path::{Path, PathBuf};
use unetr_infer::checkpoint::{recover_dir, write_dir_atomic, COMPLETE_MARKER};

fn base(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("unetr-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A folder holding version `v`, complete (with the marker) or cut short.
fn folder(p: &Path, v: &str, complete: bool) {
    std::fs::create_dir_all(p).unwrap();
    std::fs::write(p.join("v"), v).unwrap();
    if complete {
        std::fs::write(p.join(COMPLETE_MARKER), b"").unwrap();
    }
}

fn version(p: &Path) -> Option<String> {
    std::fs::read_to_string(p.join("v")).ok()
}

fn siblings_gone(dir: &Path) -> bool {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    !dir.with_file_name(format!("{name}.new")).exists() && !dir.with_file_name(format!("{name}.old")).exists()
}

#[test]
fn every_crash_state_recovers_to_the_last_complete_folder() {
    // (state, folders present: (suffix, version, complete), version expected after recovery)
    let cases: [(&str, &[(&str, &str, bool)], Option<&str>); 7] = [
        ("killed while writing .new", &[("", "1", true), (".new", "2", false)], Some("1")),
        ("killed after .new was complete", &[("", "1", true), (".new", "2", true)], Some("1")),
        ("killed between the two renames", &[(".old", "1", true), (".new", "2", true)], Some("2")),
        ("killed before .old was removed", &[("", "2", true), (".old", "1", true)], Some("2")),
        ("killed while removing .old", &[("", "2", true), (".old", "1", false)], Some("2")),
        ("killed during the first write", &[(".new", "1", false)], None),
        ("killed after restoring removed the folder", &[(".new", "2", true)], Some("2")),
    ];
    for (i, (state, present, want)) in cases.iter().enumerate() {
        let b = base(&format!("state{i}"));
        let dir = b.join("checkpoint");
        for (suffix, v, complete) in *present {
            folder(&b.join(format!("checkpoint{suffix}")), v, *complete);
        }
        recover_dir(&dir).unwrap();
        assert_eq!(version(&dir).as_deref(), *want, "{state}");
        assert!(siblings_gone(&dir), "{state}: leftovers remain");
        if want.is_some() {
            assert!(dir.join(COMPLETE_MARKER).is_file(), "{state}");
        }
        // Recovery is idempotent.
        recover_dir(&dir).unwrap();
        assert_eq!(version(&dir).as_deref(), *want, "{state}: second recovery");
        let _ = std::fs::remove_dir_all(&b);
    }
}

#[test]
fn a_failed_write_leaves_the_previous_folder() {
    let b = base("failed");
    let dir = b.join("best");
    write_dir_atomic(&dir, |d| {
        std::fs::write(d.join("v"), "1").unwrap();
        Ok(())
    })
    .unwrap();
    let e = write_dir_atomic(&dir, |d| {
        std::fs::write(d.join("v"), "2").unwrap();
        Err(unetr_infer::InferError::Config("disk full".into()))
    });
    assert!(e.is_err());
    recover_dir(&dir).unwrap();
    assert_eq!(version(&dir).as_deref(), Some("1"));
    assert!(siblings_gone(&dir));
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn opening_a_checkpoint_recovers_it_first() {
    let b = base("open");
    let dir = b.join("best");
    let old = b.join("best.old");
    // A real checkpoint folder, left as a kill between the two renames leaves it: only best.new exists.
    let cfg = unetr_model::UnetrConfig { feature_size: 2, hidden_size: 16, mlp_dim: 16, num_heads: 2, num_layers: 4, ..unetr_model::UnetrConfig::monai(1, 2, [16; 3]) };
    let w = unetr_model::UnetrWeights::init(&cfg, &candle_core::Device::Cpu).unwrap();
    let state = serde_json::json!({"step": 3});
    unetr_infer::checkpoint::save(&dir, &unetr_infer::checkpoint::Contents { weights: &w, model: &cfg, train_config: "", state: &state, optimizer: None }).unwrap();
    std::fs::rename(&dir, b.join("best.new")).unwrap();
    folder(&old, "stale", false);
    let ck = unetr_infer::Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.model, cfg);
    assert_eq!(ck.state::<serde_json::Value>().unwrap().unwrap()["step"], 3);
    assert!(siblings_gone(&dir));
    let e = unetr_infer::Checkpoint::open(&b.join("nothing")).unwrap_err().to_string();
    assert!(e.contains("nothing") && e.contains("no such checkpoint folder"), "{e}");
    let _ = std::fs::remove_dir_all(&b);
}
