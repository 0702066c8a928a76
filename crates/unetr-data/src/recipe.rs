//! The `[transforms]` section of a training config: the research recipe's preprocessing and augmentation
//! (MONAI research-contributions, UNETR/BTCV) as named fields, or any MONAI-style transform list.

use crate::error::Result;
use crate::limits::MemoryLimit;
use crate::nifti::{NonFinite, ReadOptions};
use crate::pipeline::{Compose, Jitter, Modes, OneOrMany, SelectFn, TransformSpec};
use crate::validate::Checks;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformConfig {
    /// Spacing: resample to `pixdim` mm (trilinear images, nearest labels).
    pub spacing: bool,
    pub pixdim: [f64; 3],
    /// ScaleIntensityRange.
    pub a_min: f32,
    pub a_max: f32,
    pub b_min: f32,
    pub b_max: f32,
    pub clip: bool,
    /// CropForeground (image > 0 after the intensity scaling), with a margin in voxels.
    pub crop_foreground: bool,
    pub crop_foreground_margin: usize,
    /// RandRotate90 in the first two spatial axes, k in 1..=3.
    pub rotate90_prob: f64,
    /// RandCropByPosNegLabel.
    pub roi: [usize; 3],
    pub num_samples: usize,
    pub pos: f64,
    pub neg: f64,
    /// Background crop centres only where the image is above this (the recipe's `image_key="image",
    /// image_threshold=0`); none: every label-0 voxel.
    pub image_threshold: Option<f32>,
    /// RandFlip per axis.
    pub flip_prob: f64,
    /// RandScaleIntensity / RandShiftIntensity.
    pub intensity_prob: f64,
    pub intensity_scale: f32,
    pub intensity_shift: f32,
    /// A MONAI-style transform list (`[[transforms.pipeline]]` entries with `name = "Orientation"`, ...)
    /// replacing the fields above; `roi` stays the model's input size and the validation window.
    pub pipeline: Option<Vec<TransformSpec>>,
    /// Bytes of preprocessed training volumes kept in memory (CacheDataset); the rest is recomputed per use.
    pub cache_bytes: u64,
    /// NaN/Inf voxels in inputs: "fail", or { replace = value }.
    pub nonfinite: NonFinite,
}
impl Default for TransformConfig {
    /// The research recipe's values (BTCV CT window, 96^3 crops, 4 samples, pos = neg = 1, background
    /// centres inside the body).
    fn default() -> Self {
        Self {
            spacing: true,
            pixdim: [1.5, 1.5, 2.0],
            a_min: -175.0,
            a_max: 250.0,
            b_min: 0.0,
            b_max: 1.0,
            clip: true,
            crop_foreground: true,
            crop_foreground_margin: 0,
            rotate90_prob: 0.2,
            roi: [96; 3],
            num_samples: 4,
            pos: 1.0,
            neg: 1.0,
            image_threshold: Some(0.0),
            flip_prob: 0.2,
            intensity_prob: 0.1,
            intensity_scale: 0.1,
            intensity_shift: 0.1,
            pipeline: None,
            cache_bytes: 4 << 30,
            nonfinite: NonFinite::Fail,
        }
    }
}

