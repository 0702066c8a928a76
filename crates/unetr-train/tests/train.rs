//! Losses and sliding-window inference against MONAI (scripts/gen_train_fixtures.py), the schedule,
//! gradient clipping, checkpoint resume determinism, and a tiny end-to-end train + infer + eval.

use candle_core::{Device, Tensor, Var};
use std::path::Path;
use unetr_infer::inferers::{sliding_window_inference, starts, Blend, SlidingWindow};
use unetr_train::losses::{dice_ce_loss, dice_loss, DiceCeOptions};
use unetr_train::optim::warmup_cosine;
use unetr_train::{train, RunMode};

mod common;
use common::tiny;

fn fixture(name: &str) -> (std::collections::HashMap<String, Tensor>, serde_json::Value) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let bytes = std::fs::read(&p).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let v = serde_json::from_str(meta.values().next().unwrap()).unwrap();
    (candle_core::safetensors::load(&p, &Device::Cpu).unwrap(), v)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn dice_ce_matches_monai_values_and_gradients() {
    let (t, combos) = fixture("losses.safetensors");
    for (i, c) in combos.as_array().unwrap().iter().enumerate() {
        let o: DiceCeOptions = serde_json::from_value(c.clone()).unwrap();
        let x = Var::from_tensor(&t["logits"]).unwrap();
        let l = dice_ce_loss(x.as_tensor(), &t["labels"], &o).unwrap();
        let want = t[&format!("dicece.{i}")].to_vec1::<f32>().unwrap()[0];
        assert!((l.to_scalar::<f32>().unwrap() - want).abs() < 1e-5, "combo {i}: {} vs {want}", l.to_scalar::<f32>().unwrap());
        let d = dice_loss(&t["logits"], &t["labels"], &o).unwrap().to_scalar::<f32>().unwrap();
        assert!((d - t[&format!("dice.{i}")].to_vec1::<f32>().unwrap()[0]).abs() < 1e-5, "combo {i}: dice");
        let g = l.backward().unwrap();
        let e = max_abs(g.get(x.as_tensor()).unwrap(), &t[&format!("grad.{i}")]);
        assert!(e < 1e-6, "combo {i}: gradient max-abs {e}");
    }
}

#[test]
fn sliding_window_matches_monai() {
    let (t, cases) = fixture("sliding_window.safetensors");
    for (i, c) in cases.as_array().unwrap().iter().enumerate() {
        let roi: Vec<usize> = serde_json::from_value(c["roi"].clone()).unwrap();
        let sw = SlidingWindow {
            roi: [roi[0], roi[1], roi[2]],
            overlap: c["overlap"].as_f64().unwrap(),
            sw_batch: c["sw_batch"].as_u64().unwrap() as usize,
            blend: if c["mode"] == "gaussian" { Blend::Gaussian } else { Blend::Constant },
        };
        let y = sliding_window_inference(&t[&format!("x.{i}")], &sw, |b| {
            let m = b.mean_keepdim(2)?.mean_keepdim(3)?.mean_keepdim(4)?;
            Tensor::cat(&[&b.broadcast_sub(&m)?, &b.sqr()?.broadcast_add(&m)?], 1)
        })
        .unwrap();
        let e = max_abs(&y, &t[&format!("y.{i}")]);
        assert!(e < 1e-5, "case {i}: max-abs {e}");
    }
    assert_eq!(starts(10, 4, 0.5), vec![0, 2, 4, 6]);
    assert_eq!(starts(3, 4, 0.5), vec![0]);
}

#[test]
fn warmup_cosine_schedule() {
    assert!((warmup_cosine(0, 10, 100, 1.0, 0.0) - 0.1).abs() < 1e-12);
    assert!((warmup_cosine(9, 10, 100, 1.0, 0.0) - 1.0).abs() < 1e-12);
    assert!((warmup_cosine(10, 10, 100, 1.0, 0.0) - 1.0).abs() < 1e-12);
    assert!((warmup_cosine(55, 10, 100, 1.0, 0.0) - 0.5).abs() < 1e-12);
    assert!(warmup_cosine(100, 10, 100, 1.0, 0.1) - 0.1 < 1e-12);
}

