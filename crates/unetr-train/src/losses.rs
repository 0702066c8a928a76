//! MONAI's `DiceLoss`, `DiceCELoss` and cross-entropy on logits [B, K, ...] and integer labels [B, 1, ...].

use candle_core::{Result, Tensor, D};

/// The training loss (`[optim.loss]`, `name = "dice_ce"` with MONAI's `DiceCELoss` arguments by default).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Loss {
    /// `DiceCELoss(to_onehot_y=True, softmax=True, ...)`.
    DiceCe(DiceCeOptions),
    /// `DiceLoss(to_onehot_y=True, softmax=True, ...)` (the `lambda_*` arguments are not used).
    Dice(DiceCeOptions),
    /// `nn.CrossEntropyLoss()`.
    Ce,
    /// `DiceLoss(sigmoid=True, to_onehot_y=False, ...)` on overlapping regions (`labels.mode = "regions"`):
    /// one sigmoid per output channel against that region's mask.
    SigmoidDice(DiceCeOptions),
}

impl Default for Loss {
    /// The research recipe's loss.
    fn default() -> Self {
        Self::DiceCe(DiceCeOptions::research())
    }
}

impl Loss {
    /// The loss of logits [B, K, ...] against integer labels [B, 1, ...] (for `SigmoidDice`: against the
    /// regions' binary masks [B, K, ...], see [`region_targets`]).
    pub fn compute(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        match self {
            Self::DiceCe(o) => dice_ce_loss(logits, labels, o),
            Self::Dice(o) => dice_loss(logits, labels, o),
            Self::Ce => cross_entropy(logits, labels, None),
            Self::SigmoidDice(o) => sigmoid_dice_loss(logits, labels, o),
        }
    }

    /// The arguments' ranges, named `optim.loss.*`.
    pub fn check(&self, c: &mut unetr_data::Checks) {
        if let Self::DiceCe(o) | Self::Dice(o) | Self::SigmoidDice(o) = self {
            c.within("optim.loss.smooth_nr", o.smooth_nr, 0.0, f64::MAX)
                .within("optim.loss.smooth_dr", o.smooth_dr, 0.0, f64::MAX)
                .within("optim.loss.lambda_dice", o.lambda_dice, 0.0, f64::MAX)
                .within("optim.loss.lambda_ce", o.lambda_ce, 0.0, f64::MAX);
            if matches!(self, Self::DiceCe(_)) && o.lambda_dice + o.lambda_ce <= 0.0 {
                c.fail("optim.loss: lambda_dice + lambda_ce must be positive".into());
            }
            if let Some(w) = &o.weight {
                if w.is_empty() || w.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
                    c.fail(format!("optim.loss.weight = {w:?}: one non-negative weight per class"));
                }
            }
            if o.label_smoothing != 0.0 {
                c.fail(format!("optim.loss.label_smoothing = {}: only 0 (MONAI's default) is supported", o.label_smoothing));
            }
        }
    }
}

/// MONAI `DiceCELoss(to_onehot_y=True, softmax=True, ...)` arguments (defaults as MONAI's).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiceCeOptions {
    pub include_background: bool,
    pub squared_pred: bool,
    pub smooth_nr: f64,
    pub smooth_dr: f64,
    pub lambda_dice: f64,
    pub lambda_ce: f64,
    /// Sum intersections and unions over the batch before dividing (one Dice per class, not per sample).
    pub batch: bool,
    /// Per-class weights for the cross-entropy and the Dice terms (MONAI >= 1.4 uses `weight` for both;
    /// the Dice weights skip the background when it is excluded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<Vec<f64>>,
    /// Only 0 (MONAI's default).
    pub label_smoothing: f64,
}

