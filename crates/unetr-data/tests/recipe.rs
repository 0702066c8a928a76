//! The recipe's transform arguments against MONAI 1.6 (fixtures from scripts/gen_recipe_fixtures.py):
//! deterministic outputs and affines, and for RandCropByPosNegLabel the exact candidate sets (foreground and
//! background indices with and without `image_key`) and the distribution of crop starts over many draws
//! against MONAI's exact probabilities.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use unetr_data::nifti::Header;
use unetr_data::transforms::{Applied, Sample};
use unetr_data::{Compose, TransformSpec};

type Arr = (Vec<usize>, Vec<f32>);

fn load() -> (HashMap<String, Arr>, serde_json::Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let bytes = std::fs::read(dir.join("recipe.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.shape().to_vec(), v.data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())))
        .collect();
    (t, serde_json::from_str(&std::fs::read_to_string(dir.join("recipe.json")).unwrap()).unwrap())
}

fn sample(x: &Arr, affine: [[f64; 4]; 3], label: Option<&Arr>) -> Sample {
    let d = [x.0[1], x.0[2], x.0[3]];
    Sample::new(x.1.clone(), label.map(|l| l.1.clone()), Header::new(d, x.0[0], affine), "fixture")
}

const EYE: [[f64; 4]; 3] = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]];

fn check(name: &str, got: &Sample, want: &Arr) {
    assert_eq!([got.channels, got.dims[0], got.dims[1], got.dims[2]].to_vec(), want.0, "{name}: shape");
    for (i, (a, b)) in got.image.iter().zip(&want.1).enumerate() {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{name}: value {i}: {a} vs {b}");
    }
}

/// A transform from its TOML entry (as a user writes it in `[[transforms.pipeline]]`).
fn spec(toml_text: &str) -> TransformSpec {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("{toml_text}: {e}"))
}

fn run(s: &Sample, toml_text: &str) -> Sample {
    Compose::from_specs(&[spec(toml_text)]).unwrap().apply_deterministic(s.clone()).unwrap()
}

#[test]
fn crop_foreground_arguments_match_monai() {
    let (t, meta) = load();
    let x = sample(&t["fg_x"], EYE, None);
    for c in meta["crop_foreground"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let mut entry = format!("name = \"CropForeground\"\nmargin = {}\nallow_smaller = {}\n", c["margin"], c["allow_smaller"]);
        if let Some(k) = c.get("k_divisible") {
            entry += &format!("k_divisible = {k}\n");
        }
        if let Some(th) = c.get("threshold") {
            entry += &format!("select_fn = {{ greater_than = {th} }}\n");
        }
        let out = run(&x, &entry);
        check(name, &out, &t[name]);
        // Recorded for inversion: the crop (and its padding) undone.
        let back = out.invert(&out.image, 2, 0.0);
        assert_eq!(back.header.dims, x.dims, "{name}");
    }
}

