//! Built-in phantom data (the default data of `cargo xtask train`): CT-like volumes with four labelled
//! organ-like structures, written as NIfTI plus a Decathlon `dataset.json`, deterministic from a seed.
//!
//! Liver and spleen share one intensity range (only shape and position tell them apart), the body
//! overlaps both, kidneys and spine are brighter; every case varies sizes, positions and rotations, adds
//! Gaussian noise and a smooth multiplicative bias field, uses anisotropic voxels (2 x 2 x 2.5 mm by
//! default) and stores its voxel axes in one of several orientations (the affine says which), so a pipeline must
//! reorient to RAS to see consistent anatomy.

use crate::error::{ferr, Result};
use crate::nifti::{write_nifti, Affine, Header, Volume};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

pub const CLASSES: [&str; 5] = ["background", "liver", "spleen", "kidney", "spine"];
/// The spleen stand-in's classes (MSD Task09's).
pub const SPLEEN_CLASSES: [&str; 2] = ["background", "spleen"];
/// The brain-tumour stand-in's classes, numbered as MONAI's MSD brain-tumour tutorial reads MSD Task01:
/// 1 peritumoral edema, 2 GD-enhancing tumour, 3 necrotic / non-enhancing tumour core.
pub const BRATS_CLASSES: [&str; 4] = ["background", "edema", "enhancing tumour", "non-enhancing tumour"];
/// The brain-tumour stand-in's modalities (channels), as MSD Task01's.
pub const BRATS_MODALITIES: [&str; 4] = ["FLAIR", "T1w", "t1gd", "T2w"];

/// Which phantom data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhantomKind {
    /// CT-like abdomen with liver, spleen, kidneys and spine.
    #[default]
    Ct,
    /// The same CT volumes labelled for the spleen only (MSD Task09's stand-in).
    Spleen,
    /// 4-channel MRI-like heads with a nested tumour (MSD Task01's stand-in).
    Brats,
}

