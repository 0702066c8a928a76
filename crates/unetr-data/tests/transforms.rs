//! Orientation, crops, pads and their inversion; random crops hit the foreground; seeded determinism.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use unetr_data::phantom::{generate_case, PhantomConfig};
use unetr_data::transforms::Sample;

fn sample(index: usize) -> Sample {
    let cfg = PhantomConfig { size: [12, 10, 8], ..Default::default() };
    let (img, lab) = generate_case(&cfg, index);
    Sample::new(img.data, Some(lab.data), img.header, format!("phantom case {index}"))
}

fn world(a: &[[f64; 4]; 3], v: [usize; 3]) -> [f64; 3] {
    [0, 1, 2].map(|r| a[r][0] * v[0] as f64 + a[r][1] * v[1] as f64 + a[r][2] * v[2] as f64 + a[r][3])
}

#[test]
fn orientation_to_ras_keeps_world_positions_and_inverts() {
    for index in 0..4 {
        let s = sample(index);
        let r = s.clone().orient_ras();
        assert_eq!(unetr_data::nifti::orientation(&r.affine), "RAS", "case {index}");
        // Every voxel keeps its world position and value.
        for v in [[0, 0, 0], [3, 2, 1], [r.dims[0] - 1, r.dims[1] - 1, r.dims[2] - 1]] {
            let w = world(&r.affine, v);
            let val = r.image[(v[0] * r.dims[1] + v[1]) * r.dims[2] + v[2]];
            let found = (0..s.image.len()).any(|i| {
                let o = [i / (s.dims[1] * s.dims[2]), (i / s.dims[2]) % s.dims[1], i % s.dims[2]];
                let wo = world(&s.affine, o);
                (0..3).all(|k| (wo[k] - w[k]).abs() < 1e-6) && s.image[i] == val
            });
            assert!(found, "case {index}: voxel {v:?} moved");
        }
        let back = r.invert(r.label.as_ref().unwrap(), 1, -1.0);
        assert_eq!(&back.data, s.label.as_ref().unwrap(), "case {index}: inversion");
    }
}

#[test]
fn crops_pads_and_inversion() {
    let s = sample(0).orient_ras();
    let c = s.clone().crop([2, -1, 3], [6, 12, 4]);
    assert_eq!(c.dims, [6, 12, 4]);
    let back = c.invert(c.label.as_ref().unwrap(), 1, -1.0);
    let l = s.label.as_ref().unwrap();
    let d = s.dims;
    for i in 0..d[0] {
        for j in 0..d[1] {
            for k in 0..d[2] {
                let idx = (i * d[1] + j) * d[2] + k;
                let inside = (2..8).contains(&i) && (3..7).contains(&k);
                assert_eq!(back.data[idx], if inside { l[idx] } else { -1.0 }, "{i} {j} {k}");
            }
        }
    }
    let p = s.clone().pad_to([16, 16, 16]);
    assert_eq!(p.dims, [16, 16, 16]);
    assert_eq!(p.invert(p.label.as_ref().unwrap(), 1, -1.0).data, *l);
}

#[test]
fn random_crops_are_seeded_and_find_foreground() {
    let s = sample(1).orient_ras();
    let mut r1 = ChaCha8Rng::seed_from_u64(3);
    let mut r2 = ChaCha8Rng::seed_from_u64(3);
    let a = s.rand_crop_pos_neg([6, 6, 6], 1.0, 0.0, 4, &mut r1).unwrap();
    let b = s.rand_crop_pos_neg([6, 6, 6], 1.0, 0.0, 4, &mut r2).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.image, y.image);
        assert!(x.label.as_ref().unwrap()[(3 * 6 + 3) * 6 + 3] > 0.0 || x.label.as_ref().unwrap().iter().any(|&v| v > 0.0));
    }
    // Larger than the volume: padded.
    let big = s.rand_crop_pos_neg([16, 16, 16], 1.0, 1.0, 1, &mut r1).unwrap();
    assert_eq!(big[0].dims, [16, 16, 16]);
}

#[test]
fn scale_intensity_range_as_monai() {
    let mut s = sample(0);
    s.image = vec![-1000.0, -175.0, 0.0, 250.0, 1000.0];
    let r = s.scale_intensity_range(-175.0, 250.0, 0.0, 1.0, true);
    let want = [0.0, 0.0, 175.0 / 425.0, 1.0, 1.0];
    for (a, b) in r.image.iter().zip(want) {
        assert!((a - b).abs() < 1e-6);
    }
}

/// A 193-byte NIfTI whose header says 3000 mm voxels: resampling it to 1.5 x 1.5 x 2 mm would need
/// terabytes; the transform refuses it before allocating, naming the file, the transform and the size.
#[test]
fn spacing_output_is_checked_against_the_memory_limit() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../unetr-cli/tests/fixtures/crafted/huge_voxels.nii.gz");
    let item = unetr_data::Item { image: vec![p.clone()], label: None };
    let s = unetr_data::transforms::load_item(&item, &Default::default()).unwrap();
    let spec: unetr_data::TransformSpec = toml::from_str("name = \"Spacing\"\npixdim = [1.5, 1.5, 2.0]").unwrap();
    let c = unetr_data::Compose::from_specs(&[spec]).unwrap();
    let e = c.apply_deterministic(s).unwrap_err().to_string();
    assert!(e.contains("huge_voxels.nii.gz") && e.contains("Spacing") && e.contains("memory limit") && e.contains("GiB"), "{e}");
}