#[test]
fn resume_continues_exactly_and_outputs_are_written() {
    let base = std::env::temp_dir().join(format!("unetr-train-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    // Uninterrupted 6 steps.
    let a = train(&tiny(&base.join("a"), 6), RunMode::Fresh).unwrap();
    // 3 steps, then resume to 6 (the checkpoint is written at step 3, a validation step).
    train(&tiny(&base.join("b"), 3), RunMode::Fresh).unwrap();
    let b = train(&tiny(&base.join("b"), 6), RunMode::Resume).unwrap();
    assert_eq!(a.losses[3..], b.losses[..], "resumed losses must equal the uninterrupted run's");
    // Outputs: checkpoint, best model, log, predictions on the original grids.
    for f in ["checkpoint/model.safetensors", "checkpoint/optimizer.safetensors", "checkpoint/state.json", "best/model.safetensors", "log.jsonl", "config.toml", "plots/loss.png", "plots/val_dice.png", "plots/overlay_0.png"] {
        assert!(base.join("a").join(f).is_file(), "{f}");
    }
    let preds: Vec<_> = std::fs::read_dir(base.join("a/predictions")).unwrap().collect();
    assert_eq!(preds.len(), 1);
    let p = preds[0].as_ref().unwrap().path();
    let v = unetr_data::read_nifti(&p, &Default::default()).unwrap();
    let img = unetr_data::read_nifti(&base.join("a/phantom/imagesTr").join(p.file_name().unwrap()), &Default::default()).unwrap();
    assert_eq!(v.header.dims, img.header.dims);
    assert_eq!(v.header.affine, img.header.affine);
    assert!(a.final_dice.is_finite());
}

#[test]
fn dice_and_hd95_match_monai() {
    let (t, _) = fixture("metrics.safetensors");
    let v = |k: &str| t[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (pred, lab) = (v("pred"), v("label"));
    let d = unetr_infer::metrics::dice_per_class(&pred, &lab, 3);
    for (c, want) in v("dice").iter().enumerate() {
        assert!((d[c].unwrap() - *want as f64).abs() < 1e-6, "dice class {c}: {:?} vs {want}", d[c]);
    }
    for (c, want) in v("hd95").iter().enumerate() {
        let h = unetr_infer::metrics::hd95(&pred, &lab, c, [12, 10, 8], [1.0; 3]).unwrap();
        assert!((h - *want as f64).abs() < 1e-4, "hd95 class {c}: {h} vs {want}");
    }
}

/// Mixed precision end to end: bf16 and f16 runs (f32 master weights; f16 with loss scaling) train, their
/// losses track the f32 run's, and an f16 run resumes with its loss scale.
#[test]
fn mixed_precision_training_tracks_f32() {
    use unetr_train::amp::Precision;
    let base = std::env::temp_dir().join(format!("unetr-amp-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let run = |name: &str, p: Precision, steps: u64, resume: bool| {
        let mut c = tiny(&base.join(name), steps);
        c.optim.precision = p;
        train(&c, if resume { RunMode::Resume } else { RunMode::Fresh }).unwrap()
    };
    let f32_run = run("f32", Precision::F32, 6, false);
    let mut f16_losses = vec![];
    for p in [Precision::Bf16, Precision::F16] {
        let r = run(&format!("{p:?}"), p, 6, false);
        if p == Precision::F16 {
            f16_losses = r.losses.clone();
        }
        assert!(r.losses.iter().all(|l| l.is_finite()), "{p:?}: {:?}", r.losses);
        for (a, b) in r.losses.iter().zip(&f32_run.losses) {
            assert!((a - b).abs() < 0.05 * b.abs().max(0.1), "{p:?} losses {:?} vs f32 {:?}", r.losses, f32_run.losses);
        }
    }
    let state = std::fs::read_to_string(base.join("F16/checkpoint/state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["grad_scaler"]["scale"], 65536.0, "{state}");
    // f16 resumed from its step-3 checkpoint continues as the uninterrupted run.
    run("F16b", Precision::F16, 3, false);
    let b = run("F16b", Precision::F16, 6, true);
    assert_eq!(f16_losses[3..], b.losses[..]);
    let _ = std::fs::remove_dir_all(&base);
}

/// AdamW against torch.optim.AdamW: 4 steps with non-default hyper-parameters, a tensor without a gradient
/// in one step (left untouched, as PyTorch skips it), within f32 rounding.
#[test]
fn adamw_matches_pytorch() {
    use unetr_train::optim::{AdamW, AdamWConfig};
    let (t, meta) = fixture("adamw.safetensors");
    let c: AdamWConfig = serde_json::from_value(meta).unwrap();
    let vars: Vec<(String, Var)> = ["a", "b"].iter().map(|k| (k.to_string(), Var::from_tensor(&t[&format!("w0.{k}")]).unwrap())).collect();
    let mut opt = AdamW::new(vars.clone(), c);
    for i in 0..4 {
        // Gradients via a loss whose gradient is the fixture's: sum(w * g).
        let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
        for (k, v) in &vars {
            if let Some(g) = t.get(&format!("g{i}.{k}")) {
                loss = (loss + (v.as_tensor() * g).unwrap().sum_all().unwrap()).unwrap();
            }
        }
        opt.step(&loss.backward().unwrap()).unwrap();
        for (k, v) in &vars {
            let want = &t[&format!("w{}.{k}", i + 1)];
            let err = (v.as_tensor() - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(err < 1e-6, "step {} {k}: max error {err}", i + 1);
        }
    }
}

/// The fused CPU DiceCE (value and gradient) against its candle-op composition: several option sets, f32 and
/// f64, a batch of 2, labels outside 0..K (counted as no class, as one_hot does) and a class absent from a sample.
#[test]
fn fused_dice_ce_matches_composition() {
    use unetr_train::losses::dice_ce_composed;
    for dt in [candle_core::DType::F32, candle_core::DType::F64] {
        let logits = (Tensor::randn(0f32, 2.0, (2, 5, 6, 7, 4), &Device::Cpu).unwrap()).to_dtype(dt).unwrap();
        let mut lab: Vec<f32> = (0..2 * 6 * 7 * 4).map(|i| ((i * 7 + i / 5) % 5) as f32).collect();
        lab[3] = 7.0; // out of range
        lab[10] = -1.0;
        lab.iter_mut().skip(6 * 7 * 4).filter(|v| **v == 3.0).for_each(|v| *v = 0.0); // class 3 absent in sample 1
        let labels = Tensor::from_vec(lab, (2, 1, 6, 7, 4), &Device::Cpu).unwrap().to_dtype(dt).unwrap();
        for o in [
            DiceCeOptions::default(),
            DiceCeOptions::research(),
            DiceCeOptions { include_background: false, lambda_dice: 0.3, lambda_ce: 1.7, ..DiceCeOptions::research() },
        ] {
            let x = Var::from_tensor(&logits).unwrap();
            let (a, b) = (dice_ce_loss(x.as_tensor(), &labels, &o).unwrap(), dice_ce_composed(x.as_tensor(), &labels, &o).unwrap());
            let f = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap().to_scalar::<f64>().unwrap();
            assert!((f(&a) - f(&b)).abs() < 1e-5, "{dt:?} {o:?}: {} vs {}", f(&a), f(&b));
            let (ga, gb) = ((&a * 3.0).unwrap().backward().unwrap(), (&b * 3.0).unwrap().backward().unwrap());
            let (ga, gb) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
            let e = (ga - gb).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert!(f(&e) < 1e-6, "{dt:?} {o:?}: gradient max-abs {}", f(&e));
        }
    }
}

/// The trainer's device: "cpu" trains; unknown names and (in a build without the `cuda` feature) CUDA
/// names fail before anything is written, saying why.
#[test]
fn device_names_are_checked() {
    use unetr_infer::{parse_device, InferError};
    use unetr_train::TrainError;
    assert!(parse_device("cpu").unwrap().is_cpu());
    for bad in ["tpu", "cuda:x", "cuda:", "gpu0"] {
        let e = parse_device(bad).unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains("cuda:N"), "{bad}: {e}");
    }
    if !cfg!(feature = "cuda") {
        let dir = std::env::temp_dir().join(format!("unetr-device-test-{}", std::process::id()));
        let mut cfg = tiny(&dir, 1);
        cfg.device = "cuda:1".into();
        let e = train(&cfg, RunMode::Fresh).unwrap_err();
        assert!(matches!(e, TrainError::Infer(InferError::Config(_))) && e.to_string().contains("--features cuda"), "{e}");
        assert!(!dir.exists(), "nothing is written for a bad device");
    }
}

/// Training learns: 100 steps of a small UNETR on 8 phantoms (about 10 s here) lower the loss to under
/// 0.6x its first value (mean of the last 10 steps; 0.52x measured) and segment the two large structures
/// (liver Dice >= 0.75, spine >= 0.6; 0.87 and 0.79 measured), best mean foreground Dice >= 0.35 (0.51).
/// An optimiser that did nothing would fail every one of these.
#[test]
fn training_learns_the_phantoms() {
    let dir = std::env::temp_dir().join(format!("unetr-learn-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = learning_config();
    c.output.dir = dir.clone();
    let s = train(&c, RunMode::Fresh).unwrap();
    let first = s.losses[0];
    let last = s.losses[s.losses.len() - 10..].iter().sum::<f64>() / 10.0;
    assert!(last < 0.6 * first, "loss {first} -> {last} (mean of the last 10 steps)");
    let d = |name: &str| s.per_class[s.class_names.iter().position(|n| n == name).unwrap()].unwrap();
    assert!(d("liver") >= 0.75 && d("spine") >= 0.6, "per class {:?}", s.per_class);
    assert!(s.best_dice >= 0.35, "best mean Dice {}", s.best_dice);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each decoder of the ablation (SETR's NUP, PUP, MLA) and UNETR's at patch 32 trains: 40 steps lower the
/// loss to under 0.85x its first value (mean of the last 5 steps).
#[test]
fn every_ablation_decoder_learns() {
    for (decoder, patch) in [("nup", 16), ("pup", 16), ("mla", 16), ("unetr", 32)] {
        let dir = std::env::temp_dir().join(format!("unetr-learn-{decoder}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = learning_config();
        c.model.decoder = serde_json::from_value(serde_json::json!(decoder)).unwrap();
        c.model.patch_size = [patch; 3];
        if patch == 32 {
            (c.transforms.roi, c.data.phantom_size) = ([32; 3], [32; 3]);
        }
        c.optim.steps = 40;
        c.validation.every = 40;
        c.output.dir = dir.clone();
        let s = train(&c, RunMode::Fresh).unwrap();
        let last = s.losses[s.losses.len() - 5..].iter().sum::<f64>() / 5.0;
        assert!(last < 0.85 * s.losses[0], "{decoder} patch {patch}: loss {} -> {last}", s.losses[0]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The small phantom run of the learning tests.
fn learning_config() -> unetr_train::TrainConfig {
    toml::from_str(
        r#"
        [data]
        phantom_cases = 8
        phantom_size = [32, 32, 16]
        [transforms]
        spacing = false
        roi = [32, 32, 16]
        num_samples = 1
        crop_foreground = false
        flip_prob = 0.0
        rotate90_prob = 0.0
        [model]
        feature_size = 4
        hidden_size = 32
        mlp_dim = 32
        num_heads = 2
        num_layers = 4
        [optim]
        steps = 100
        warmup_steps = 5
        batch_size = 2
        grad_clip = 1.0
        [optim.adamw]
        lr = 3e-3
        [validation]
        every = 50
        sw_batch = 2
        [output]
        log_every = 1000
        progress = false
        "#,
    )
    .unwrap()
}

/// HD95 against MONAI's HausdorffDistanceMetric(percentile=95) with voxel spacing (anisotropic cases, a
/// class only in the prediction, one only in the label, one in neither: MONAI's NaN is our None).
#[test]
fn hd95_matches_monai_with_spacing_and_empty_masks() {
    let (t, cases) = fixture("hd95.safetensors");
    for (i, c) in cases.as_array().unwrap().iter().enumerate() {
        let v = |k: &str| t[&format!("{k}.{i}")].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (pred, lab, want) = (v("pred"), v("label"), v("hd95"));
        let shape: Vec<usize> = serde_json::from_value(c["shape"].clone()).unwrap();
        let sp: Vec<f64> = serde_json::from_value(c["spacing"].clone()).unwrap();
        for (k, w) in want.iter().enumerate() {
            let got = unetr_infer::metrics::hd95(&pred, &lab, k, [shape[0], shape[1], shape[2]], [sp[0], sp[1], sp[2]]);
            match got {
                None => assert!(!w.is_finite(), "case {i} class {k}: None, MONAI {w}"),
                Some(h) => assert!((h - *w as f64).abs() < 1e-4 * (1.0 + h), "case {i} class {k}: {h} vs MONAI {w}"),
            }
        }
    }
}

/// The brain-tumour preset (data/presets/msd_brats.toml: 4 channels, regions TC/WT/ET with one sigmoid
/// each, Dice loss) on its stand-in, at 64^3 and 2 mm instead of 128^3 and 1 mm to stay short: 80 steps
/// reach a whole-tumour Dice of at least 0.75 (0.90 measured) and a mean region Dice of at least 0.3 (0.48).
#[test]
fn the_brain_tumour_preset_learns_its_regions() {
    let preset = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/presets/msd_brats.toml")).unwrap();
    let text = preset.replace("128, 128, 128", "64, 64, 64").replace("pixdim = [1.0, 1.0, 1.0]", "pixdim = [2.0, 2.0, 2.0]");
    let dir = std::env::temp_dir().join(format!("unetr-brats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let set: Vec<String> = [
        "data.phantom_cases=8",
        "data.phantom_size=[64,64,52]",
        "model.feature_size=4",
        "model.hidden_size=32",
        "model.mlp_dim=32",
        "model.num_heads=2",
        "model.num_layers=4",
        "optim.steps=80",
        "optim.warmup_steps=5",
        "optim.batch_size=2",
        "optim.adamw.lr=3e-3",
        "validation.every=80",
        "output.progress=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut c = unetr_train::TrainConfig::from_text(&text, Path::new("msd_brats.toml"), Path::new("."), &set).unwrap();
    c.output.dir = dir.clone();
    let s = train(&c, RunMode::Fresh).unwrap();
    assert_eq!(s.class_names, ["TC", "WT", "ET"]);
    assert!(!s.first_is_background);
    let wt = s.per_class[1].unwrap();
    assert!(wt >= 0.75 && s.final_dice >= 0.3, "regions {:?}, mean {}", s.per_class, s.final_dice);
    // Predictions are written back in MSD's numbering.
    let pred = std::fs::read_dir(dir.join("predictions")).unwrap().next().unwrap().unwrap().path();
    let v = unetr_data::read_nifti(&pred, &Default::default()).unwrap();
    assert!(v.data.iter().all(|&x| [0.0, 1.0, 2.0, 3.0].contains(&x)) && v.data.iter().any(|&x| x > 0.0), "label values");
    let _ = std::fs::remove_dir_all(&dir);
}