impl TransformConfig {
    /// The pipeline: `pipeline` when given, else the research recipe's transforms from the fields above.
    pub fn specs(&self) -> Vec<TransformSpec> {
        if let Some(p) = &self.pipeline {
            return p.clone();
        }
        use TransformSpec as T;
        let mut v = vec![T::Orientation { axcodes: "RAS".into(), labels: crate::transforms::RAS_LABELS }];
        if self.spacing {
            v.push(T::Spacing { pixdim: self.pixdim, mode: Modes::default(), align_corners: false, padding_mode: "border".into() });
        }
        v.push(T::ScaleIntensityRange { a_min: self.a_min, a_max: self.a_max, b_min: self.b_min, b_max: self.b_max, clip: self.clip });
        if self.crop_foreground {
            v.push(T::CropForeground {
                select_fn: SelectFn::IsPositive,
                margin: OneOrMany::One(self.crop_foreground_margin),
                allow_smaller: false,
                k_divisible: OneOrMany::One(1),
                source_key: "image".into(),
            });
        }
        // A no-op for volumes at least the roi's size (all of BTCV); MONAI's crop refuses smaller ones, which
        // the research recipe never meets, so padding them keeps small data usable without changing the rest.
        v.push(T::SpatialPad { spatial_size: self.roi });
        v.push(T::RandCropByPosNegLabel {
            spatial_size: self.roi,
            pos: self.pos,
            neg: self.neg,
            num_samples: self.num_samples,
            image_key: self.image_threshold.map(|_| "image".into()),
            image_threshold: self.image_threshold.unwrap_or(0.0),
            allow_smaller: false,
            label_key: "label".into(),
        });
        if self.flip_prob > 0.0 {
            v.extend((0..3).map(|a| T::RandFlip { spatial_axis: OneOrMany::One(a), prob: self.flip_prob }));
        }
        if self.rotate90_prob > 0.0 {
            v.push(T::RandRotate90 { prob: self.rotate90_prob, max_k: 3, spatial_axes: [0, 1] });
        }
        if self.intensity_prob > 0.0 {
            v.push(T::RandScaleIntensity { factors: Jitter::Symmetric(self.intensity_scale), prob: self.intensity_prob });
            v.push(T::RandShiftIntensity { offsets: Jitter::Symmetric(self.intensity_shift), prob: self.intensity_prob });
        }
        v
    }
    pub fn compose(&self) -> Result<Compose> {
        Compose::from_specs(&self.specs())
    }
    /// How inputs are read: the non-finite policy and the memory limit.
    pub fn read_options(&self, limit: MemoryLimit) -> ReadOptions {
        ReadOptions { nonfinite: self.nonfinite, max_bytes: limit.bytes_usize() }
    }

    /// Every field's range, and every pipeline entry's arguments; problems go to `c`, named `transforms.*`.
    pub fn check(&self, c: &mut Checks) {
        for (a, &p) in self.pixdim.iter().enumerate() {
            c.positive(&format!("transforms.pixdim[{a}]"), p);
        }
        if !(self.a_min.is_finite() && self.a_max.is_finite() && self.a_min != self.a_max) {
            c.fail(format!("transforms.a_min = {}, a_max = {}: must be finite and differ", self.a_min, self.a_max));
        }
        if !(self.b_min.is_finite() && self.b_max.is_finite()) {
            c.fail(format!("transforms.b_min = {}, b_max = {}: must be finite", self.b_min, self.b_max));
        }
        for (a, &r) in self.roi.iter().enumerate() {
            c.count(&format!("transforms.roi[{a}]"), r as u64, 1, 4096);
        }
        c.count("transforms.num_samples", self.num_samples as u64, 1, 1024);
        c.within("transforms.pos", self.pos, 0.0, f64::MAX).within("transforms.neg", self.neg, 0.0, f64::MAX);
        if self.pos + self.neg <= 0.0 {
            c.fail(format!("transforms.pos = {}, neg = {}: their sum must be positive", self.pos, self.neg));
        }
        c.within("transforms.flip_prob", self.flip_prob, 0.0, 1.0)
            .within("transforms.rotate90_prob", self.rotate90_prob, 0.0, 1.0)
            .within("transforms.intensity_prob", self.intensity_prob, 0.0, 1.0)
            .within_open("transforms.intensity_scale", self.intensity_scale as f64, 0.0, 1.0)
            .within("transforms.intensity_shift", self.intensity_shift as f64, 0.0, f64::MAX);
        if let NonFinite::Replace(v) = self.nonfinite {
            if !v.is_finite() {
                c.fail(format!("transforms.nonfinite = {{ replace = {v} }}: the replacement must be finite"));
            }
        }
        if let Some(p) = &self.pipeline {
            for (i, spec) in p.iter().enumerate() {
                if let Err(e) = spec.validate() {
                    c.fail(format!("transforms.pipeline[{i}]: {e}"));
                }
            }
        }
    }
}

