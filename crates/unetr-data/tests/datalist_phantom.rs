//! Datalists (Decathlon json, folder layout, missing files) and the phantom generator.

use std::path::PathBuf;
use unetr_data::nifti::{read_nifti, ReadOptions};
use unetr_data::phantom::{generate_case, write_dataset, PhantomConfig};
use unetr_data::Datalist;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("unetr-dl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn phantom_dataset_is_deterministic_varied_and_readable() {
    let cfg = PhantomConfig { cases: 6, validation: 2, test: 1, size: [32, 32, 20], ..Default::default() };
    let (a, la) = generate_case(&cfg, 1);
    let (b, lb) = generate_case(&cfg, 1);
    assert_eq!(a.data, b.data);
    assert_eq!(la.data, lb.data);
    let (c, _) = generate_case(&PhantomConfig { seed: 7, ..cfg.clone() }, 1);
    assert_ne!(a.data, c.data, "another seed gives other data");
    // Several orientations across cases.
    let orients: std::collections::BTreeSet<String> = (0..4).map(|i| generate_case(&cfg, i).0.orientation()).collect();
    assert!(orients.len() >= 3, "{orients:?}");
    // Every class present; liver and spleen intensities overlap (thresholding cannot split them).
    let (img, lab) = generate_case(&PhantomConfig { size: [64, 64, 40], ..cfg.clone() }, 0);
    let stats = |cls: f32| {
        let v: Vec<f32> = img.data.iter().zip(&lab.data).filter(|(_, &l)| l == cls).map(|(&x, _)| x).collect();
        assert!(!v.is_empty(), "class {cls} missing");
        let m = v.iter().sum::<f32>() / v.len() as f32;
        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
        (m, sd)
    };
    for c in 0..5 {
        stats(c as f32);
    }
    let ((ml, sl), (ms, ss)) = (stats(1.0), stats(2.0));
    assert!((ml - ms).abs() < sl.max(ss), "liver {ml}±{sl} vs spleen {ms}±{ss} should overlap");
    // Written dataset: json with splits and labels, files readable, all present.
    let dir = tmpdir("ph");
    let json = write_dataset(&cfg, &dir).unwrap();
    let dl = Datalist::from_json(&json, Default::default()).unwrap();
    assert_eq!((dl.training.len(), dl.validation.len(), dl.test.len()), (3, 2, 1));
    assert_eq!(dl.labels.len(), 5);
    dl.check_files().unwrap();
    let v = read_nifti(&dl.training[0].image[0], &ReadOptions::default()).unwrap();
    assert_eq!(v.header.dims.iter().product::<usize>(), 32 * 32 * 20);
}

