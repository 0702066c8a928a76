//! A trained UNETR applied to volumes as MONAI's inference recipe does: the training config's deterministic
//! preprocessing, sliding-window inference (optionally averaged over mirror flips), and the result mapped
//! back to the input's grid (probabilities resampled, then the argmax, as MONAI's `Invertd` + `AsDiscrete`).

use crate::checkpoint::Checkpoint;
use crate::error::{ferr, InferError, Result};
use crate::inferers::{sliding_window_inference, Blend, SlidingWindow};
use crate::labels::LabelMode;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use unetr_data::nifti::Volume;
use unetr_data::transforms::{load_item, Applied, Sample};
use unetr_data::{Item, MemoryLimit, TransformConfig};
use unetr_model::Unetr;

/// Test-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    #[default]
    Off,
    /// Logits averaged over the identity and a mirror flip of each spatial axis.
    Flips,
}

/// The sliding-window settings a checkpoint was validated with (the `[validation]` section of its
/// training config; other keys of that section are ignored here).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct WindowSettings {
    pub overlap: f64,
    pub sw_batch: usize,
    pub blend: Blend,
}

impl Default for WindowSettings {
    fn default() -> Self {
        Self { overlap: 0.5, sw_batch: 4, blend: Blend::Gaussian }
    }
}

/// A prediction on the preprocessed grid.
pub struct Prediction {
    /// Argmax labels, [D, H, W] flattened.
    pub labels: Vec<f32>,
    /// [1, K, D, H, W].
    pub logits: Tensor,
}

/// A prediction mapped back to the input's grid.
pub struct Segmentation {
    /// The label map, with the input's header geometry.
    pub labels: Volume,
    /// Softmax probabilities, one channel per class (when asked for).
    pub probabilities: Option<Volume>,
}

/// Whether [`Predictor::segment`] also returns the probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probabilities {
    Skip,
    Keep,
}

pub struct Predictor {
    pub model: Unetr,
    pub transforms: TransformConfig,
    pub window: WindowSettings,
    pub limit: MemoryLimit,
    /// What the output channels mean (classes, or regions as for brain tumours).
    pub labels: LabelMode,
}

impl Predictor {
    /// The model, preprocessing and window settings of a checkpoint folder (recovered first if a write
    /// was interrupted), the weights on `device`.
    pub fn from_checkpoint(dir: &std::path::Path, device: &Device, limit: MemoryLimit) -> Result<Self> {
        let ck = Checkpoint::open(dir)?;
        let transforms: TransformConfig = ck.section("transforms")?;
        let window: WindowSettings = ck.section("validation")?;
        let labels: LabelMode = ck.section("labels")?;
        let model = ck.weights(device, limit)?.inference_model()?;
        Self::new(model, transforms, window, limit)?.with_labels(labels)
    }

    pub fn new(model: Unetr, transforms: TransformConfig, window: WindowSettings, limit: MemoryLimit) -> Result<Self> {
        let p = Self { model, transforms, window, limit, labels: LabelMode::Classes };
        p.sliding_window().validate().map_err(InferError::Config)?;
        transforms_ok(&p.transforms)?;
        Ok(p)
    }

    /// Output channels that mean regions (or classes, the default).
    pub fn with_labels(mut self, labels: LabelMode) -> Result<Self> {
        labels.check(None).map_err(InferError::Config)?;
        if labels.out_channels(self.model.cfg.out_channels) != self.model.cfg.out_channels {
            return Err(InferError::Config(format!("{} regions for a model with {} output channels", labels.out_channels(0), self.model.cfg.out_channels)));
        }
        self.labels = labels;
        Ok(self)
    }

    pub fn sliding_window(&self) -> SlidingWindow {
        SlidingWindow { roi: self.model.cfg.img_size, overlap: self.window.overlap, sw_batch: self.window.sw_batch, blend: self.window.blend }
    }

    /// Loads an item and applies the deterministic part of the training pipeline (labels too, if any).
    pub fn preprocess(&self, item: &Item) -> Result<Sample> {
        let compose = self.transforms.compose()?;
        let s = load_item(item, &self.transforms.read_options(self.limit))?;
        if s.channels != self.model.cfg.in_channels {
            return Err(ferr(&item.image[0], format!("{} channel(s), the model takes {}", s.channels, self.model.cfg.in_channels)));
        }
        Ok(compose.apply_deterministic(s)?)
    }