impl Default for DiceCeOptions {
    fn default() -> Self {
        Self { include_background: true, squared_pred: false, smooth_nr: 1e-5, smooth_dr: 1e-5, lambda_dice: 1.0, lambda_ce: 1.0, batch: false, weight: None, label_smoothing: 0.0 }
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

/// The regions' masks [B, R, ...] (1 where the label is one of the region's values) of labels [B, 1, ...],
/// as MONAI's `ConvertToMultiChannelBasedOnBratsClasses` for the brain-tumour regions.
pub fn region_targets(labels: &Tensor, sets: &[Vec<u32>]) -> Result<Tensor> {
    let masks = sets
        .iter()
        .map(|set| {
            let mut m = labels.zeros_like()?;
            for &v in set {
                m = (m + labels.eq(v as f64)?.to_dtype(labels.dtype())?)?;
            }
            m.clamp(0.0, 1.0)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&masks, 1)
}

/// MONAI's `DiceLoss(sigmoid=True)`: soft Dice of sigmoid(logits) against binary masks, per sample (or over
/// the batch with `batch`) and channel, weighted per channel when given, then the mean.
pub fn sigmoid_dice_loss(logits: &Tensor, targets: &Tensor, o: &DiceCeOptions) -> Result<Tensor> {
    let p = candle_nn::ops::sigmoid(logits)?;
    let y = targets.to_dtype(p.dtype())?;
    soft_dice(&p, &y, o, o.weight.as_deref())
}

/// The soft Dice loss of probabilities `p` against targets `y` ([B, K, ...]): one term per sample (or over
/// the batch with `batch`) and channel, each times its channel's weight when given, then the mean.
fn soft_dice(p: &Tensor, y: &Tensor, o: &DiceCeOptions, weight: Option<&[f64]>) -> Result<Tensor> {
    let flat = |t: &Tensor| -> Result<Tensor> {
        let t = t.flatten_from(2)?;
        if o.batch {
            // [B, K, N] -> [1, K, B * N]
            let (b, kk, n) = t.dims3()?;
            t.transpose(0, 1)?.contiguous()?.reshape((1, kk, b * n))
        } else {
            Ok(t)
        }
    };
    let (p, y) = (flat(p)?, flat(y)?);
    let inter = (&p * &y)?.sum(D::Minus1)?;
    let den = if o.squared_pred { (p.sqr()?.sum(D::Minus1)? + y.sqr()?.sum(D::Minus1)?)? } else { (p.sum(D::Minus1)? + y.sum(D::Minus1)?)? };
    let f = (1.0 - ((inter * 2.0)? + o.smooth_nr)?.div(&(den + o.smooth_dr)?)?)?;
    let f = match weight {
        Some(w) => f.broadcast_mul(&class_weights(w, f.dim(1)?, &f)?.squeeze(2)?)?,
        None => f,
    };
    f.mean_all()
}

/// A per-class weight vector as a [1, K, 1] tensor (checked against the class count).
fn class_weights(w: &[f64], k: usize, like: &Tensor) -> Result<Tensor> {
    if w.len() != k {
        candle_core::bail!("loss weight has {} values for {k} classes", w.len());
    }
    Tensor::from_vec(w.to_vec(), (1, k, 1), like.device())?.to_dtype(like.dtype())
}

/// Soft Dice loss with softmax (`DiceLoss(to_onehot_y=True, softmax=True, ...)`), mean over batch and
/// classes (over classes only with `batch`), each class's term times its weight when given.
pub fn dice_loss(logits: &Tensor, labels: &Tensor, o: &DiceCeOptions) -> Result<Tensor> {
    let k = logits.dim(1)?;
    let p = candle_nn::ops::softmax(logits, 1)?;
    let y = one_hot(labels, k)?;
    let skip_bg = !o.include_background && k > 1;
    let (p, y) = if skip_bg { (p.narrow(1, 1, k - 1)?, y.narrow(1, 1, k - 1)?) } else { (p, y) };
    let weight = o.weight.as_deref().map(|w| if skip_bg { &w[1.min(w.len())..] } else { w });
    soft_dice(&p, &y, o, weight)
}

/// Cross-entropy of logits against integer labels (`nn.CrossEntropyLoss(weight)`): mean over voxels, or
/// with class weights the weighted sum divided by the summed weights of the voxels' classes.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, weight: Option<&[f64]>) -> Result<Tensor> {
    let k = logits.dim(1)?;
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let y = one_hot(labels, k)?;
    match weight {
        None => {
            let n = (logits.elem_count() / k) as f64;
            (logp * y)?.sum_all()? * (-1.0 / n)
        }
        Some(w) => {
            let (b, kk) = (y.dim(0)?, y.dim(1)?);
            let wt = class_weights(w, k, &y)?;
            let yw = y.reshape((b, kk, ()))?.broadcast_mul(&wt)?;
            let num = (logp.reshape((b, kk, ()))? * &yw)?.sum_all()?;
            (num / yw.sum_all()?)?.neg()
        }
    }
}

/// `lambda_dice * Dice + lambda_ce * CE`. On the CPU (f32/f64) one op whose backward writes d/dlogits in one
/// pass (`fused`): the composition keeps about fifteen logits-sized intermediates in the autograd graph
/// (0.7 GB for 14 classes at 96^3) and runs twice as many element-wise passes.
pub fn dice_ce_loss(logits: &Tensor, labels: &Tensor, o: &DiceCeOptions) -> Result<Tensor> {
    if fused::applies(logits, labels) && !o.batch && o.weight.is_none() {
        return fused::dice_ce(logits, labels, o);
    }
    dice_ce_composed(logits, labels, o)
}

/// [`dice_ce_loss`] from candle ops (any device and dtype; the reference the fused op is tested against).
pub fn dice_ce_composed(logits: &Tensor, labels: &Tensor, o: &DiceCeOptions) -> Result<Tensor> {
    let d = (dice_loss(logits, labels, o)? * o.lambda_dice)?;
    let c = (cross_entropy(logits, labels, o.weight.as_deref())? * o.lambda_ce)?;
    d + c
}

mod fused {
    use super::DiceCeOptions;
    use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
    use rayon::prelude::*;
    use std::sync::Mutex;

    pub fn applies(logits: &Tensor, labels: &Tensor) -> bool {
        let (ld, yd) = (logits.dims(), labels.dims());
        logits.device().is_cpu()
            && matches!(logits.dtype(), DType::F32 | DType::F64)
            && labels.dtype() == logits.dtype()
            && ld.len() >= 2
            && yd.len() == ld.len()
            && yd[0] == ld[0]
            && yd[1] == 1
            && yd[2..] == ld[2..]
    }

    /// Per (b, c): sum p y, sum p^2 (or p), sum y; plus the summed -log p[label].
    #[derive(Clone, Debug)]
    struct Sums {
        inter: Vec<f64>,
        pred: Vec<f64>,
        label: Vec<f64>,
        ce: f64,
    }

    impl Sums {
        fn zeros(n: usize) -> Self {
            Sums { inter: vec![0.0; n], pred: vec![0.0; n], label: vec![0.0; n], ce: 0.0 }
        }
    }

    /// The first class the Dice term averages over: 1 without background (unless K = 1, as MONAI).
    fn first_class(o: &DiceCeOptions, k: usize) -> usize {
        usize::from(!o.include_background && k > 1)
    }

    /// Voxels per task; the fixed split makes the sums' order, and so the loss, the same run to run.
    const CHUNK: usize = 4096;

    fn label_of<T: candle_core::WithDType>(v: T, k: usize) -> Option<usize> {
        let f = v.to_f64();
        (f >= 0.0 && f < k as f64 && f.fract() == 0.0).then_some(f as usize)
    }

    /// Softmax over the K channels of voxel i of sample b into `p`; returns (max, log-sum-exp shift).
    #[inline(always)]
    fn softmax_at<T: candle_core::WithDType>(z: &[T], n: usize, k: usize, i: usize, p: &mut [f64]) -> (f64, f64) {
        let mut m = f64::NEG_INFINITY;
        for c in 0..k {
            m = m.max(z[c * n + i].to_f64());
        }
        let mut s = 0.0;
        for c in 0..k {
            p[c] = (z[c * n + i].to_f64() - m).exp();
            s += p[c];
        }
        for v in p.iter_mut().take(k) {
            *v /= s;
        }
        (m, s.ln())
    }

    fn sums<T: candle_core::WithDType>(z: &[T], y: &[T], b: usize, k: usize, n: usize, squared: bool) -> Sums {
        let parts: Vec<Sums> = (0..b * n.div_ceil(CHUNK))
            .into_par_iter()
            .map(|t| {
                let (bi, c0) = (t / n.div_ceil(CHUNK), (t % n.div_ceil(CHUNK)) * CHUNK);
                let (zb, yb) = (&z[bi * k * n..(bi + 1) * k * n], &y[bi * n..(bi + 1) * n]);
                let mut s = Sums::zeros(b * k);
                let mut p = vec![0.0; k];
                for i in c0..(c0 + CHUNK).min(n) {
                    let (m, lse) = softmax_at(zb, n, k, i, &mut p);
                    let lbl = label_of(yb[i], k);
                    for c in 0..k {
                        s.pred[bi * k + c] += if squared { p[c] * p[c] } else { p[c] };
                    }
                    if let Some(l) = lbl {
                        s.inter[bi * k + l] += p[l];
                        s.label[bi * k + l] += 1.0;
                        s.ce -= zb[l * n + i].to_f64() - m - lse;
                    }
                }
                s
            })
            .collect();
        let mut total = Sums::zeros(b * k);
        for s in parts {
            for j in 0..b * k {
                total.inter[j] += s.inter[j];
                total.pred[j] += s.pred[j];
                total.label[j] += s.label[j];
            }
            total.ce += s.ce;
        }
        total
    }

    struct DiceCe {
        o: DiceCeOptions,
        sums: Mutex<Option<Sums>>,
    }

    impl DiceCe {
        fn loss(&self, s: &Sums, b: usize, k: usize, n: usize) -> f64 {
            let o = &self.o;
            let c0 = first_class(o, k);
            let mut dice = 0.0;
            for bi in 0..b {
                for c in c0..k {
                    let j = bi * k + c;
                    dice += 1.0 - (2.0 * s.inter[j] + o.smooth_nr) / (s.pred[j] + s.label[j] + o.smooth_dr);
                }
            }
            o.lambda_dice * dice / (b * (k - c0)) as f64 + o.lambda_ce * s.ce / (b * n) as f64
        }
    }

    fn dims(l: &Layout) -> (usize, usize, usize) {
        let d = l.dims();
        (d[0], d[1], d[2..].iter().product())
    }

    fn range(l: &Layout) -> Result<std::ops::Range<usize>> {
        l.contiguous_offsets().map(|(a, b)| a..b).ok_or_else(|| candle_core::Error::Msg("dice_ce: non-contiguous input".into()))
    }

    impl CustomOp2 for DiceCe {
        fn name(&self) -> &'static str {
            "dice_ce"
        }
        fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
            let (b, k, n) = dims(l1);
            let (r1, r2) = (range(l1)?, range(l2)?);
            let squared = self.o.squared_pred;
            let s = match (s1, s2) {
                (CpuStorage::F32(z), CpuStorage::F32(y)) => sums(&z[r1], &y[r2], b, k, n, squared),
                (CpuStorage::F64(z), CpuStorage::F64(y)) => sums(&z[r1], &y[r2], b, k, n, squared),
                _ => candle_core::bail!("dice_ce: logits and labels must share a float dtype"),
            };
            let loss = self.loss(&s, b, k, n);
            *self.sums.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
            Ok((
                match s1 {
                    CpuStorage::F64(_) => CpuStorage::F64(vec![loss]),
                    _ => CpuStorage::F32(vec![loss as f32]),
                },
                Shape::from(()),
            ))
        }
        fn bwd(&self, logits: &Tensor, labels: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let s = self.sums.lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or_else(|| candle_core::Error::Msg("dice_ce: backward before forward".into()))?;
            let g = g.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let d = unetr_ops::profile::timed("dice_ce_backward", || logits.apply_op2_no_bwd(labels, &DiceCeBwd { o: self.o.clone(), sums: s, g }))?;
            Ok((Some(d), None))
        }
    }