impl PhantomKind {
    pub fn classes(self) -> &'static [&'static str] {
        match self {
            Self::Ct => &CLASSES,
            Self::Spleen => &SPLEEN_CLASSES,
            Self::Brats => &BRATS_CLASSES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PhantomConfig {
    pub cases: usize,
    pub validation: usize,
    pub test: usize,
    /// Voxels along the world x, y, z axes.
    pub size: [usize; 3],
    pub spacing: [f64; 3],
    pub seed: u64,
    pub noise_hu: f64,
    #[serde(default)]
    pub kind: PhantomKind,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        Self { cases: 16, validation: 4, test: 2, size: [48, 48, 32], spacing: [2.0, 2.0, 2.5], seed: 0, noise_hu: 20.0, kind: PhantomKind::Ct }
    }
}

struct Ellipsoid {
    c: [f64; 3],
    r: [f64; 3],
    /// Rotation about z (radians).
    a: f64,
}

impl Ellipsoid {
    fn inside(&self, p: [f64; 3]) -> bool {
        let (dx, dy, dz) = (p[0] - self.c[0], p[1] - self.c[1], p[2] - self.c[2]);
        let (s, c) = self.a.sin_cos();
        let (u, v) = (c * dx + s * dy, -s * dx + c * dy);
        (u / self.r[0]).powi(2) + (v / self.r[1]).powi(2) + (dz / self.r[2]).powi(2) <= 1.0
    }
}

/// Voxel-axis layouts: (world axis of voxel axis i/j/k, sign). Index 0 is RAS.
const LAYOUTS: [([usize; 3], [f64; 3]); 4] = [
    ([0, 1, 2], [1.0, 1.0, 1.0]),   // RAS
    ([0, 1, 2], [-1.0, -1.0, 1.0]), // LPS (DICOM-like)
    ([0, 1, 2], [-1.0, 1.0, 1.0]),  // LAS
    ([1, 0, 2], [1.0, -1.0, 1.0]),  // ALS: axes permuted
];

/// Case `index`'s stored grid: its dims and affine, voxel axis a running along world axis
/// `layout.0[a]` with sign `layout.1[a]` (the layouts cycle with the index), centred on the world origin.
fn stored_grid(cfg: &PhantomConfig, index: usize) -> ([usize; 3], Affine) {
    let layout = LAYOUTS[index % LAYOUTS.len()];
    let dims = [0, 1, 2].map(|a| cfg.size[layout.0[a]]);
    let mut affine: Affine = [[0.0; 4]; 3];
    for a in 0..3 {
        let w = layout.0[a];
        affine[w][a] = layout.1[a] * cfg.spacing[w];
        affine[w][3] += -layout.1[a] * cfg.spacing[w] * (cfg.size[w] as f64 - 1.0) / 2.0;
    }
    (dims, affine)
}

/// A standard normal draw by Box-Muller from the case's generator (keeps the whole volume deterministic).
fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// One case: (image, label), both in the case's stored orientation; the image has 4 channels for the
/// brain-tumour kind.
pub fn generate_case(cfg: &PhantomConfig, index: usize) -> (Volume, Volume) {
    match cfg.kind {
        PhantomKind::Ct => ct_case(cfg, index),
        PhantomKind::Spleen => {
            let (img, mut lab) = ct_case(cfg, index);
            lab.data.iter_mut().for_each(|v| *v = if *v == 2.0 { 1.0 } else { 0.0 });
            (img, lab)
        }
        PhantomKind::Brats => brats_case(cfg, index),
    }
}

/// A head (ellipsoid brain inside a skull shell) with a tumour: an edema blob holding a core whose rim
/// enhances; per modality the regions have their own contrasts (FLAIR: edema bright; T1w: core dark;
/// t1gd: enhancing rim bright; T2w: edema and core bright), plus noise and a bias field.
fn brats_case(cfg: &PhantomConfig, index: usize) -> (Volume, Volume) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003).wrapping_add(index as u64) ^ 0xB7A7);
    let mut j = |s: f64| rng.random_range(-s..=s);
    let half = [0, 1, 2].map(|a| cfg.size[a] as f64 * cfg.spacing[a] / 2.0);
    let brain = Ellipsoid { c: [j(2.0), j(2.0), j(2.0)], r: [half[0] * 0.8, half[1] * 0.85, half[2] * 0.8], a: j(0.1) };
    let tc = [j(0.35) * half[0], j(0.35) * half[1], j(0.3) * half[2]];
    let size = 0.18 + j(0.05);
    let edema = Ellipsoid { c: tc, r: [half[0] * size * 1.8, half[1] * size * 1.6, half[2] * size * 1.7], a: j(0.6) };
    let core = Ellipsoid { c: [tc[0] + j(1.5), tc[1] + j(1.5), tc[2] + j(1.5)], r: [half[0] * size, half[1] * size, half[2] * size], a: j(0.6) };
    let necrosis = Ellipsoid { c: core.c, r: core.r.map(|v| v * 0.55), a: core.a };
    // Intensities per class (background, brain, edema, enhancing, non-enhancing) and modality.
    let table: [[f64; 4]; 5] = [[0.0; 4], [300.0, 500.0, 480.0, 350.0], [700.0, 430.0, 470.0, 750.0], [500.0, 450.0, 950.0, 650.0], [420.0, 250.0, 380.0, 820.0]];
    let jitter = [0, 1, 2, 3].map(|_| 1.0 + j(0.1));
    let bias = (j(3.0), j(3.0), 0.06 + j(0.04).abs());
    let (dims, affine) = stored_grid(cfg, index);
    let n: usize = dims.iter().product();
    let (mut img, mut lab) = (vec![0f32; 4 * n], vec![0f32; n]);
    let noise = cfg.noise_hu;
    for i in 0..dims[0] {
        for jj in 0..dims[1] {
            for k in 0..dims[2] {
                let v = [i as f64, jj as f64, k as f64];
                let p = [0, 1, 2].map(|r| affine[r][0] * v[0] + affine[r][1] * v[1] + affine[r][2] * v[2] + affine[r][3]);
                let (class, row) = if necrosis.inside(p) {
                    (3, 4)
                } else if core.inside(p) {
                    (2, 3)
                } else if edema.inside(p) {
                    (1, 2)
                } else if brain.inside(p) {
                    (0, 1)
                } else {
                    (0, 0)
                };
                let field = 1.0 + bias.2 * (p[0] / 30.0 + bias.0).sin() * (p[1] / 25.0 + bias.1).cos();
                let idx = (i * dims[1] + jj) * dims[2] + k;
                for m in 0..4 {
                    let g = gaussian(&mut rng);
                    let base = table[row][m] * jitter[m];
                    img[m * n + idx] = if row == 0 { 0.0 } else { (base * field + noise * g).max(1.0) as f32 };
                }
                lab[idx] = class as f32;
            }
        }
    }
    let mut h = Header::new(dims, 4, affine);
    h.descrip = format!("unetr brain-tumour phantom seed {} case {index}", cfg.seed);
    let mut hl = Header::new(dims, 1, affine);
    hl.descrip = h.descrip.clone();
    (Volume { data: img, header: h }, Volume { data: lab, header: hl })
}

