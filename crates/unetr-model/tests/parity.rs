//! UNETR against MONAI on the committed fixtures (scripts/gen_model_fixtures.py): logits and every
//! intermediate within 1e-4, parameter gradients within 1e-3 relative L2, MONAI 0.7 / 1.6 checkpoints.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use unetr_model::*;

const CASES: [&str; 3] = [
    "tiny_conv_instance",
    "tiny_perceptron_batch",
    "tiny_basic_block",
];

/// The memory limit the tests load under (the command line's default).
const LIMIT: u64 = 8 << 30;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn case(name: &str) -> (UnetrConfig, UnetrWeights, HashMap<String, Tensor>) {
    let cfg = UnetrConfig::from_json(
        &std::fs::read_to_string(dir().join(format!("{name}.json"))).unwrap(),
    )
    .unwrap();
    let w = UnetrWeights::load(
        &cfg,
        &dir().join(format!("{name}.weights.safetensors")),
        &Device::Cpu,
        LIMIT,
    )
    .unwrap();
    let io =
        candle_core::safetensors::load(dir().join(format!("{name}.io.safetensors")), &Device::Cpu)
            .unwrap();
    (cfg, w, io)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The logits and at least 22 intermediates of `model` on the case's input, against MONAI's, within 1e-4.
fn assert_features_match(name: &str, model: &unetr_model::Unetr, io: &HashMap<String, Tensor>) {
    let (y, feats) = model.forward_features(&io["input"]).unwrap();
    let e = max_abs(&y, &io["output"]);
    assert!(e < 1e-4, "{name}: logits max-abs {e}");
    let mut checked = 0;
    for (k, t) in feats {
        if let Some(r) = io.get(&format!("feat.{k}")) {
            let e = max_abs(&t, r);
            assert!(e < 1e-4, "{name}: {k} max-abs {e}");
            checked += 1;
        }
    }
    assert!(checked >= 12 + 10, "{name}: only {checked} intermediates compared");
}

#[test]
fn logits_and_intermediates_match_monai() {
    for name in CASES {
        let (_, w, io) = case(name);
        assert_features_match(name, &w.model, &io);
    }
}

#[test]
fn parameter_gradients_match_monai() {
    let (_, w, io) = case("tiny_conv_instance");
    let y = w.model.forward_t(&io["input"], true).unwrap();
    let grads = (y * &io["proj"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let vars = w.varmap.data().lock().unwrap();
    let l2 = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
    };
    let mut rows = Vec::new();
    for (k, v) in vars.iter() {
        let r = &io[&format!("grad.{k}")];
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {k}"));
        rows.push((k.clone(), l2(&(g - r).unwrap()), l2(r)));
    }
    // Per tensor, relative to its own norm, floored at 5% of the median norm: a gradient that is zero
    // analytically (a 1x1x1 conv from one channel right before an instance norm is scale invariant)
    // holds only rounding noise in both frameworks.
    let mut norms: Vec<f32> = rows.iter().map(|r| r.2).collect();
    norms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let floor = 0.05 * norms[norms.len() / 2];
    for (k, err, norm) in &rows {
        assert!(
            err / norm.max(floor) < 1e-3,
            "{k}: relative L2 error {} (norm {norm})",
            err / norm.max(floor)
        );
    }
    let total_err: f32 = rows.iter().map(|r| r.1 * r.1).sum::<f32>().sqrt();
    let total: f32 = rows.iter().map(|r| r.2 * r.2).sum::<f32>().sqrt();
    assert!(
        total_err / total < 1e-4,
        "all parameters: relative L2 error {}",
        total_err / total
    );
    let n = rows.len();
    assert_eq!(
        n,
        io.keys().filter(|k| k.starts_with("grad.")).count(),
        "every MONAI parameter gradient checked"
    );
}

#[test]
fn monai_07_pth_checkpoint_loads() {
    let (cfg, reference, io) = case("tiny_conv_instance");
    let w = UnetrWeights::init(&cfg, &Device::Cpu).unwrap();
    let rep = w
        .load_from(&dir().join("tiny_conv_instance.monai07.pth"), LIMIT, |_| false)
        .unwrap();
    assert!(
        rep.ignored
            .iter()
            .any(|k| k == "vit.patch_embedding.cls_token"),
        "{:?}",
        rep.ignored
    );
    assert!(
        rep.ignored.iter().any(|k| k.contains("conv3")),
        "{:?}",
        rep.ignored
    );
    let a = w.model.forward_t(&io["input"], false).unwrap();
    let b = reference.model.forward_t(&io["input"], false).unwrap();
    assert_eq!(max_abs(&a, &b), 0.0);
}

#[test]
fn monai_16_unused_keys_are_ignored() {
    let (cfg, _, _) = case("tiny_conv_instance");
    let w = UnetrWeights::init(&cfg, &Device::Cpu).unwrap();
    let rep = w
        .load_from(&dir().join("tiny_conv_instance.weights.safetensors"), LIMIT, |_| false,
        )
        .unwrap();
    assert!(
        rep.ignored.iter().any(|k| k.contains("norm_cross_attn")),
        "{:?}",
        rep.ignored
    );
}

#[test]
fn save_round_trip_keeps_outputs_and_names() {
    for name in CASES {
        let (cfg, w, io) = case(name);
        let tmp = std::env::temp_dir().join(format!(
            "unetr-rt-{name}-{}.safetensors",
            std::process::id()
        ));
        w.save(&tmp).unwrap();
        let saved = candle_core::safetensors::load(&tmp, &Device::Cpu).unwrap();
        let original = candle_core::safetensors::load(
            dir().join(format!("{name}.weights.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        for k in original.keys().filter(|k| !k.contains("cross_attn")) {
            assert!(
                saved.contains_key(k),
                "{name}: saved file lacks MONAI key {k}"
            );
        }
        let w2 = UnetrWeights::load(&cfg, &tmp, &Device::Cpu, LIMIT).unwrap();
        let (a, b) = (
            w.model.forward_t(&io["input"], false).unwrap(),
            w2.model.forward_t(&io["input"], false).unwrap(),
        );
        assert_eq!(max_abs(&a, &b), 0.0);
        std::fs::remove_file(tmp).unwrap();
    }
}

#[test]
fn bad_checkpoints_name_every_problem() {
    let (cfg, _, _) = case("tiny_conv_instance");
    let mut sd = candle_core::safetensors::load(
        dir().join("tiny_conv_instance.weights.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    sd.remove("decoder2.conv_block.conv1.conv.weight");
    sd.remove("vit.blocks.3.attn.qkv.weight");
    sd.insert(
        "out.conv.conv.weight".into(),
        Tensor::zeros((5, 2, 1, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    sd.insert(
        "decoder9.foo".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let tmp = std::env::temp_dir().join(format!("unetr-bad-{}.safetensors", std::process::id()));
    candle_core::safetensors::save(&sd, &tmp).unwrap();
    let w = UnetrWeights::init(&cfg, &Device::Cpu).unwrap();
    let msg = w.load_from(&tmp, LIMIT, |_| false).unwrap_err().to_string();
    for part in [
        "decoder2.conv_block.conv1.conv.weight",
        "vit.blocks.3.attn.qkv.weight",
        "out.conv.conv.weight",
        "[5, 2, 1, 1, 1]",
        "decoder9.foo",
    ] {
        assert!(msg.contains(part), "error should name {part}: {msg}");
    }
    // A new head may be allowed to differ (fine-tuning to another class count).
    sd.remove("decoder9.foo");
    candle_core::safetensors::save(&sd, &tmp).unwrap();
    let rep = w
        .load_from(&tmp, LIMIT, |k| {
            k.starts_with("out.") || k.starts_with("decoder2.conv_block.conv1") || k.contains("qkv")
        })
        .unwrap();
    assert_eq!(rep.skipped.len(), 3);
    for bad in [b"not a checkpoint".as_slice(), b""] {
        std::fs::write(&tmp, bad).unwrap();
        assert!(w.load_from(&tmp, LIMIT, |_| false).is_err());
        let pth = tmp.with_extension("pth");
        std::fs::write(&pth, bad).unwrap();
        let e = w.load_from(&pth, LIMIT, |_| false).unwrap_err().to_string();
        assert!(e.contains(&*pth.to_string_lossy()), "{e}");
        std::fs::remove_file(pth).unwrap();
    }
    std::fs::remove_file(tmp).unwrap();
    assert!(w
        .load_from(Path::new("/nonexistent/w.pth"), LIMIT, |_| false)
        .unwrap_err()
        .to_string()
        .contains("no such file"));
}

#[test]
fn parameter_count_matches_model_and_monai() {
    for name in CASES {
        let (cfg, w, _) = case(name);
        let n: usize = w
            .varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| !k.contains("running_"))
            .map(|(_, v)| v.elem_count())
            .sum();
        assert_eq!(count_params(&cfg), n, "{name}");
        // Module by module: every weight belongs to a listed layer (the longest module path that prefixes its
        // key), and each layer's parameter count is what the model holds under it.
        let costs = layer_costs(&cfg);
        let mut held: HashMap<String, usize> = HashMap::new();
        for (k, v) in w.varmap.data().lock().unwrap().iter().filter(|(k, _)| !k.contains("running_")) {
            let owner = costs
                .iter()
                .filter(|c| k == &c.module || k.starts_with(&format!("{}.", c.module)))
                .max_by_key(|c| c.module.len())
                .unwrap_or_else(|| panic!("{name}: weight {k} belongs to no layer of layer_costs"));
            *held.entry(owner.module.clone()).or_default() += v.elem_count();
        }
        for c in &costs {
            assert_eq!(held.get(&c.module).copied().unwrap_or(0), c.params, "{name}: {}", c.module);
        }
        // MONAI's own count, minus its unused norm_cross_attn parameters.
        let sd = candle_core::safetensors::load(
            dir().join(format!("{name}.weights.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let monai: usize = sd
            .iter()
            .filter(|(k, _)| {
                !k.contains("running_") && !k.contains("cross_attn") && !k.contains("num_batches")
            })
            .map(|(_, t)| t.elem_count())
            .sum();
        assert_eq!(n, monai, "{name}");
    }
    // The paper's BTCV model: 92,784,046 parameters used by the forward pass (MONAI 1.6.1 reports 92,802,478
    // with its unused norm_cross_attn), 73.22 GMACs of conv/linear/attention at 96^3.
    assert_eq!(count_params(&UnetrConfig::btcv()), 92_784_046);
    let g = count_macs(&UnetrConfig::btcv()) as f64 / 1e9;
    assert!((g - 73.22).abs() < 0.01, "GMACs {g}");
}

#[test]
fn inputs_that_do_not_fit_say_what_would() {
    let (_, w, _) = case("tiny_conv_instance");
    let x = Tensor::zeros((1, 1, 16, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let e = w.model.forward_t(&x, false).unwrap_err().to_string();
    assert!(e.contains("[16, 32, 16]") && e.contains("img_size"), "{e}");
    let x = Tensor::zeros((1, 2, 16, 32, 16), DType::F32, &Device::Cpu).unwrap();
    assert!(w
        .model
        .forward_t(&x, false)
        .unwrap_err()
        .to_string()
        .contains("input channel"));
    let x = Tensor::zeros((16, 32, 16), DType::F32, &Device::Cpu).unwrap();
    assert!(w
        .model
        .forward_t(&x, false)
        .unwrap_err()
        .to_string()
        .contains("rank 5"));
}

#[test]
fn configs_validate_with_helpful_errors() {
    let bad = |j: &str| UnetrConfig::from_json(j).unwrap_err().to_string();
    assert!(bad(r#"{"in_channels":1,"out_channels":2,"img_size":100}"#)
        .contains("divisible by patch_size"));
    assert!(
        bad(r#"{"in_channels":1,"out_channels":2,"img_size":96,"hidden_size":100}"#)
            .contains("num_heads")
    );
    assert!(
        bad(r#"{"in_channels":1,"out_channels":2,"img_size":96,"patch_size":12}"#)
            .contains("multiple of 8")
    );
    assert!(bad(r#"{"in_channels":1,"out_channels":2,"img_size":96,"bogus":1}"#).contains("bogus"));
    let c = UnetrConfig::from_json(
        r#"{"in_channels":1,"out_channels":14,"img_size":[96,96,96],"pos_embed":"perceptron"}"#,
    )
    .unwrap();
    assert_eq!(c.proj_type, ProjType::Perceptron);
    assert_eq!(
        UnetrConfig::from_json(r#"{"in_channels":1,"out_channels":14,"img_size":96}"#).unwrap(),
        UnetrConfig::btcv()
    );
}

/// Beyond MONAI: patch 32 (the paper's ablation), non-cubic inputs, other depths; shapes, parameter
/// counts and gradients flow end to end.
#[test]
fn other_patch_sizes_and_depths_run() {
    let dev = Device::Cpu;
    for (patch, img, layers) in [
        ([32, 32, 32], [64, 32, 96], 12),
        ([16, 32, 8], [32, 64, 16], 8),
        ([8, 8, 8], [16, 16, 24], 4),
    ] {
        let mut cfg = UnetrConfig::monai(2, 3, img);
        cfg.feature_size = 2;
        cfg.hidden_size = 16;
        cfg.mlp_dim = 32;
        cfg.num_heads = 2;
        cfg.patch_size = patch;
        cfg.num_layers = layers;
        let w = UnetrWeights::init(&cfg, &dev).unwrap();
        let n: usize = w
            .varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| !k.contains("running_"))
            .map(|(_, v)| v.elem_count())
            .sum();
        assert_eq!(count_params(&cfg), n, "{patch:?}");
        let x = Tensor::randn(0f32, 1.0, (1, 2, img[0], img[1], img[2]), &dev).unwrap();
        let y = w.model.forward_t(&x, true).unwrap();
        assert_eq!(y.dims(), [1, 3, img[0], img[1], img[2]]);
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for (k, v) in w.varmap.data().lock().unwrap().iter() {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{patch:?}: no gradient for {k}"));
            assert!(g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .is_finite());
        }
    }
}

#[test]
fn batch_norm_training_updates_running_stats() {
    let (_, w, io) = case("tiny_perceptron_batch");
    let key = "encoder1.layer.norm1.running_mean";
    let before = w.varmap.data().lock().unwrap()[key]
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    w.model.forward_t(&io["input"], true).unwrap();
    let after = w.varmap.data().lock().unwrap()[key]
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    assert_ne!(
        before, after,
        "training-mode batch norm must update its running mean"
    );
    // Evaluation mode leaves them alone.
    w.model.forward_t(&io["input"], false).unwrap();
    let again = w.varmap.data().lock().unwrap()[key]
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(after, again);
}

#[test]
fn inference_model_matches_and_keeps_no_graph() {
    // The inference model runs the in-place paths (decoders in their inputs' storage, in-place norms and
    // convs); every case's logits and intermediates against MONAI's.
    for name in CASES {
        let (_, w, io) = case(name);
        let m = w.inference_model().unwrap();
        let a = m.forward_t(&io["input"], false).unwrap();
        assert!(
            !a.track_op(),
            "inference outputs must not carry an autograd graph"
        );
        let e = max_abs(&a, &io["output"]);
        assert!(e < 1e-4, "{name}: logits max-abs {e}");
        assert_features_match(name, &m, &io);
    }
}

/// Mixed precision: f32 master weights, a bf16 or f16 forward (on the CPU computed in f32 per op and
/// rounded between ops). Logits stay close to MONAI's f32 ones, and the gradients reach the f32 weights in
/// f32, close to the f32 gradients.
#[test]
fn half_precision_forward_and_f32_master_gradients() {
    for name in CASES {
        let (_, w, io) = case(name);
        for (dt, tol) in [(DType::BF16, 0.05f32), (DType::F16, 0.01)] {
            let y = w
                .model
                .forward_t(&io["input"].to_dtype(dt).unwrap(), false)
                .unwrap();
            assert_eq!(y.dtype(), dt, "{name}");
            let scale = max_abs(&io["output"], &io["output"].zeros_like().unwrap()).max(1.0);
            let e = max_abs(&y.to_dtype(DType::F32).unwrap(), &io["output"]);
            assert!(
                e / scale < tol,
                "{name} {dt:?}: logits max-abs {e} (scale {scale})"
            );
        }
    }
    // Gradients: bf16 keeps 8 significant bits, f16 11. The weight gradients of this tiny model are sums of
    // many products that largely cancel (behind instance norms), so rounding the activations and output
    // gradients between ops costs them 16% (bf16) and 8% (f16) relative L2, measured, spread evenly over
    // the layers. The bounds catch a missing, mis-cast or mis-scaled gradient (errors of order 1).
    let (_, w, io) = case("tiny_conv_instance");
    for (dt, tol) in [(DType::BF16, 0.3f32), (DType::F16, 0.15)] {
        let y = w
            .model
            .forward_t(&io["input"].to_dtype(dt).unwrap(), true)
            .unwrap();
        let loss = (y.to_dtype(DType::F32).unwrap() * &io["proj"])
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let vars = w.varmap.data().lock().unwrap();
        let (mut err, mut tot) = (0f32, 0f32);
        for (k, v) in vars.iter() {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {k}"));
            assert_eq!(g.dtype(), DType::F32, "{k}: master gradient dtype");
            let r = &io[&format!("grad.{k}")];
            err += (g - r)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            tot += r
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
        }
        let rel = (err / tot).sqrt();
        assert!(
            rel < tol,
            "{dt:?} gradients: relative L2 error {rel} against f32"
        );
    }
}

/// Crafted `.pth` files (scripts/gen_crafted_files.py): a tensor shape far larger than its storage, and a
/// storage larger than its archive entry, are errors naming the file and tensor, before any allocation
/// (candle's reader alone aborts the process on the first); an honest file of the same layout loads; a
/// checkpoint over the memory limit is refused.
#[test]
fn crafted_pth_files_are_refused_before_allocating() {
    let crafted = Path::new(env!("CARGO_MANIFEST_DIR")).join("../unetr-cli/tests/fixtures/crafted");
    for (file, want) in [("huge_shape.pth", "storage holds 4"), ("lying_storage.pth", "archive entry")] {
        let p = crafted.join(file);
        let e = load_state_dict(&p, LIMIT).unwrap_err().to_string();
        assert!(e.contains(file) && e.contains("tensor \"w\"") && e.contains(want), "{file}: {e}");
    }
    let ok = load_state_dict(&crafted.join("ok_small.pth"), LIMIT).unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0]);
    let e = load_state_dict(&crafted.join("ok_small.pth"), 8).unwrap_err().to_string();
    assert!(e.contains("memory limit"), "{e}");
    let st = dir().join("tiny_conv_instance.weights.safetensors");
    let e = load_state_dict(&st, 1000).unwrap_err().to_string();
    assert!(e.contains("memory limit"), "{e}");
}
