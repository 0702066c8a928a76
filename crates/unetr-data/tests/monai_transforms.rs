//! Deterministic transforms against MONAI's (fixture from scripts/gen_data_fixtures.py): CropForeground,
//! NormalizeIntensity, Rotate90, ScaleIntensityRange.

use std::collections::HashMap;
use unetr_data::nifti::Header;
use unetr_data::transforms::Sample;

fn load() -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transforms.safetensors");
    let bytes = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.shape().to_vec(), v.data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())))
        .collect()
}

fn sample(x: &(Vec<usize>, Vec<f32>)) -> Sample {
    let d = [x.0[1], x.0[2], x.0[3]];
    let h = Header::new(d, x.0[0], [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]);
    Sample::new(x.1.clone(), None, h, "fixture")
}

fn check(name: &str, got: &Sample, want: &(Vec<usize>, Vec<f32>)) {
    assert_eq!([got.channels, got.dims[0], got.dims[1], got.dims[2]].to_vec(), want.0, "{name}: shape");
    for (i, (a, b)) in got.image.iter().zip(&want.1).enumerate() {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{name}: value {i}: {a} vs {b}");
    }
}

#[test]
fn deterministic_transforms_match_monai() {
    let t = load();
    let x = &t["x"];
    check("crop_fg_m1", &sample(x).crop_foreground(1), &t["crop_fg_m1"]);
    check("crop_fg_m0", &sample(x).crop_foreground(0), &t["crop_fg_m0"]);
    check("norm", &sample(x).normalize_intensity(false, false), &t["norm"]);
    check("norm_nonzero_cw", &sample(x).normalize_intensity(true, true), &t["norm_nonzero_cw"]);
    check("rot_k1_01", &sample(x).rotate90(1, (0, 1)), &t["rot_k1_01"]);
    check("rot_k3_12", &sample(x).rotate90(3, (1, 2)), &t["rot_k3_12"]);
    check("rot_k2_02", &sample(x).rotate90(2, (0, 2)), &t["rot_k2_02"]);
    check("scale", &sample(x).scale_intensity_range(-2.0, 4.0, 0.0, 1.0, true), &t["scale"]);
}

#[test]
fn rotate90_keeps_world_positions_and_crop_foreground_inverts() {
    let t = load();
    let s = sample(&t["x"]);
    let r = s.clone().rotate90(1, (0, 2));
    // Each voxel's world position is unchanged: find voxel (1,2,3) of the original in the rotated grid.
    let world = |a: &[[f64; 4]; 3], v: [usize; 3]| [0, 1, 2].map(|i| a[i][0] * v[0] as f64 + a[i][1] * v[1] as f64 + a[i][2] * v[2] as f64 + a[i][3]);
    let w = world(&s.affine, [2, 3, 4]);
    let val = s.image[(2 * s.dims[1] + 3) * s.dims[2] + 4];
    let d = r.dims;
    let mut found = false;
    for i in 0..d[0] {
        for j in 0..d[1] {
            for k in 0..d[2] {
                let wr = world(&r.affine, [i, j, k]);
                if (0..3).all(|a| (wr[a] - w[a]).abs() < 1e-9) {
                    assert_eq!(r.image[(i * d[1] + j) * d[2] + k], val);
                    found = true;
                }
            }
        }
    }
    assert!(found);
    let c = s.clone().crop_foreground(1);
    let back = c.invert(&c.image, 2, 0.0);
    assert_eq!(back.data, s.image, "crop_foreground is recorded and inverts (outside the box was zero)");
}

#[test]
fn spacing_matches_monai_and_inverts() {
    let t = load();
    let aff = [[1.0, 0.0, 0.0, -4.0], [0.0, 1.2, 0.0, 3.0], [0.0, 0.0, 2.5, 10.0]];
    let (img, lab) = (&t["sp_img"], &t["sp_lab"]);
    let d = [img.0[1], img.0[2], img.0[3]];
    let h = Header::new(d, 1, aff);
    let s = Sample::new(img.1.clone(), Some(lab.1.clone()), h, "fixture");
    let r = s.clone().resample_spacing([1.5, 1.5, 2.0]).unwrap();
    check("spacing image", &r, &t["sp_img_out"]);
    // Nearest labels: equal wherever no axis sits exactly halfway between two input voxels (MONAI breaks those
    // ties by float32 rounding noise).
    let ratio = [1.5 / 1.0, 1.5 / 1.2, 2.0 / 2.5];
    let nd = r.dims;
    let mut compared = 0;
    for i in 0..nd[0] {
        for j in 0..nd[1] {
            for k in 0..nd[2] {
                let tie = [i, j, k].iter().zip(ratio).any(|(&v, q)| ((v as f64 * q).fract() - 0.5).abs() < 1e-9);
                if !tie {
                    let idx = (i * nd[1] + j) * nd[2] + k;
                    assert_eq!(r.label.as_ref().unwrap()[idx], t["sp_lab_out"].1[idx], "label at {i},{j},{k}");
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > nd.iter().product::<usize>() / 3, "{compared}");
    let want = &t["sp_affine_out"].1;
    for i in 0..3 {
        for j in 0..4 {
            assert!((r.affine[i][j] - want[i * 4 + j] as f64).abs() < 1e-6, "affine {:?}", r.affine);
        }
    }
    // A label map mapped back lands on the original grid with the original shape.
    let back = r.invert(r.label.as_ref().unwrap(), 1, 0.0);
    assert_eq!(back.header.dims, d);
    assert_eq!(back.data.len(), lab.1.len());
    let same = back.data.iter().zip(&lab.1).filter(|(a, b)| a == b).count();
    assert!(same as f64 > 0.5 * lab.1.len() as f64, "nearest round trip keeps most labels ({same})");
}
