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
use crate::transforms::{ForegroundCrop, Interp, PosNegCrop, Sample, RAS_LABELS};
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
fn one_usize() -> usize {
    1
}
fn three() -> usize {
    3
}
fn axes01() -> [usize; 2] {
    [0, 1]
}
fn yes() -> bool {
    true
}
fn ras_labels() -> [[char; 2]; 3] {
    RAS_LABELS
}
fn border() -> String {
    "border".into()
}

/// A value given once for every axis (or channel), or once per axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Copy> OneOrMany<T> {
    /// The value per axis for 3 axes; None when a list has another length.
    pub fn per_axis(&self) -> Option<[T; 3]> {
        match self {
            Self::One(v) => Some([*v; 3]),
            Self::Many(v) if v.len() == 3 => Some([v[0], v[1], v[2]]),
            _ => None,
        }
    }
    pub fn values(&self) -> Vec<T> {
        match self {
            Self::One(v) => vec![*v],
            Self::Many(v) => v.clone(),
        }
    }
}

/// MONAI's jitter range: `x` means (-x, x), or an explicit (lo, hi).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Jitter {
    Symmetric(f32),
    Range([f32; 2]),
}

impl Jitter {
    pub fn bounds(self) -> (f32, f32) {
        match self {
            Self::Symmetric(v) => (-v.abs(), v.abs()),
            Self::Range([a, b]) => (a, b),
        }
    }
}

/// Spacing's `mode`: one interpolation for image and label, or (image, label).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Modes {
    Both(Interp),
    PerKey([Interp; 2]),
}

impl<'de> Deserialize<'de> for Modes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Two(Vec<String>),
        }
        let interp = |m: &str| match m {
            "bilinear" => Ok(Interp::Bilinear),
            "nearest" => Ok(Interp::Nearest),
            o => Err(serde::de::Error::custom(format!("Spacing mode {o:?} is not supported (\"bilinear\" or \"nearest\")"))),
        };
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("Spacing mode: expected \"bilinear\", \"nearest\" or [image_mode, label_mode]"))? {
            Raw::One(m) => Ok(Self::Both(interp(&m)?)),
            Raw::Two(v) if v.len() == 2 => Ok(Self::PerKey([interp(&v[0])?, interp(&v[1])?])),
            Raw::Two(v) => Err(serde::de::Error::custom(format!("Spacing mode: {} values, expected one per key (image, label)", v.len()))),
        }
    }
}

impl Default for Modes {
    /// The research recipe's `mode=("bilinear", "nearest")`.
    fn default() -> Self {
        Self::PerKey([Interp::Bilinear, Interp::Nearest])
    }
}

/// CropForeground's `select_fn`: MONAI's `is_positive` (x > 0), or x > a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SelectFn {
    #[default]
    IsPositive,
    GreaterThan(f32),
}

impl SelectFn {
    pub fn threshold(self) -> f32 {
        match self {
            Self::IsPositive => 0.0,
            Self::GreaterThan(t) => t,
        }
    }
}