    /// Sliding-window logits [1, K, D, H, W] on the sample's grid, in host memory.
    pub fn logits(&self, s: &Sample, tta: Tta) -> Result<Tensor> {
        let k = self.model.cfg.out_channels;
        let padded = [0, 1, 2].map(|a| s.dims[a].max(self.model.cfg.img_size[a]));
        check_bytes(s, "sliding-window output", (k + 1) as u64 * padded.iter().map(|&d| d as u64).product::<u64>() * 4, self.limit)?;
        let d = s.dims;
        // The volume and the stitched logits stay in host memory and only each batch of windows visits the
        // model's device (MONAI's `sw_device` = the model's, `device` = "cpu"), so a whole CT's logits need
        // not fit in GPU memory.
        let x = Tensor::from_vec(s.image.clone(), (1, s.channels, d[0], d[1], d[2]), &candle_core::Device::Cpu)?;
        let sw = self.sliding_window();
        let dev = self.model.device();
        let run = |x: &Tensor| sliding_window_inference(x, &sw, |b| self.model.forward_t(&b.to_device(dev)?, false).map_err(candle_core::Error::wrap));
        let mut logits = run(&x)?;
        if tta == Tta::Flips {
            for axis in 2..5 {
                let flipped = x.flip(&[axis])?;
                logits = (logits + run(&flipped)?.flip(&[axis])?)?;
            }
            logits = (logits / 4.0)?;
        }
        Ok(logits)
    }

    /// Logits and the label map on the sample's grid (the argmax, or the regions written back).
    pub fn predict(&self, s: &Sample, tta: Tta) -> Result<Prediction> {
        let logits = self.logits(s, tta)?;
        let labels = match self.labels {
            LabelMode::Classes => logits.argmax(1)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            _ => self.labels.label_map(&logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?, logits.dim(1)?),
        };
        Ok(Prediction { labels, logits })
    }

    /// A prediction mapped back to the input's grid: where the preprocessing resampled, the probabilities
    /// (softmax, or sigmoid for regions) are resampled linearly and the label map made there; crops, pads
    /// and reorientations are undone exactly.
    pub fn invert(&self, s: &Sample, p: &Prediction, probabilities: Probabilities) -> Result<Segmentation> {
        let k = p.logits.dim(1)?;
        let resampled = s.applied.iter().any(|a| matches!(a, Applied::Spacing { .. }));
        let need_probs = resampled || probabilities == Probabilities::Keep;
        let probs = if need_probs {
            let orig = s.header.dims.iter().map(|&d| d as u64).product::<u64>();
            check_bytes(s, "probabilities on the input grid", k as u64 * orig * 4, self.limit)?;
            let l = p.logits.to_dtype(DType::F32)?;
            let pr = match self.labels {
                LabelMode::Classes => candle_nn::ops::softmax(&l, 1)?,
                _ => candle_nn::ops::sigmoid(&l)?,
            }
            .flatten_all()?
            .to_vec1::<f32>()?;
            Some(s.invert(&pr, k, 0.0))
        } else {
            None
        };
        let labels = match (&probs, resampled) {
            (Some(pv), true) => {
                let mut v = s.invert(&p.labels, 1, 0.0);
                v.data = match self.labels {
                    LabelMode::Classes => crate::labels::argmax_channels(&pv.data, k),
                    // Probabilities above 0.5 are logits above 0.
                    _ => self.labels.label_map(&pv.data.iter().map(|x| x - 0.5).collect::<Vec<_>>(), k),
                };
                v
            }
            _ => s.invert(&p.labels, 1, 0.0),
        };
        Ok(Segmentation { labels, probabilities: if probabilities == Probabilities::Keep { probs } else { None } })
    }

    /// Preprocess, predict and map back: the label map (and probabilities) on the input's grid.
    pub fn segment(&self, item: &Item, tta: Tta, probabilities: Probabilities) -> Result<Segmentation> {
        let s = self.preprocess(item)?;
        let p = self.predict(&s, tta)?;
        self.invert(&s, &p, probabilities)
    }
}

fn check_bytes(s: &Sample, what: &str, bytes: u64, limit: MemoryLimit) -> Result<()> {
    if bytes > limit.bytes() {
        return Err(ferr(
            &s.source,
            format!("the {what} needs {:.1} GiB, over the memory limit of {limit} (memory_limit in the config, --memory-limit on the command line)", bytes as f64 / (1u64 << 30) as f64),
        ));
    }
    Ok(())
}

fn transforms_ok(t: &TransformConfig) -> Result<()> {
    let mut c = unetr_data::Checks::new();
    t.check(&mut c);
    c.finish("checkpoint preprocessing").map_err(InferError::from)
}