#[test]
fn datalists_parse_and_report_all_missing_files() {
    let dir = tmpdir("json");
    std::fs::write(
        dir.join("dataset.json"),
        r#"{"labels": {"0": "bg", "1": "tumour"}, "training": [{"image": ["a_t1.nii.gz", "a_t2.nii.gz"], "label": "a_seg.nii.gz"}, {"image": "b.nii.gz", "label": "b_seg.nii.gz"}], "test": ["c.nii.gz"]}"#,
    )
    .unwrap();
    let dl = Datalist::from_json(&dir.join("dataset.json"), Default::default()).unwrap();
    assert_eq!(dl.training[0].image, vec![dir.join("a_t1.nii.gz"), dir.join("a_t2.nii.gz")]);
    assert_eq!(dl.test[0].label, None);
    let e = dl.check_files().unwrap_err().to_string();
    for f in ["a_t1.nii.gz", "a_t2.nii.gz", "a_seg.nii.gz", "b.nii.gz", "b_seg.nii.gz", "c.nii.gz"] {
        assert!(e.contains(f), "{e}");
    }
    assert!(e.contains("6 problem"), "{e}");
    std::fs::write(dir.join("bad.json"), "{ \"training\": [ ").unwrap();
    let e = Datalist::from_json(&dir.join("bad.json"), Default::default()).unwrap_err().to_string();
    assert!(e.contains("bad.json") && e.contains("malformed JSON"), "{e}");
    std::fs::write(dir.join("empty.json"), "{}").unwrap();
    assert!(Datalist::from_json(&dir.join("empty.json"), Default::default()).is_err());
    std::fs::write(dir.join("wrong.json"), r#"{"training": [{"label": "x"}]}"#).unwrap();
    assert!(Datalist::from_json(&dir.join("wrong.json"), Default::default()).unwrap_err().to_string().contains("no \"image\""));
    // Class indices must be 0..K-1: gaps, huge keys and non-numbers are refused, naming the keys.
    for (labels, want) in [
        (r#"{"0": "bg", "2": "b"}"#, "[0, 2]"),
        (r#"{"0": "bg", "255": "x"}"#, "[0, 255]"),
        (r#"{"0": "bg", "1099511627776": "x"}"#, "1099511627776"),
        (r#"{"1": "a", "2": "b"}"#, "[1, 2]"),
        (r#"{"0": "bg", "one": "a"}"#, "\"one\""),
    ] {
        std::fs::write(dir.join("labels.json"), format!(r#"{{"labels": {labels}, "training": ["a.nii.gz"]}}"#)).unwrap();
        let e = Datalist::from_json(&dir.join("labels.json"), Default::default()).unwrap_err().to_string();
        assert!(e.contains("labels.json") && e.contains("labels") && e.contains(want), "{labels}: {e}");
    }
    // A datalist larger than the memory limit is refused before it is read.
    let e = Datalist::from_json(&dir.join("dataset.json"), unetr_data::MemoryLimit::from_bytes(1 << 20).unwrap());
    assert!(e.is_ok());
    std::fs::write(dir.join("big.json"), vec![b' '; (1 << 20) + 1]).unwrap();
    let e = Datalist::from_json(&dir.join("big.json"), unetr_data::MemoryLimit::from_bytes(1 << 20).unwrap()).unwrap_err().to_string();
    assert!(e.contains("big.json") && e.contains("memory limit"), "{e}");
    // Folder layout.
    let cfg = PhantomConfig { cases: 3, validation: 1, test: 1, size: [8, 8, 8], ..Default::default() };
    let d2 = tmpdir("folder");
    write_dataset(&cfg, &d2).unwrap();
    let dl = Datalist::from_folder(&d2).unwrap();
    assert_eq!(dl.training.len(), 3);
    dl.check_files().unwrap();
}

/// An nnU-Net v2 dataset: dataset.json with channel_names and name -> index labels, one image file per
/// channel (`CASE_0000.nii.gz`, `CASE_0001.nii.gz`), labels by case; test cases grouped from imagesTs.
#[test]
fn nnunet_v2_datasets_are_read() {
    let dir = tmpdir("nnunet");
    for sub in ["imagesTr", "labelsTr", "imagesTs"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let touch = |p: &str| std::fs::write(dir.join(p), b"").unwrap();
    for case in ["BRATS_002", "BRATS_001"] {
        touch(&format!("labelsTr/{case}.nii.gz"));
        for c in 0..2 {
            touch(&format!("imagesTr/{case}_{c:04}.nii.gz"));
        }
    }
    for c in 0..2 {
        touch(&format!("imagesTs/BRATS_900_{c:04}.nii.gz"));
    }
    std::fs::write(
        dir.join("dataset.json"),
        r#"{"channel_names": {"0": "FLAIR", "1": "T1w"}, "labels": {"background": 0, "edema": 1, "tumour": 2}, "numTraining": 2, "file_ending": ".nii.gz"}"#,
    )
    .unwrap();
    let dl = Datalist::from_json(&dir.join("dataset.json"), Default::default()).unwrap();
    assert_eq!(dl.training.len(), 2);
    assert_eq!(dl.training[0].image, vec![dir.join("imagesTr/BRATS_001_0000.nii.gz"), dir.join("imagesTr/BRATS_001_0001.nii.gz")]);
    assert_eq!(dl.training[0].label.as_deref(), Some(dir.join("labelsTr/BRATS_001.nii.gz").as_path()));
    assert_eq!(dl.labels, vec![(0, "background".to_string()), (1, "edema".into()), (2, "tumour".into())]);
    assert_eq!(dl.test.len(), 1);
    assert_eq!(dl.test[0].image.len(), 2);
    // Region-based labels are refused with a pointer to [labels] mode = "regions".
    std::fs::write(dir.join("regions.json"), r#"{"channel_names": {"0": "T1"}, "labels": {"background": 0, "whole tumor": [1, 2]}}"#).unwrap();
    let e = Datalist::from_json(&dir.join("regions.json"), Default::default()).unwrap_err().to_string();
    assert!(e.contains("regions"), "{e}");
}
