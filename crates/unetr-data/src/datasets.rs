//! Real datasets that can be built offline (as MONAI's `monai.apps` datasets, minus the download).
//!
//! `colin27_lobes`: the Colin27 T1 brain with the AAL atlas grouped into 8 lobes (Debian's `mricron-data`,
//! /usr/share/mricron/templates): train on the left hemisphere, validate on the right one mirrored to look
//! like a left one. One real scan, so it tests generalisation across hemispheres, not across people.

use crate::error::{ferr, DataError, Result};
use crate::nifti::{read_nifti, write_nifti, ReadOptions, Volume};
use std::path::{Path, PathBuf};

/// The lobe classes: the first digit of each AAL region's code (2..9) becomes class 1..8.
pub const LOBES: [&str; 8] = ["frontal", "insula", "limbic", "occipital", "parietal", "deep grey", "temporal", "cerebellum"];

/// AAL index -> lobe class (0 = not a region) from `aal.nii.txt` ("index name code" per line).
fn aal_lobes(txt: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(txt).map_err(|e| ferr(txt, format!("cannot read: {e}")))?;
    let mut map = vec![0u8; 256];
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = (f.len() == 3).then(|| (f[0].parse::<usize>().ok(), f[2].chars().next().and_then(|c| c.to_digit(10)))).and_then(|(i, d)| Some((i?, d?)));
        match parsed {
            Some((i, d)) if i < 256 && (2..=9).contains(&d) => map[i] = (d - 1) as u8,
            _ => return Err(ferr(txt, format!("line {}: expected \"index name code\" with a code 2xxx..9xxx, got {line:?}", n + 1))),
        }
    }
    Ok(map)
}

/// Copies voxels i in `range` along the first axis (optionally mirrored: i -> n-1-i first).
fn slab(v: &Volume, range: std::ops::Range<usize>, mirror: bool) -> Vec<f32> {
    let [n, nj, nk] = v.header.dims;
    let plane = nj * nk;
    let mut out = Vec::with_capacity(range.len() * plane);
    for i in range {
        let src = if mirror { n - 1 - i } else { i };
        out.extend_from_slice(&v.data[src * plane..(src + 1) * plane]);
    }
    out
}

/// Writes `<out>/imagesTr/colin27_{left,right_mirrored}.nii.gz`, the matching lobe labels and a dataset.json
/// (training: left, validation: mirrored right). Each volume is the hemisphere cropped to the atlas' extent
/// plus `margin` voxels. Returns the dataset.json path.
pub fn colin27_lobes(templates: &Path, out: &Path, margin: usize) -> Result<PathBuf> {
    let opts = ReadOptions::default();
    let t1 = read_nifti(&templates.join("ch2.nii.gz"), &opts)?;
    let aal = read_nifti(&templates.join("aal.nii.gz"), &opts)?;
    let lobes = aal_lobes(&templates.join("aal.nii.txt"))?;
    if t1.header.dims != aal.header.dims {
        return Err(ferr(&templates.join("aal.nii.gz"), format!("grid {:?} differs from ch2.nii.gz's {:?}", aal.header.dims, t1.header.dims)));
    }
    if crate::nifti::orientation(&t1.header.affine) != "RAS" {
        return Err(ferr(&templates.join("ch2.nii.gz"), "expected a RAS grid (mricron's MNI templates are)"));
    }
    let mut lab = aal.clone();
    for x in lab.data.iter_mut() {
        *x = lobes.get(*x as usize).copied().unwrap_or(0) as f32;
    }
    // The midline: world x = 0 (MNI space); first-axis voxel index of x = 0.
    let a = t1.header.affine;
    let [n, nj, nk] = t1.header.dims;
    let mid = (-a[0][3] / a[0][0]).round();
    if !(mid > 0.0 && mid < n as f64 - 1.0) {
        return Err(DataError::Invalid(format!("world x = 0 is outside the volume (voxel {mid})")));
    }
    let mid = mid as usize;
    // Extent of the labels along each axis (the same box for both hemispheres after mirroring).
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    for (idx, &l) in lab.data.iter().enumerate() {
        if l > 0.0 {
            let p = [idx / (nj * nk), (idx / nk) % nj, idx % nk];
            for ax in 0..3 {
                lo[ax] = lo[ax].min(p[ax]);
                hi[ax] = hi[ax].max(p[ax] + 1);
            }
        }
    }
    if lo[0] == usize::MAX {
        return Err(ferr(&templates.join("aal.nii.gz"), "no labelled voxel"));
    }
    let left_lo = lo[0].min(n - 1 - (hi[0] - 1)).saturating_sub(margin);
    let start = [left_lo, lo[1].saturating_sub(margin), lo[2].saturating_sub(margin)];
    let end = [mid, (hi[1] + margin).min(nj), (hi[2] + margin).min(nk)];
    // Mirrored volume: voxel i' = n-1-i, world x' = -x, so the affine keeps its spacing and its x origin
    // becomes -(a00 (n-1) + a03): a RAS grid showing a left hemisphere.
    let mut mirrored_affine = a;
    mirrored_affine[0][3] = -(a[0][0] * (n - 1) as f64 + a[0][3]);
    std::fs::create_dir_all(out.join("imagesTr")).map_err(|e| ferr(out, e))?;
    std::fs::create_dir_all(out.join("labelsTr")).map_err(|e| ferr(out, e))?;
    let mut entries = Vec::new();
    for (name, mirror, affine) in [("colin27_left", false, a), ("colin27_right_mirrored", true, mirrored_affine)] {
        let mut pair = Vec::new();
        for (src, is_label) in [(&t1, false), (&lab, true)] {
            // Whole slabs of the hemisphere, then the box in the other two axes.
            let s = slab(src, start[0]..end[0], mirror);
            let d = [end[0] - start[0], end[1] - start[1], end[2] - start[2]];
            let mut data = Vec::with_capacity(d.iter().product());
            for i in 0..d[0] {
                for j in start[1]..end[1] {
                    let row = (i * nj + j) * nk;
                    data.extend_from_slice(&s[row + start[2]..row + end[2]]);
                }
            }
            let mut h = src.header.clone();
            h.dims = d;
            h.affine = affine;
            for r in 0..3 {
                h.affine[r][3] += (0..3).map(|c| affine[r][c] * start[c] as f64).sum::<f64>();
            }
            h.descrip = format!("{name} ({})", if is_label { "AAL lobes" } else { "Colin27 T1" });
            let dir = if is_label { "labelsTr" } else { "imagesTr" };
            let p = out.join(dir).join(format!("{name}.nii.gz"));
            write_nifti(&p, &Volume { data, header: h }, is_label)?;
            pair.push(format!("./{dir}/{name}.nii.gz"));
        }
        entries.push(serde_json::json!({"image": pair[0], "label": pair[1]}));
    }
    let labels: serde_json::Map<String, serde_json::Value> =
        std::iter::once(("0".to_string(), "background".into())).chain(LOBES.iter().enumerate().map(|(i, l)| ((i + 1).to_string(), (*l).into()))).collect();
    let json = serde_json::json!({
        "name": "Colin27 AAL lobes",
        "description": "Colin27 T1 (mricron-data) with AAL regions grouped into 8 lobes; training: left hemisphere, validation: right hemisphere mirrored",
        "modality": {"0": "MRI T1"},
        "labels": labels,
        "training": [entries[0]],
        "validation": [entries[1]],
    });
    let p = out.join("dataset.json");
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&json).unwrap()).map_err(|e| ferr(&tmp, e))?;
    std::fs::rename(&tmp, &p).map_err(|e| ferr(&p, e))?;
    Ok(p)
}