/// The built-in transforms with MONAI's names (the dictionary transform without its trailing `d`) and
/// MONAI's argument names and defaults. Intensity transforms act on the image, spatial ones on image and
/// label together (`keys` is implied). Every argument listed is honoured; any other is an error naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", deny_unknown_fields)]
pub enum TransformSpec {
    /// `labels`: per world axis, the letters of its negative and positive direction (MONAI's default
    /// `(("L", "R"), ("P", "A"), ("I", "S"))`).
    Orientation {
        axcodes: String,
        #[serde(default = "ras_labels")]
        labels: [[char; 2]; 3],
    },
    /// `mode`: "bilinear" / "nearest", or one per key [image, label] (default ["bilinear", "nearest"]).
    /// Only MONAI's defaults `align_corners = false` and `padding_mode = "border"` are implemented.
    Spacing {
        pixdim: [f64; 3],
        #[serde(default)]
        mode: Modes,
        #[serde(default)]
        align_corners: bool,
        #[serde(default = "border")]
        padding_mode: String,
    },
    ScaleIntensityRange { a_min: f32, a_max: f32, b_min: f32, b_max: f32, #[serde(default)] clip: bool },
    /// `subtrahend` / `divisor`: one value, or one per channel with `channel_wise`.
    NormalizeIntensity {
        #[serde(default)]
        nonzero: bool,
        #[serde(default)]
        channel_wise: bool,
        #[serde(default)]
        subtrahend: Option<OneOrMany<f32>>,
        #[serde(default)]
        divisor: Option<OneOrMany<f32>>,
    },
    /// Foreground from the image (`source_key = "image"`).
    CropForeground {
        #[serde(default)]
        select_fn: SelectFn,
        #[serde(default = "zero_margin")]
        margin: OneOrMany<usize>,
        #[serde(default)]
        allow_smaller: bool,
        #[serde(default = "one_k")]
        k_divisible: OneOrMany<usize>,
        #[serde(default = "image_key")]
        source_key: String,
    },
    SpatialPad { spatial_size: [usize; 3] },
    /// `image_key = "image"` restricts background centres to voxels where the image is above
    /// `image_threshold` (MONAI's `map_binary_to_indices`).
    RandCropByPosNegLabel {
        spatial_size: [usize; 3],
        #[serde(default = "one")]
        pos: f64,
        #[serde(default = "one")]
        neg: f64,
        #[serde(default = "one_usize")]
        num_samples: usize,
        #[serde(default)]
        image_key: Option<String>,
        #[serde(default)]
        image_threshold: f32,
        #[serde(default)]
        allow_smaller: bool,
        #[serde(default = "label_key")]
        label_key: String,
    },
    /// random_center only (random_size = False).
    RandSpatialCrop {
        roi_size: [usize; 3],
        #[serde(default = "yes")]
        random_center: bool,
        #[serde(default)]
        random_size: bool,
    },
    /// `spatial_axis`: one axis or several flipped together.
    RandFlip { spatial_axis: OneOrMany<usize>, prob: f64 },
    /// Skipped on crops whose two axes differ in size, so that a batch still stacks.
    RandRotate90 { prob: f64, #[serde(default = "three")] max_k: usize, #[serde(default = "axes01")] spatial_axes: [usize; 2] },
    RandScaleIntensity { factors: Jitter, prob: f64 },
    RandShiftIntensity { offsets: Jitter, prob: f64 },
}

fn zero_margin() -> OneOrMany<usize> {
    OneOrMany::One(0)
}
fn one_k() -> OneOrMany<usize> {
    OneOrMany::One(1)
}
fn image_key() -> String {
    "image".into()
}
fn label_key() -> String {
    "label".into()
}

impl TransformSpec {
    /// Checks arguments that would otherwise fail in the middle of training.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::Invalid(format!("transform {}: {m}", self.name())));
        match self {
            Self::Orientation { axcodes, labels } => crate::transforms::check_axcodes_with(axcodes, labels),
            Self::Spacing { pixdim, .. } if pixdim.iter().any(|&p| !(p > 0.0 && p.is_finite())) => bad(format!("pixdim {pixdim:?} must be positive")),
            Self::Spacing { align_corners: true, .. } => bad("align_corners = true is not supported (MONAI's default false is)".into()),
            Self::Spacing { padding_mode, .. } if padding_mode != "border" => bad(format!("padding_mode = {padding_mode:?} is not supported (MONAI's default \"border\" is)")),
            Self::ScaleIntensityRange { a_min, a_max, .. } if a_min == a_max || !a_min.is_finite() || !a_max.is_finite() => bad("a_min and a_max must differ".into()),
            Self::NormalizeIntensity { channel_wise, subtrahend, divisor, .. } => {
                for (n, v) in [("subtrahend", subtrahend), ("divisor", divisor)] {
                    if let Some(v) = v {
                        let vals = v.values();
                        if vals.iter().any(|x| !x.is_finite()) || (n == "divisor" && vals.contains(&0.0)) {
                            return bad(format!("{n} {vals:?} must be finite (and non-zero for the divisor)"));
                        }
                        if vals.len() > 1 && !channel_wise {
                            return bad(format!("{n} has {} values: one per channel needs channel_wise = true", vals.len()));
                        }
                    }
                }
                Ok(())
            }
            Self::CropForeground { margin, k_divisible, source_key, .. } => {
                if margin.per_axis().is_none() || k_divisible.per_axis().is_none_or(|k| k.contains(&0)) {
                    bad("margin and k_divisible take one value or three (k_divisible >= 1)".into())
                } else if source_key != "image" {
                    bad(format!("source_key = {source_key:?}: the foreground comes from \"image\""))
                } else {
                    Ok(())
                }
            }
            Self::RandCropByPosNegLabel { spatial_size, pos, neg, num_samples, image_key, image_threshold, label_key, .. } => {
                if spatial_size.contains(&0) || *num_samples == 0 || !(*pos >= 0.0 && *neg >= 0.0 && pos + neg > 0.0) {
                    bad("needs a non-zero spatial_size and num_samples, and pos, neg >= 0 with pos + neg > 0".into())
                } else if image_key.as_deref().is_some_and(|k| k != "image") || label_key != "label" {
                    bad(format!("image_key = {image_key:?}, label_key = {label_key:?}: the keys are \"image\" and \"label\""))
                } else if !image_threshold.is_finite() {
                    bad(format!("image_threshold = {image_threshold}: must be finite"))
                } else {
                    Ok(())
                }
            }
            Self::RandSpatialCrop { random_center: false, .. } | Self::RandSpatialCrop { random_size: true, .. } => bad("only random_center = true, random_size = false is supported".into()),
            Self::RandSpatialCrop { roi_size, .. } | Self::SpatialPad { spatial_size: roi_size } if roi_size.contains(&0) => bad("size must be non-zero".into()),
            Self::RandFlip { spatial_axis, .. } if spatial_axis.values().iter().any(|&a| a > 2) || spatial_axis.values().is_empty() => bad("spatial_axis must be 0, 1 or 2 (or a list of them)".into()),
            Self::RandFlip { prob, .. } | Self::RandRotate90 { prob, .. } | Self::RandScaleIntensity { prob, .. } | Self::RandShiftIntensity { prob, .. }
                if !(0.0..=1.0).contains(prob) =>
            {
                bad(format!("prob = {prob}: must be in [0, 1]"))
            }
            Self::RandScaleIntensity { factors, .. } => {
                let (lo, hi) = factors.bounds();
                if !(lo.is_finite() && hi.is_finite() && lo <= hi && lo > -1.0) {
                    bad(format!("factors {factors:?}: need lo <= hi and lo > -1 (a scale of 1 + f)"))
                } else {
                    Ok(())
                }
            }
            Self::RandShiftIntensity { offsets, .. } => {
                let (lo, hi) = offsets.bounds();
                if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                    bad(format!("offsets {offsets:?}: need finite lo <= hi"))
                } else {
                    Ok(())
                }
            }
            Self::RandRotate90 { max_k, .. } if !(1..=3).contains(max_k) => bad(format!("max_k = {max_k}: must be 1, 2 or 3")),
            Self::RandRotate90 { spatial_axes, .. } if spatial_axes[0] > 2 || spatial_axes[1] > 2 || spatial_axes[0] == spatial_axes[1] => bad("spatial_axes must be two different axes of 0..3".into()),
            _ => Ok(()),
        }
    }