    /// (logits, labels) -> d loss / d logits, scaled by the upstream gradient `g`.
    struct DiceCeBwd {
        o: DiceCeOptions,
        sums: Sums,
        g: f64,
    }

    fn grad<T: candle_core::WithDType>(z: &[T], y: &[T], b: usize, k: usize, n: usize, op: &DiceCeBwd) -> Vec<T> {
        let o = &op.o;
        let c0 = first_class(o, k);
        let s = &op.sums;
        // d(mean dice)/dp[b, c, i] = w * (-2 y / D + Num * dD/dp / D^2), dD/dp = 2p (squared) or 1.
        let w = op.g * o.lambda_dice / (b * (k - c0)) as f64;
        let wce = op.g * o.lambda_ce / (b * n) as f64;
        let (num, den): (Vec<f64>, Vec<f64>) = (0..b * k)
            .map(|j| (2.0 * s.inter[j] + o.smooth_nr, s.pred[j] + s.label[j] + o.smooth_dr))
            .unzip();
        let mut out: Vec<T> = Vec::with_capacity(z.len());
        let ptr = OutPtr(out.as_mut_ptr());
        let chunks = n.div_ceil(CHUNK);
        (0..b * chunks).into_par_iter().for_each(|t| {
            let (bi, i0) = (t / chunks, (t % chunks) * CHUNK);
            let (zb, yb) = (&z[bi * k * n..(bi + 1) * k * n], &y[bi * n..(bi + 1) * n]);
            let mut p = vec![0.0; k];
            let mut a = vec![0.0; k];
            // Voxels are independent; each task writes all K channels of its own voxels.
            for i in i0..(i0 + CHUNK).min(n) {
                softmax_at(zb, n, k, i, &mut p);
                let lbl = label_of(yb[i], k);
                let mut dot = 0.0;
                for c in 0..k {
                    a[c] = if c < c0 {
                        0.0
                    } else {
                        let j = bi * k + c;
                        let yv = if lbl == Some(c) { 1.0 } else { 0.0 };
                        let dd = if o.squared_pred { 2.0 * p[c] } else { 1.0 };
                        w * (-2.0 * yv / den[j] + num[j] * dd / (den[j] * den[j]))
                    };
                    dot += p[c] * a[c];
                }
                for c in 0..k {
                    let ce = match lbl {
                        Some(l) => wce * (p[c] - if l == c { 1.0 } else { 0.0 }),
                        None => 0.0,
                    };
                    // SAFETY: (bi, c, i) is in bounds and written by this task only.
                    unsafe { ptr.get().add((bi * k + c) * n + i).write(T::from_f64(p[c] * (a[c] - dot) + ce)) };
                }
            }
        });
        // SAFETY: every element was written above.
        unsafe { out.set_len(z.len()) };
        out
    }

