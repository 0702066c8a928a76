//! NIfTI reading against nibabel (fixtures from scripts/gen_data_fixtures.py), write/read round trips,
//! every kind of bad file, and the real Colin27 / AAL volumes of Debian's mricron-data when installed.

use std::path::{Path, PathBuf};
use unetr_data::nifti::{orientation, read_nifti, write_nifti, Header, ReadOptions, Volume};

fn fx(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn expect(name: &str) -> (Vec<usize>, Vec<f32>, Vec<f64>, Vec<f64>) {
    let bytes = std::fs::read(fx(&format!("{name}.expect.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |k: &str| st.tensor(k).unwrap().data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect::<Vec<_>>();
    let f64s = |k: &str| st.tensor(k).unwrap().data().chunks(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect::<Vec<_>>();
    (st.tensor("data").unwrap().shape().to_vec(), f32s("data"), f64s("affine"), f64s("zooms"))
}

#[test]
fn reads_like_nibabel() {
    for (file, stem) in [
        ("u8_ras.nii", "u8_ras"),
        ("i16_scaled_qform.nii.gz", "i16_scaled_qform"),
        ("u16_lps.nii.gz", "u16_lps"),
        ("i32.nii.gz", "i32"),
        ("f64_big_endian.nii", "f64_big_endian"),
        ("f32_4d.nii.gz", "f32_4d"),
        ("i8.nii.gz", "i8"),
    ] {
        let v = read_nifti(&fx(file), &ReadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let (shape, data, affine, zooms) = expect(stem);
        let c = if shape.len() == 4 { shape[3] } else { 1 };
        assert_eq!(v.shape(), [c, shape[0], shape[1], shape[2]], "{file}");
        // nibabel: [i, j, k, c] C-order; ours: [c, i, j, k].
        let n = shape[0] * shape[1] * shape[2];
        for ch in 0..c {
            for s in 0..n {
                let (a, b) = (v.data[ch * n + s], data[s * c + ch]);
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{file}: voxel {s} channel {ch}: {a} vs {b}");
            }
        }
        for r in 0..3 {
            for col in 0..4 {
                assert!((v.header.affine[r][col] - affine[r * 4 + col]).abs() < 1e-5, "{file}: affine {:?} vs {affine:?}", v.header.affine);
            }
        }
        for a in 0..3 {
            assert!((v.spacing()[a] - zooms[a]).abs() < 1e-5, "{file}: spacing {:?} vs {zooms:?}", v.spacing());
        }
    }
    assert_eq!(read_nifti(&fx("u16_lps.nii.gz"), &ReadOptions::default()).unwrap().orientation(), "LPS");
    assert_eq!(read_nifti(&fx("u8_ras.nii"), &ReadOptions::default()).unwrap().orientation(), "RAS");
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("unetr-data-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn write_read_round_trip() {
    let mut aff = [[0.0; 4]; 3];
    aff[0][1] = -1.5;
    aff[1][0] = 2.0;
    aff[2][2] = 0.7;
    aff[0][3] = 12.0;
    let h = Header::new([5, 4, 3], 2, aff);
    let data: Vec<f32> = (0..120).map(|i| i as f32 * 0.37 - 9.0).collect();
    let v = Volume { data: data.clone(), header: h };
    for name in ["rt.nii", "rt.nii.gz"] {
        let p = tmp(name);
        write_nifti(&p, &v, false).unwrap();
        let r = read_nifti(&p, &ReadOptions::default()).unwrap();
        assert_eq!(r.shape(), [2, 5, 4, 3]);
        assert_eq!(r.data, data);
        for i in 0..3 {
            for j in 0..4 {
                assert!((r.header.affine[i][j] - aff[i][j]).abs() < 1e-6);
            }
        }
    }
    // Labels are stored as integers and come back exact.
    let lab = Volume { data: (0..60).map(|i| (i % 5) as f32).collect(), header: Header::new([5, 4, 3], 1, aff) };
    let p = tmp("lab.nii.gz");
    write_nifti(&p, &lab, true).unwrap();
    let r = read_nifti(&p, &ReadOptions::default()).unwrap();
    assert_eq!(r.header.datatype, 2);
    assert_eq!(r.data, lab.data);
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".tmp")).collect();
    assert!(left.is_empty());
}

fn bad(bytes: &[u8], name: &str, expect: &str) {
    let p = tmp(name);
    std::fs::write(&p, bytes).unwrap();
    let e = read_nifti(&p, &ReadOptions::default()).expect_err(expect).to_string();
    assert!(e.contains(&*p.to_string_lossy()), "error must name the file: {e}");
    assert!(e.to_lowercase().contains(&expect.to_lowercase()), "{name}: error {e:?} should say {expect:?}");
}

fn gz(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn bad_files_give_clear_errors() {
    let good = std::fs::read(fx("u8_ras.nii")).unwrap();
    let set_i16 = |o: usize, v: i16| {
        let mut b = good.clone();
        b[o..o + 2].copy_from_slice(&v.to_le_bytes());
        b
    };
    let set_f32 = |o: usize, v: f32| {
        let mut b = good.clone();
        b[o..o + 4].copy_from_slice(&v.to_le_bytes());
        b
    };
    bad(&good[..200], "short.nii", "truncated header");
    bad(&good[..good.len() - 10], "cut.nii", "truncated or lying header");
    bad(&[], "empty.nii", "truncated header");
    let mut m = good.clone();
    m[344..348].copy_from_slice(b"xyz\0");
    bad(&m, "magic.nii", "magic");
    let mut s = good.clone();
    s[0..4].copy_from_slice(&123i32.to_le_bytes());
    bad(&s, "size.nii", "header size");
    bad(&set_i16(40, 9), "ndim.nii", "dim[0] = 9");
    bad(&set_i16(40, 0), "ndim0.nii", "dim[0] = 0");
    bad(&set_i16(44, -4), "negdim.nii", "must be positive");
    bad(&set_i16(44, 0), "zerodim.nii", "must be positive");
    bad(&set_i16(42, 30000), "lying.nii", "truncated or lying header");
    bad(&set_i16(70, 99), "dtype.nii", "unsupported data type 99");
    bad(&set_i16(70, 128), "rgb.nii", "rgb24");
    bad(&set_f32(108, 1e6), "voxoff.nii", "truncated or lying header");
    bad(&set_f32(108, 12.0), "voxoff_small.nii", "vox_offset");
    // Spacing comes from the sform here: zero it.
    let mut z = good.clone();
    for o in [280usize, 296, 312] {
        z[o..o + 16].copy_from_slice(&[0u8; 16]);
    }
    bad(&z, "zero_spacing.nii", "spacing");
    let mut nan = good.clone();
    nan[280..284].copy_from_slice(&f32::NAN.to_le_bytes());
    bad(&nan, "nan_affine.nii", "non-finite");
    // Compressed: truncated and corrupt streams, and a header claiming far more than the stream holds.
    let gzd = std::fs::read(fx("i32.nii.gz")).unwrap();
    bad(&gzd[..gzd.len() / 2], "cut.nii.gz", "truncated");
    let mut corrupt = gzd.clone();
    for b in corrupt[20..60].iter_mut() {
        *b ^= 0x5a;
    }
    bad(&corrupt, "corrupt.nii.gz", "gzip");
    bad(&gz(&set_i16(42, 30000)), "lying.nii.gz", "truncated");
    bad(b"this is not gzip at all, just text", "text.nii.gz", "gzip");
    // Too large for the memory limit: refused before allocating.
    let p = tmp("huge.nii");
    let mut h = set_i16(42, 32767);
    h[44..46].copy_from_slice(&32767i16.to_le_bytes());
    h[46..48].copy_from_slice(&32767i16.to_le_bytes());
    std::fs::write(&p, &h).unwrap();
    let e = read_nifti(&p, &ReadOptions { max_bytes: 1 << 30, ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("limit"), "{e}");
    let e = read_nifti(Path::new("/nonexistent/x.nii"), &ReadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/x.nii") && e.contains("cannot open"), "{e}");
}


/// Colin27 T1 and the AAL atlas (Debian mricron-data); see `skip_or_fail` when not installed.
#[test]
fn mricron_volumes_load_inspect_and_round_trip() {
    let dir = Path::new("/usr/share/mricron/templates");
    if !dir.join("ch2.nii.gz").exists() {
        return unetr_testkit::skip_or_fail(module_path!(), "mricron-data", "apt-get install mricron-data");
    }
    for name in ["ch2.nii.gz", "aal.nii.gz", "ch2bet.nii.gz"] {
        let v = read_nifti(&dir.join(name), &ReadOptions::default()).unwrap();
        assert_eq!(v.shape(), [1, 181, 217, 181], "{name}");
        assert_eq!(v.orientation(), "RAS");
        assert_eq!([v.header.affine[0][3], v.header.affine[1][3], v.header.affine[2][3]], [-90.0, -125.0, -71.0]);
        assert_eq!(v.spacing(), [1.0, 1.0, 1.0]);
        if name == "aal.nii.gz" {
            let max = v.data.iter().fold(0f32, |a, &b| a.max(b));
            assert!(v.data.iter().all(|x| x.fract() == 0.0 && *x >= 0.0));
            assert!(max >= 90.0, "AAL should hold region indices, max {max}");
        }
        let p = tmp(name);
        write_nifti(&p, &v, name == "aal.nii.gz").unwrap();
        let r = read_nifti(&p, &ReadOptions::default()).unwrap();
        assert_eq!(r.data, v.data, "{name}");
        assert_eq!(r.header.affine, v.header.affine);
    }
    assert_eq!(orientation(&[[-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0]]), "LIA");
}