/// One CT case: (image in HU, label).
fn ct_case(cfg: &PhantomConfig, index: usize) -> (Volume, Volume) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
    let mut j = |s: f64| rng.random_range(-s..=s);
    let half = [0, 1, 2].map(|a| cfg.size[a] as f64 * cfg.spacing[a] / 2.0);
    let body = Ellipsoid { c: [j(2.0), j(2.0), 0.0], r: [half[0] * 0.85 + j(3.0), half[1] * 0.65 + j(3.0), half[2] * 1.5], a: j(0.1) };
    let liver = [
        Ellipsoid { c: [-14.0 + j(4.0), 4.0 + j(4.0), 4.0 + j(4.0)], r: [17.0 * (1.0 + j(0.15)), 13.0 * (1.0 + j(0.15)), 16.0 * (1.0 + j(0.15))], a: j(0.35) },
        Ellipsoid { c: [-4.0 + j(3.0), 10.0 + j(3.0), 10.0 + j(4.0)], r: [10.0 * (1.0 + j(0.2)), 7.0, 8.0], a: j(0.5) },
    ];
    let spleen = Ellipsoid { c: [20.0 + j(4.0), -4.0 + j(4.0), 8.0 + j(4.0)], r: [8.0 * (1.0 + j(0.2)), 6.0 * (1.0 + j(0.2)), 10.0 * (1.0 + j(0.2))], a: j(0.5) };
    let kz = j(4.0);
    let kidneys = [-1.0, 1.0].map(|s: f64| Ellipsoid {
        c: [s * (13.0 + j(2.0)), -13.0 + j(2.0), -6.0 + kz + j(2.0)],
        r: [4.5 * (1.0 + j(0.15)), 4.0 * (1.0 + j(0.15)), 8.0 * (1.0 + j(0.15))],
        a: s * 0.3 + j(0.2),
    });
    let spine = ([j(2.0), -24.0 + j(2.0)], 4.5 + j(1.0));
    let hu = [20.0 + j(10.0), 60.0 + j(8.0), 60.0 + j(8.0), 150.0 + j(15.0), 450.0 + j(50.0)];
    let bias = (j(3.0), j(3.0), 0.08 + j(0.05).abs());
    let noise = cfg.noise_hu;
    let (dims, affine) = stored_grid(cfg, index);
    let n = dims.iter().product();
    let (mut img, mut lab) = (vec![0f32; n], vec![0f32; n]);
    for i in 0..dims[0] {
        for jj in 0..dims[1] {
            for k in 0..dims[2] {
                let v = [i as f64, jj as f64, k as f64];
                let p = [0, 1, 2].map(|r| affine[r][0] * v[0] + affine[r][1] * v[1] + affine[r][2] * v[2] + affine[r][3]);
                let class = if (p[0] - spine.0[0]).hypot(p[1] - spine.0[1]) <= spine.1 {
                    4
                } else if kidneys.iter().any(|e| e.inside(p)) {
                    3
                } else if spleen.inside(p) {
                    2
                } else if liver.iter().any(|e| e.inside(p)) {
                    1
                } else {
                    0
                };
                let in_body = body.inside(p) || class > 0;
                let base = if class > 0 { hu[class] } else if in_body { hu[0] } else { -1000.0 };
                let field = 1.0 + bias.2 * (p[0] / 30.0 + bias.0).sin() * (p[1] / 25.0 + bias.1).cos();
                let g = gaussian(&mut rng);
                let idx = (i * dims[1] + jj) * dims[2] + k;
                img[idx] = (base * if in_body { field } else { 1.0 } + noise * g) as f32;
                lab[idx] = class as f32;
            }
        }
    }
    let mut h = Header::new(dims, 1, affine);
    h.descrip = format!("unetr phantom seed {} case {index}", cfg.seed);
    (Volume { data: img, header: h.clone() }, Volume { data: lab, header: h })
}