    /// The output pointer shared by the gradient tasks (each writes its own voxels).
    #[derive(Clone, Copy)]
    struct OutPtr<T>(*mut T);
    unsafe impl<T> Send for OutPtr<T> {}
    unsafe impl<T> Sync for OutPtr<T> {}
    impl<T> OutPtr<T> {
        fn get(&self) -> *mut T {
            self.0
        }
    }

    impl CustomOp2 for DiceCeBwd {
        fn name(&self) -> &'static str {
            "dice_ce_backward"
        }
        fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
            let (b, k, n) = dims(l1);
            let (r1, r2) = (range(l1)?, range(l2)?);
            let v = match (s1, s2) {
                (CpuStorage::F32(z), CpuStorage::F32(y)) => CpuStorage::F32(grad(&z[r1], &y[r2], b, k, n, self)),
                (CpuStorage::F64(z), CpuStorage::F64(y)) => CpuStorage::F64(grad(&z[r1], &y[r2], b, k, n, self)),
                _ => candle_core::bail!("dice_ce: logits and labels must share a float dtype"),
            };
            Ok((v, l1.shape().clone()))
        }
    }

    pub fn dice_ce(logits: &Tensor, labels: &Tensor, o: &DiceCeOptions) -> Result<Tensor> {
        let op = DiceCe { o: o.clone(), sums: Mutex::new(None) };
        unetr_ops::profile::timed("dice_ce", || logits.contiguous()?.apply_op2(&labels.contiguous()?.detach(), op))
    }
}
