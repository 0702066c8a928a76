//! The config-composed pipeline, orientation codes, RandSpatialCrop, the NaN policy, the cache budget and
//! the prefetching loader's determinism.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::sync::Arc;
use unetr_data::loader::{make_batch, stack, CacheDataset, Loader, LoaderConfig};
use unetr_data::nifti::{read_nifti, write_nifti, NonFinite, ReadOptions};
use unetr_data::phantom::{generate_case, write_dataset, PhantomConfig};
use unetr_data::transforms::{load_item, Sample};
use unetr_data::{Compose, Datalist, TransformSpec};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("unetr-loader-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sample(index: usize) -> Sample {
    let cfg = PhantomConfig { size: [12, 10, 8], ..Default::default() };
    let (img, lab) = generate_case(&cfg, index);
    Sample::new(img.data, Some(lab.data), img.header, format!("phantom case {index}"))
}

#[derive(serde::Deserialize)]
struct Wrap {
    pipeline: Vec<TransformSpec>,
}

const PIPELINE: &str = r#"
[[pipeline]]
name = "Orientation"
axcodes = "RAS"
[[pipeline]]
name = "ScaleIntensityRange"
a_min = -175.0
a_max = 250.0
b_min = 0.0
b_max = 1.0
clip = true
[[pipeline]]
name = "RandCropByPosNegLabel"
spatial_size = [8, 8, 8]
num_samples = 2
[[pipeline]]
name = "RandFlip"
spatial_axis = 0
prob = 0.5
[[pipeline]]
name = "RandScaleIntensity"
factors = 0.1
prob = 0.5
"#;

#[test]
fn pipeline_from_config_matches_the_methods_and_splits_at_the_first_random_transform() {
    let w: Wrap = toml::from_str(PIPELINE).unwrap();
    let c = Compose::from_specs(&w.pipeline).unwrap();
    assert_eq!(c.first_random(), 2);
    let s = sample(1);
    let det = c.apply_deterministic(s.clone()).unwrap();
    let manual = s.clone().orient_ras().scale_intensity_range(-175.0, 250.0, 0.0, 1.0, true);
    assert_eq!(det.image, manual.image);
    assert_eq!(det.affine, manual.affine);
    // The random part: seeded, two crops of the requested size.
    let a = c.apply_random(det.clone(), &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    let b = c.apply_random(det, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|x| x.dims == [8, 8, 8]));
    assert_eq!(a[0].image, b[0].image);
    assert_eq!(a[1].label, b[1].label);
}