/// The record of how a phantom folder was generated (compared before a folder is reused).
pub const RECORD: &str = "phantom_config.json";

/// The configuration recorded in a phantom folder, if any.
pub fn recorded_config(dir: &Path) -> Option<PhantomConfig> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(RECORD)).ok()?).ok()
}

/// Writes `cfg.cases` cases as imagesTr/labelsTr NIfTI files plus `dataset.json` into `dir`.
/// The last `validation` + `test` cases form the validation and test splits. Returns the json's path.
pub fn write_dataset(cfg: &PhantomConfig, dir: &Path) -> Result<PathBuf> {
    if cfg.cases < cfg.validation + cfg.test + 1 {
        return Err(ferr(dir, format!("{} cases cannot hold {} validation + {} test + training cases", cfg.cases, cfg.validation, cfg.test)));
    }
    for sub in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| ferr(&dir.join(sub), format!("cannot create: {e}")))?;
    }
    let names: Vec<String> = (0..cfg.cases).map(|i| format!("phantom_{i:03}.nii.gz")).collect();
    let results: Vec<Result<()>> = {
        use rayon::prelude::*;
        (0..cfg.cases)
            .into_par_iter()
            .map(|i| {
                let (img, lab) = generate_case(cfg, i);
                write_nifti(&dir.join("imagesTr").join(&names[i]), &img, false)?;
                write_nifti(&dir.join("labelsTr").join(&names[i]), &lab, true)
            })
            .collect()
    };
    results.into_iter().collect::<Result<Vec<_>>>()?;
    let item = |i: usize| serde_json::json!({"image": format!("imagesTr/{}", names[i]), "label": format!("labelsTr/{}", names[i])});
    let n_train = cfg.cases - cfg.validation - cfg.test;
    let json = serde_json::json!({
        "name": "UNETR phantom",
        "description": format!("synthetic CT-like phantoms, seed {}", cfg.seed),
        "tensorImageSize": "3D",
        "modality": if cfg.kind == PhantomKind::Brats {
            BRATS_MODALITIES.iter().enumerate().map(|(i, c)| (i.to_string(), serde_json::Value::from(*c))).collect::<serde_json::Map<_, _>>()
        } else {
            serde_json::json!({"0": "CT"}).as_object().cloned().unwrap_or_default()
        },
        "labels": cfg.kind.classes().iter().enumerate().map(|(i, c)| (i.to_string(), serde_json::Value::from(*c))).collect::<serde_json::Map<_, _>>(),
        "numTraining": n_train,
        "training": (0..n_train).map(item).collect::<Vec<_>>(),
        "validation": (n_train..n_train + cfg.validation).map(item).collect::<Vec<_>>(),
        "test": (n_train + cfg.validation..cfg.cases).map(|i| serde_json::json!({"image": format!("imagesTr/{}", names[i]), "label": format!("labelsTr/{}", names[i])})).collect::<Vec<_>>(),
    });
    let path = dir.join("dataset.json");
    let tmp = dir.join("dataset.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&json).unwrap()).map_err(|e| ferr(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| ferr(&path, e))?;
    let rec = dir.join(RECORD);
    std::fs::write(&rec, serde_json::to_string_pretty(cfg).unwrap()).map_err(|e| ferr(&rec, e))?;
    Ok(path)
}