    /// MONAI's name of the transform.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Orientation { .. } => "Orientation",
            Self::Spacing { .. } => "Spacing",
            Self::ScaleIntensityRange { .. } => "ScaleIntensityRange",
            Self::NormalizeIntensity { .. } => "NormalizeIntensity",
            Self::CropForeground { .. } => "CropForeground",
            Self::SpatialPad { .. } => "SpatialPad",
            Self::RandCropByPosNegLabel { .. } => "RandCropByPosNegLabel",
            Self::RandSpatialCrop { .. } => "RandSpatialCrop",
            Self::RandFlip { .. } => "RandFlip",
            Self::RandRotate90 { .. } => "RandRotate90",
            Self::RandScaleIntensity { .. } => "RandScaleIntensity",
            Self::RandShiftIntensity { .. } => "RandShiftIntensity",
        }
    }
}

impl Transform for TransformSpec {
    fn apply(&self, s: Sample, rng: &mut ChaCha8Rng) -> Result<Vec<Sample>> {
        Ok(vec![match self {
            Self::Orientation { axcodes, labels } => s.orient_with(axcodes, labels)?,
            Self::Spacing { pixdim, mode, .. } => {
                let (i, l) = match *mode {
                    Modes::Both(m) => (m, m),
                    Modes::PerKey([a, b]) => (a, b),
                };
                s.resample_spacing_with(*pixdim, i, l)?
            }
            Self::ScaleIntensityRange { a_min, a_max, b_min, b_max, clip } => s.scale_intensity_range(*a_min, *a_max, *b_min, *b_max, *clip),
            Self::NormalizeIntensity { nonzero, channel_wise, subtrahend, divisor } => {
                for v in [subtrahend, divisor].into_iter().flatten() {
                    let n = v.values().len();
                    if n > 1 && n != s.channels {
                        return Err(crate::error::ferr(&s.source, format!("NormalizeIntensity: {n} per-channel values for {} channel(s)", s.channels)));
                    }
                }
                let (sub, div) = (subtrahend.as_ref().map(OneOrMany::values), divisor.as_ref().map(OneOrMany::values));
                s.normalize_intensity_with(*nonzero, *channel_wise, sub.as_deref(), div.as_deref())
            }
            Self::CropForeground { select_fn, margin, allow_smaller, k_divisible, .. } => s.crop_foreground_with(&ForegroundCrop {
                margin: margin.per_axis().unwrap_or([0; 3]),
                threshold: select_fn.threshold(),
                allow_smaller: *allow_smaller,
                k_divisible: k_divisible.per_axis().unwrap_or([1; 3]),
            }),
            Self::SpatialPad { spatial_size } => {
                s.check_size(padded(s.dims, *spatial_size), &format!("SpatialPad to spatial_size {spatial_size:?}"))?;
                s.pad_to(*spatial_size)
            }
            Self::RandCropByPosNegLabel { spatial_size, pos, neg, num_samples, image_key, image_threshold, allow_smaller, .. } => {
                let c = PosNegCrop {
                    roi: *spatial_size,
                    pos: *pos,
                    neg: *neg,
                    num_samples: *num_samples,
                    image_threshold: image_key.as_ref().map(|_| *image_threshold),
                    allow_smaller: *allow_smaller,
                };
                return s.rand_crop_pos_neg_with(&c, rng);
            }
            Self::RandSpatialCrop { roi_size, .. } => {
                s.check_size(padded(s.dims, *roi_size), &format!("RandSpatialCrop with roi_size {roi_size:?}"))?;
                s.rand_spatial_crop(*roi_size, rng)
            }
            Self::RandFlip { spatial_axis, prob } => s.rand_flip_axes(&spatial_axis.values(), *prob, rng),
            Self::RandRotate90 { prob, max_k, spatial_axes: [a0, a1] } => {
                if s.dims[*a0] == s.dims[*a1] {
                    s.rand_rotate90(*prob, *max_k, (*a0, *a1), rng)
                } else {
                    s
                }
            }
            Self::RandScaleIntensity { factors, prob } => {
                let (lo, hi) = factors.bounds();
                s.rand_scale_intensity_in(lo, hi, *prob, rng)
            }
            Self::RandShiftIntensity { offsets, prob } => {
                let (lo, hi) = offsets.bounds();
                s.rand_shift_intensity_in(lo, hi, *prob, rng)
            }
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