#[test]
fn bad_pipeline_entries_are_refused_with_the_entry_named() {
    for (text, want) in [
        ("[[pipeline]]\nname = \"Rotate45\"\n", "Rotate45"),
        ("[[pipeline]]\nname = \"Orientation\"\naxcodes = \"RRS\"\n", "orientation code"),
        ("[[pipeline]]\nname = \"Spacing\"\npixdim = [1.0, 0.0, 1.0]\n", "pixdim"),
        ("[[pipeline]]\nname = \"RandFlip\"\nspatial_axis = 3\nprob = 0.5\n", "spatial_axis"),
        ("[[pipeline]]\nname = \"RandFlip\"\nspatial_axes = 1\nprob = 0.5\n", "spatial_axes"),
    ] {
        let e = match toml::from_str::<Wrap>(text) {
            Err(e) => e.to_string(),
            Ok(w) => Compose::from_specs(&w.pipeline).unwrap_err().to_string(),
        };
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn any_orientation_code_keeps_world_positions_and_inverts() {
    let s = sample(2);
    for code in ["LPS", "RAS", "SAR", "IPL"] {
        let o = s.clone().orient(code).unwrap();
        assert_eq!(unetr_data::nifti::orientation(&o.affine), code);
        // The world position of the first and last voxel's values is preserved through the affine.
        let back = o.invert(o.label.as_ref().unwrap(), 1, -1.0);
        assert_eq!(&back.data, s.label.as_ref().unwrap(), "{code}");
    }
}

#[test]
fn rand_spatial_crop_is_a_window_of_the_volume() {
    let s = sample(0);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..10 {
        let c = s.clone().rand_spatial_crop([5, 4, 3], &mut rng);
        assert_eq!(c.dims, [5, 4, 3]);
        // Its affine's origin is a voxel of the original grid, and the values there agree.
        let a = &s.affine;
        let inv = |w: [f64; 3]| -> [usize; 3] {
            // Axis-aligned phantom affines: solve per axis.
            [0, 1, 2].map(|ax| {
                let r = (0..3).find(|&r| a[r][ax].abs() > 1e-9).unwrap();
                ((w[r] - a[r][3]) / a[r][ax]).round() as usize
            })
        };
        let start = inv([c.affine[0][3], c.affine[1][3], c.affine[2][3]]);
        let d = s.dims;
        for (ci, &v) in c.image.iter().enumerate() {
            let p = [ci / 12, (ci / 3) % 4, ci % 3];
            let o = [start[0] + p[0], start[1] + p[1], start[2] + p[2]];
            assert_eq!(v, s.image[(o[0] * d[1] + o[1]) * d[2] + o[2]]);
        }
    }
    // Smaller than the roi: padded.
    let c = s.clone().rand_spatial_crop([16, 16, 16], &mut rng);
    assert_eq!(c.dims, [16, 16, 16]);
}

#[test]
fn nan_voxels_fail_naming_the_file_or_are_replaced() {
    let dir = tmp("nan");
    let (mut img, _) = generate_case(&PhantomConfig { size: [8, 8, 8], ..Default::default() }, 0);
    img.data[3] = f32::NAN;
    img.data[10] = f32::INFINITY;
    let p = dir.join("nan.nii.gz");
    write_nifti(&p, &img, false).unwrap();
    let e = read_nifti(&p, &ReadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("nan.nii.gz") && e.contains("2 NaN/Inf"), "{e}");
    let v = read_nifti(&p, &ReadOptions { nonfinite: NonFinite::Replace(-1.0), ..Default::default() }).unwrap();
    assert_eq!((v.data[3], v.data[10]), (-1.0, -1.0));
    assert!(v.data.iter().all(|x| x.is_finite()));
    let v = read_nifti(&p, &ReadOptions { nonfinite: NonFinite::Keep, ..Default::default() }).unwrap();
    assert!(v.data[3].is_nan());
}

fn dataset(name: &str) -> Datalist {
    let dir = tmp(name);
    let cfg = PhantomConfig { cases: 6, validation: 1, test: 0, size: [24, 24, 16], ..Default::default() };
    let json = write_dataset(&cfg, &dir).unwrap();
    Datalist::from_json(&json, Default::default()).unwrap()
}

fn compose() -> Arc<Compose> {
    let w: Wrap = toml::from_str(&PIPELINE.replace("[8, 8, 8]", "[16, 16, 8]")).unwrap();
    Arc::new(Compose::from_specs(&w.pipeline).unwrap())
}

#[test]
fn cache_budget_and_loader_determinism() {
    let dl = dataset("cache");
    let c = compose();
    let full = CacheDataset::new(dl.training.clone(), c.clone(), ReadOptions::default(), usize::MAX).unwrap();
    let one = 4 * 2 * 24 * 24 * 16; // image + label of one volume, f32
    let part = CacheDataset::new(dl.training.clone(), c.clone(), ReadOptions::default(), 2 * one + 10).unwrap();
    assert_eq!(full.cache_stats().0, dl.training.len());
    assert_eq!(part.cache_stats(), (2, 2 * one));
    for i in 0..dl.training.len() {
        let (a, b) = (full.get(i).unwrap(), part.get(i).unwrap());
        assert_eq!(a.image, b.image, "item {i}: recomputed != cached");
        assert_eq!(a.label, b.label);
    }
    // Batches depend on (seed, step) only: a loader started at step 3 (resume) and direct calls agree,
    // with or without the cache and whatever the prefetch depth.
    let cfg = LoaderConfig { batch_size: 2, seed: 11, prefetch: 3, shard: Default::default() };
    let full = Arc::new(full);
    let a: Vec<_> = Loader::new(full.clone(), cfg.clone(), 0).take(6).map(|b| b.unwrap()).collect();
    let b: Vec<_> = Loader::new(Arc::new(part), LoaderConfig { prefetch: 1, ..cfg.clone() }, 3).take(3).map(|b| b.unwrap()).collect();
    for (x, y) in a[3..].iter().zip(&b) {
        assert_eq!((x.step, x.n, x.dims), (y.step, y.n, y.dims));
        assert_eq!(x.image, y.image);
        assert_eq!(x.label, y.label);
    }
    assert_eq!(a[0].n, 4); // 2 volumes x 2 crops
    assert_eq!(a[0].image.len(), 4 * 16 * 16 * 8);
    let direct = make_batch(&full, &cfg, 4).unwrap();
    assert_eq!(direct.image, a[4].image);
    assert_ne!(a[0].image, a[1].image);
}

#[test]
fn loader_reports_errors_instead_of_hanging() {
    let dl = dataset("err");
    // stack refuses samples without labels, and samples of different shapes.
    let mut s = load_item(&dl.training[0], &ReadOptions::default()).unwrap();
    s.label = None;
    let e = stack(&[s], 0).unwrap_err().to_string();
    assert!(e.contains("labels"), "{e}");
    let a = load_item(&dl.training[0], &ReadOptions::default()).unwrap();
    let b = a.clone().crop([0, 0, 0], [4, 4, 4]);
    let e = stack(&[a, b], 0).unwrap_err().to_string();
    assert!(e.contains("differ in shape"), "{e}");
    // A file removed after the cache was built (beyond the budget): the loader yields the error, then ends.
    let c = compose();
    let ds = Arc::new(CacheDataset::new(dl.training.clone(), c, ReadOptions::default(), 0).unwrap());
    for it in &dl.training {
        std::fs::remove_file(&it.image[0]).unwrap();
    }
    let mut l = Loader::new(ds, LoaderConfig { batch_size: 1, seed: 0, prefetch: 2, shard: Default::default() }, 0);
    let e = l.next().unwrap().unwrap_err().to_string();
    assert!(e.contains("cannot open"), "{e}");
    assert!(l.next().is_none());
}
