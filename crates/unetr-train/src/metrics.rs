//! Dice per class (MONAI's `DiceMetric` on one-hot argmax predictions).

/// Dice of each class 0..k between two label maps; `None` where the class is absent from the ground
/// truth (MONAI's `ignore_empty=True` returns NaN there, and its mean skips it).
pub fn dice_per_class(pred: &[f32], label: &[f32], k: usize) -> Vec<Option<f64>> {
    let mut inter = vec![0u64; k];
    let mut ps = vec![0u64; k];
    let mut ls = vec![0u64; k];
    for (&p, &l) in pred.iter().zip(label) {
        let (p, l) = (p as usize, l as usize);
        if p < k {
            ps[p] += 1;
        }
        if l < k {
            ls[l] += 1;
        }
        if p == l && p < k {
            inter[p] += 1;
        }
    }
    (0..k).map(|c| if ls[c] == 0 { None } else { Some(2.0 * inter[c] as f64 / (ps[c] + ls[c]) as f64) }).collect()
}

/// Mean over the classes that are defined, optionally skipping the background (class 0).
pub fn mean_dice(d: &[Option<f64>], include_background: bool) -> f64 {
    let v: Vec<f64> = d.iter().enumerate().filter(|(c, _)| include_background || *c > 0).filter_map(|(_, x)| *x).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}
