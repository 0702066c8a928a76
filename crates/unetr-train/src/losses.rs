//! MONAI's `DiceLoss`, `DiceCELoss` and cross-entropy on logits [B, K, ...] and integer labels [B, 1, ...].

use candle_core::{DType, Result, Tensor, D};

/// MONAI `DiceCELoss` arguments (defaults as MONAI's).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DiceCeOptions {
    pub include_background: bool,
    pub squared_pred: bool,
    pub smooth_nr: f64,
    pub smooth_dr: f64,
    pub lambda_dice: f64,
    pub lambda_ce: f64,
}

impl Default for DiceCeOptions {
    fn default() -> Self {
        Self { include_background: true, squared_pred: false, smooth_nr: 1e-5, smooth_dr: 1e-5, lambda_dice: 1.0, lambda_ce: 1.0 }
    }
}

impl DiceCeOptions {
    /// The research recipe's loss: `DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0, smooth_dr=1e-6)`.
    pub fn research() -> Self {
        Self { squared_pred: true, smooth_nr: 0.0, smooth_dr: 1e-6, ..Default::default() }
    }
}

/// One-hot [B, K, ...] of integer labels [B, 1, ...] (values outside 0..K give all-zero rows).
pub fn one_hot(labels: &Tensor, k: usize) -> Result<Tensor> {
    let classes = Tensor::arange(0u32, k as u32, labels.device())?.to_dtype(labels.dtype())?;
    let mut shape = vec![1; labels.rank()];
    shape[1] = k;
    labels.broadcast_eq(&classes.reshape(shape)?)?.to_dtype(labels.dtype())
}

/// Soft Dice loss with softmax (`DiceLoss(to_onehot_y=True, softmax=True, ...)`), mean over batch and classes.
pub fn dice_loss(logits: &Tensor, labels: &Tensor, o: &DiceCeOptions) -> Result<Tensor> {
    let k = logits.dim(1)?;
    let p = candle_nn::ops::softmax(logits, 1)?;
    let y = one_hot(labels, k)?;
    let (p, y) = if o.include_background || k == 1 { (p, y) } else { (p.narrow(1, 1, k - 1)?, y.narrow(1, 1, k - 1)?) };
    let flat = |t: &Tensor| t.flatten_from(2);
    let (p, y) = (flat(&p)?, flat(&y)?);
    let inter = (&p * &y)?.sum(D::Minus1)?;
    let den = if o.squared_pred { (p.sqr()?.sum(D::Minus1)? + y.sqr()?.sum(D::Minus1)?)? } else { (p.sum(D::Minus1)? + y.sum(D::Minus1)?)? };
    let f = (1.0 - ((inter * 2.0)? + o.smooth_nr)?.div(&(den + o.smooth_dr)?)?)?;
    f.mean_all()
}

/// Cross-entropy of logits against integer labels, mean over all voxels (`nn.CrossEntropyLoss`).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let k = logits.dim(1)?;
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let y = one_hot(labels, k)?;
    let n = (logits.elem_count() / k) as f64;
    ((logp * y)?.sum_all()? * (-1.0 / n))?.to_dtype(DType::F32)
}

/// `lambda_dice * Dice + lambda_ce * CE`.
pub fn dice_ce_loss(logits: &Tensor, labels: &Tensor, o: &DiceCeOptions) -> Result<Tensor> {
    let d = (dice_loss(logits, labels, o)? * o.lambda_dice)?;
    let c = (cross_entropy(logits, labels)? * o.lambda_ce)?;
    d + c
}