#[test]
fn normalize_orientation_and_spacing_arguments_match_monai() {
    let (t, _) = load();
    let x = sample(&t["fg_x"], EYE, None);
    check("norm_sub_div_cw", &run(&x, "name = \"NormalizeIntensity\"\nsubtrahend = [1.0, -2.0]\ndivisor = [2.0, 0.5]\nchannel_wise = true"), &t["norm_sub_div_cw"]);
    check("norm_sub_nonzero", &run(&x, "name = \"NormalizeIntensity\"\nsubtrahend = 0.5\nnonzero = true"), &t["norm_sub_nonzero"]);
    let a = &t["or_affine"].1;
    let aff = [0, 1, 2].map(|r| [0, 1, 2, 3].map(|c| a[r * 4 + c] as f64));
    let img = sample(&t["or_img"], aff, None);
    for (name, labels) in [("or_default", ""), ("or_flipped_labels", "labels = [[\"R\", \"L\"], [\"A\", \"P\"], [\"I\", \"S\"]]")] {
        let out = run(&img, &format!("name = \"Orientation\"\naxcodes = \"RAS\"\n{labels}"));
        check(name, &out, &t[name]);
        let want = &t[&format!("{name}_affine")].1;
        for r in 0..3 {
            for c in 0..4 {
                assert!((out.affine[r][c] - want[r * 4 + c] as f64).abs() < 1e-5, "{name}: affine {:?}", out.affine);
            }
        }
    }
    // Nearest-neighbour images (mode per key); exact ties between two voxels fall either way in MONAI.
    let sp = sample(&t["spn_img"], [[1.0, 0.0, 0.0, 0.0], [0.0, 1.2, 0.0, 0.0], [0.0, 0.0, 2.5, 0.0]], None);
    let out = run(&sp, "name = \"Spacing\"\npixdim = [1.5, 1.5, 2.0]\nmode = \"nearest\"");
    let want = &t["spn_out"];
    assert_eq!([out.channels, out.dims[0], out.dims[1], out.dims[2]].to_vec(), want.0);
    let ratio = [1.5 / 1.0, 1.5 / 1.2, 2.0 / 2.5];
    let nd = out.dims;
    let mut compared = 0;
    for i in 0..nd[0] {
        for j in 0..nd[1] {
            for k in 0..nd[2] {
                if ![i, j, k].iter().zip(ratio).any(|(&v, q)| ((v as f64 * q).fract() - 0.5).abs() < 1e-9) {
                    let idx = (i * nd[1] + j) * nd[2] + k;
                    assert_eq!(out.image[idx], want.1[idx], "nearest at {i},{j},{k}");
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > nd.iter().product::<usize>() / 3);
}

#[test]
fn unsupported_arguments_are_errors_naming_them() {
    for (entry, want) in [
        ("name = \"RandCropByPosNegLabel\"\nspatial_size = [4, 4, 4]\nfg_indices_key = \"fg\"", "fg_indices_key"),
        ("name = \"Spacing\"\npixdim = [1.0, 1.0, 1.0]\nalign_corners = true", "align_corners"),
        ("name = \"Spacing\"\npixdim = [1.0, 1.0, 1.0]\nmode = \"bicubic\"", "mode"),
        ("name = \"Spacing\"\npixdim = [1.0, 1.0, 1.0]\npadding_mode = \"zeros\"", "padding_mode"),
        ("name = \"ScaleIntensityRange\"\na_min = 0.0\na_max = 1.0\nb_min = 0.0\nb_max = 1.0\nkeys = [\"image\"]", "keys"),
        ("name = \"NormalizeIntensity\"\ndivisor = [1.0, 2.0]", "channel_wise"),
        ("name = \"CropForeground\"\nsource_key = \"label\"", "source_key"),
        ("name = \"RandSpatialCrop\"\nroi_size = [4, 4, 4]\nrandom_size = true", "random_size"),
        ("name = \"RandScaleIntensity\"\nfactors = [0.2, 0.1]\nprob = 0.5", "factors"),
        ("name = \"Orientation\"\naxcodes = \"RAS\"\nlabels = [[\"L\", \"R\"], [\"P\", \"A\"], [\"X\", \"Y\"]]", "orientation code"),
    ] {
        let e = match toml::from_str::<TransformSpec>(entry) {
            Err(e) => e.to_string(),
            Ok(s) => s.validate().unwrap_err().to_string(),
        };
        assert!(e.contains(want), "{entry}: {e}");
    }
}

fn flat_indices(a: &Arr) -> Vec<usize> {
    a.1.iter().map(|&v| v as usize).collect()
}

/// Our candidate sets equal MONAI's exactly, every crop we draw starts where MONAI's could, and over many
/// draws the starts follow MONAI's exact distribution (chi-square, well inside its spread).
#[test]
fn pos_neg_crops_draw_from_monais_candidates_with_its_distribution() {
    let (t, meta) = load();
    let s = sample(&t["pn_image"], EYE, Some(&t["pn_label"]));
    for (tag, threshold) in [("with_image", Some(0.0)), ("label_only", None)] {
        let (fg, bg) = s.pos_neg_indices(threshold).unwrap();
        assert_eq!(fg, flat_indices(&t[&format!("pn_fg_{tag}")]), "{tag}: foreground");
        assert_eq!(bg, flat_indices(&t[&format!("pn_bg_{tag}")]), "{tag}: background");
    }
    for case in meta["pos_neg"].as_array().unwrap() {
        let roi: Vec<usize> = serde_json::from_value(case["roi"].clone()).unwrap();
        let image_key = if case["indices"] == "with_image" { "image_key = \"image\"\nimage_threshold = 0.0\n" } else { "" };
        let entry = format!(
            "name = \"RandCropByPosNegLabel\"\nspatial_size = {roi:?}\npos = {}\nneg = {}\nnum_samples = 50\nallow_smaller = {}\n{image_key}",
            case["pos"], case["neg"], case["allow_smaller"]
        );
        let c = Compose::from_specs(&[spec(&entry)]).unwrap();
        let want: HashMap<[isize; 3], f64> = case["starts"].as_array().unwrap().iter().map(|p| (serde_json::from_value(p[0].clone()).unwrap(), p[1].as_f64().unwrap())).collect();
        let mut seen: HashMap<[isize; 3], f64> = HashMap::new();
        let draws = 400;
        let mut n = 0.0;
        for seed in 0..draws {
            for crop in c.apply_random(s.clone(), &mut ChaCha8Rng::seed_from_u64(seed)).unwrap() {
                let Some(Applied::Crop { start, .. }) = crop.applied.last() else { panic!("no crop recorded") };
                assert!(want.contains_key(start), "{entry}: start {start:?} is not one MONAI can draw");
                *seen.entry(*start).or_default() += 1.0;
                n += 1.0;
            }
        }
        // Chi-square over the starts MONAI draws with probability >= 5 / n (the rest pooled).
        let (mut chi, mut dof, mut rest_o, mut rest_e) = (0.0, 0usize, 0.0, 0.0);
        for (k, p) in &want {
            let (o, e) = (seen.get(k).copied().unwrap_or(0.0), p * n);
            if e >= 5.0 {
                chi += (o - e) * (o - e) / e;
                dof += 1;
            } else {
                rest_o += o;
                rest_e += e;
            }
        }
        if rest_e > 0.0 {
            chi += (rest_o - rest_e) * (rest_o - rest_e) / rest_e;
            dof += 1;
        }
        let bound = dof as f64 + 6.0 * (2.0 * dof as f64).sqrt();
        assert!(chi < bound, "{entry}: chi-square {chi:.1} over {dof} cells (bound {bound:.1})");
    }
}

/// A prediction on a resampled grid goes back to the input grid as MONAI's Invertd does: the probabilities
/// resampled linearly (values within 1e-4), then the argmax (AsDiscrete) equal wherever two classes are
/// not within 1e-3 of each other.
#[test]
fn probabilities_invert_to_the_input_grid_as_monai() {
    let (t, _) = load();
    let a = &t["inv_affine"].1;
    let aff = [0, 1, 2].map(|r| [0, 1, 2, 3].map(|c| a[r * 4 + c] as f64));
    let s = sample(&t["inv_img"], aff, None).resample_spacing([1.5, 1.5, 2.0]).unwrap();
    let probs = &t["inv_probs"];
    assert_eq!(s.dims.to_vec(), probs.0[1..].to_vec(), "the resampled grid is MONAI's");
    let back = s.invert(&probs.1, 3, 0.0);
    let want = &t["inv_back"];
    assert_eq!([back.header.channels, back.header.dims[0], back.header.dims[1], back.header.dims[2]].to_vec(), want.0);
    let n = back.data.len() / 3;
    let mut worst = 0f32;
    let mut compared = 0;
    for i in 0..n {
        let p: Vec<f32> = (0..3).map(|c| back.data[c * n + i]).collect();
        let q: Vec<f32> = (0..3).map(|c| want.1[c * n + i]).collect();
        for c in 0..3 {
            worst = worst.max((p[c] - q[c]).abs());
        }
        let arg = |v: &[f32]| (0..3).max_by(|&x, &y| v[x].total_cmp(&v[y])).unwrap();
        let mut sorted = q.clone();
        sorted.sort_by(|x, y| y.total_cmp(x));
        if sorted[0] - sorted[1] > 1e-3 {
            assert_eq!(arg(&p), arg(&q), "voxel {i}: ours {p:?}, MONAI {q:?}");
            compared += 1;
        }
    }
    assert!(worst < 1e-4, "probabilities differ by up to {worst}");
    assert!(compared > n / 2);
}
