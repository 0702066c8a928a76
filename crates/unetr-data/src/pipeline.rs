//! Transforms behind one trait, composable from a config as MONAI's `Compose([...])`: each entry names a
//! MONAI dictionary transform (without the trailing `d`) and takes MONAI's argument names, e.g. in TOML
//!
//! ```toml
//! [[transforms.pipeline]]
//! name = "Orientation"
//! axcodes = "RAS"
//! [[transforms.pipeline]]
//! name = "RandCropByPosNegLabel"
//! spatial_size = [96, 96, 96]
//! pos = 1.0
//! neg = 1.0
//! num_samples = 4
//! ```
//!
//! As MONAI's CacheDataset, everything before the first random transform is deterministic and cached;
//! the rest runs per draw with a seeded RNG.

use crate::error::{DataError, Result};
use crate::transforms::Sample;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One step of a pipeline: a sample in, one or more out (multi-sample crops).
pub trait Transform: Send + Sync + std::fmt::Debug {
    fn apply(&self, s: Sample, rng: &mut ChaCha8Rng) -> Result<Vec<Sample>>;
    /// Random transforms end the cached (deterministic) prefix of a pipeline.
    fn is_random(&self) -> bool;
}

fn one() -> f64 {
    1.0
}

/// The built-in transforms with MONAI's names and argument names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", deny_unknown_fields)]
pub enum TransformSpec {
    Orientation { axcodes: String },
    /// Trilinear for images, nearest for labels.
    Spacing { pixdim: [f64; 3] },
    ScaleIntensityRange { a_min: f32, a_max: f32, b_min: f32, b_max: f32, #[serde(default)] clip: bool },
    NormalizeIntensity { #[serde(default)] nonzero: bool, #[serde(default)] channel_wise: bool },
    /// Foreground: any image channel > 0.
    CropForeground { #[serde(default)] margin: usize },
    SpatialPad { spatial_size: [usize; 3] },
    RandCropByPosNegLabel { spatial_size: [usize; 3], #[serde(default = "one")] pos: f64, #[serde(default = "one")] neg: f64, #[serde(default = "one_usize")] num_samples: usize },
    /// random_center only (random_size = False).
    RandSpatialCrop { roi_size: [usize; 3] },
    RandFlip { spatial_axis: usize, prob: f64 },
    /// Skipped on crops whose two axes differ in size, so that a batch still stacks.
    RandRotate90 { prob: f64, #[serde(default = "three")] max_k: usize, #[serde(default = "axes01")] spatial_axes: [usize; 2] },
    RandScaleIntensity { factors: f32, prob: f64 },
    RandShiftIntensity { offsets: f32, prob: f64 },
}

fn one_usize() -> usize {
    1
}
fn three() -> usize {
    3
}
fn axes01() -> [usize; 2] {
    [0, 1]
}

impl TransformSpec {
    /// Checks arguments that would otherwise fail in the middle of training.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::Invalid(format!("transform {self:?}: {m}")));
        match self {
            Self::Spacing { pixdim } if pixdim.iter().any(|&p| !(p > 0.0 && p.is_finite())) => bad("pixdim must be positive".into()),
            Self::ScaleIntensityRange { a_min, a_max, .. } if a_min == a_max || !a_min.is_finite() || !a_max.is_finite() => bad("a_min and a_max must differ".into()),
            Self::RandCropByPosNegLabel { spatial_size, pos, neg, num_samples } => {
                if spatial_size.contains(&0) || *num_samples == 0 || !(*pos >= 0.0 && *neg >= 0.0 && pos + neg > 0.0) {
                    bad("needs a non-zero spatial_size and num_samples, and pos, neg >= 0 with pos + neg > 0".into())
                } else {
                    Ok(())
                }
            }
            Self::RandSpatialCrop { roi_size } | Self::SpatialPad { spatial_size: roi_size } if roi_size.contains(&0) => bad("size must be non-zero".into()),
            Self::RandFlip { spatial_axis, .. } if *spatial_axis > 2 => bad("spatial_axis must be 0, 1 or 2".into()),
            Self::RandFlip { prob, .. } | Self::RandRotate90 { prob, .. } | Self::RandScaleIntensity { prob, .. } | Self::RandShiftIntensity { prob, .. }
                if !(0.0..=1.0).contains(prob) =>
            {
                bad(format!("prob = {prob}: must be in [0, 1]"))
            }
            Self::RandScaleIntensity { factors, .. } if !(0.0..1.0).contains(factors) => bad(format!("factors = {factors}: must be in [0, 1) (a scale of 1 + f, f in [-factors, factors])")),
            Self::RandShiftIntensity { offsets, .. } if !(offsets.is_finite() && *offsets >= 0.0) => bad(format!("offsets = {offsets}: must be >= 0")),
            Self::RandRotate90 { max_k, .. } if !(1..=3).contains(max_k) => bad(format!("max_k = {max_k}: must be 1, 2 or 3")),
            Self::RandRotate90 { spatial_axes, .. } if spatial_axes[0] > 2 || spatial_axes[1] > 2 || spatial_axes[0] == spatial_axes[1] => bad("spatial_axes must be two different axes of 0..3".into()),
            Self::Orientation { axcodes } => crate::transforms::check_axcodes(axcodes),
            _ => Ok(()),
        }
    }
}

impl Transform for TransformSpec {
    fn apply(&self, s: Sample, rng: &mut ChaCha8Rng) -> Result<Vec<Sample>> {
        Ok(vec![match self {
            Self::Orientation { axcodes } => s.orient(axcodes)?,
            Self::Spacing { pixdim } => s.resample_spacing(*pixdim)?,
            Self::ScaleIntensityRange { a_min, a_max, b_min, b_max, clip } => s.scale_intensity_range(*a_min, *a_max, *b_min, *b_max, *clip),
            Self::NormalizeIntensity { nonzero, channel_wise } => s.normalize_intensity(*nonzero, *channel_wise),
            Self::CropForeground { margin } => s.crop_foreground(*margin),
            Self::SpatialPad { spatial_size } => {
                s.check_size(padded(s.dims, *spatial_size), &format!("SpatialPad to spatial_size {spatial_size:?}"))?;
                s.pad_to(*spatial_size)
            }
            Self::RandCropByPosNegLabel { spatial_size, pos, neg, num_samples } => {
                s.check_size(padded(s.dims, *spatial_size), &format!("RandCropByPosNegLabel with spatial_size {spatial_size:?}"))?;
                return s.rand_crop_pos_neg(*spatial_size, *pos, *neg, *num_samples, rng);
            }
            Self::RandSpatialCrop { roi_size } => {
                s.check_size(padded(s.dims, *roi_size), &format!("RandSpatialCrop with roi_size {roi_size:?}"))?;
                s.rand_spatial_crop(*roi_size, rng)
            }
            Self::RandFlip { spatial_axis, prob } => s.rand_flip(*spatial_axis, *prob, rng),
            Self::RandRotate90 { prob, max_k, spatial_axes: [a0, a1] } => {
                if s.dims[*a0] == s.dims[*a1] {
                    s.rand_rotate90(*prob, *max_k, (*a0, *a1), rng)
                } else {
                    s
                }
            }
            Self::RandScaleIntensity { factors, prob } => s.rand_scale_intensity(*factors, *prob, rng),
            Self::RandShiftIntensity { offsets, prob } => s.rand_shift_intensity(*offsets, *prob, rng),
        }])
    }

    fn is_random(&self) -> bool {
        matches!(
            self,
            Self::RandCropByPosNegLabel { .. } | Self::RandSpatialCrop { .. } | Self::RandFlip { .. } | Self::RandRotate90 { .. } | Self::RandScaleIntensity { .. } | Self::RandShiftIntensity { .. }
        )
    }
}

/// The size of a volume of `dims` padded to at least `size` on every axis.
fn padded(dims: [usize; 3], size: [usize; 3]) -> [usize; 3] {
    [0, 1, 2].map(|a| dims[a].max(size[a]))
}

/// A sequence of transforms; the deterministic prefix is what a cache stores.
#[derive(Debug, Default)]
pub struct Compose {
    pub transforms: Vec<Box<dyn Transform>>,
}

impl Compose {
    pub fn new(transforms: Vec<Box<dyn Transform>>) -> Self {
        Self { transforms }
    }

    /// From config entries, each validated.
    pub fn from_specs(specs: &[TransformSpec]) -> Result<Self> {
        for s in specs {
            s.validate()?;
        }
        Ok(Self::new(specs.iter().cloned().map(|s| Box::new(s) as Box<dyn Transform>).collect()))
    }

    /// Index of the first random transform (the length of the cacheable prefix).
    pub fn first_random(&self) -> usize {
        self.transforms.iter().position(|t| t.is_random()).unwrap_or(self.transforms.len())
    }

    fn run(&self, range: std::ops::Range<usize>, s: Sample, rng: &mut ChaCha8Rng) -> Result<Vec<Sample>> {
        let mut cur = vec![s];
        for t in &self.transforms[range] {
            let mut next = Vec::with_capacity(cur.len());
            for s in cur {
                next.extend(t.apply(s, rng)?);
            }
            cur = next;
        }
        Ok(cur)
    }

    /// The deterministic prefix; it must keep one sample.
    pub fn apply_deterministic(&self, s: Sample) -> Result<Sample> {
        let mut rng = rand::SeedableRng::seed_from_u64(0);
        let mut v = self.run(0..self.first_random(), s, &mut rng)?;
        match v.len() {
            1 => Ok(v.pop().unwrap()),
            n => Err(DataError::Invalid(format!("the deterministic transforms made {n} samples from one"))),
        }
    }

    /// The random rest.
    pub fn apply_random(&self, s: Sample, rng: &mut ChaCha8Rng) -> Result<Vec<Sample>> {
        self.run(self.first_random()..self.transforms.len(), s, rng)
    }

    /// Everything.
    pub fn apply(&self, s: Sample, rng: &mut ChaCha8Rng) -> Result<Vec<Sample>> {
        self.run(0..self.transforms.len(), s, rng)
    }
}
