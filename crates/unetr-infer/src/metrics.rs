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

/// Whether class 0 counts in a mean over classes (MONAI's `include_background`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Background {
    Include,
    Exclude,
}

impl Background {
    pub fn from_include(include_background: bool) -> Self {
        if include_background {
            Self::Include
        } else {
            Self::Exclude
        }
    }
}

/// Mean over the classes that are defined, skipping the background (class 0) unless included.
pub fn mean_dice(d: &[Option<f64>], background: Background) -> f64 {
    let v: Vec<f64> = d.iter().enumerate().filter(|(c, _)| background == Background::Include || *c > 0).filter_map(|(_, x)| *x).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Per class, the mean over the cases where the class is defined (`None` where it never is): how MONAI's
/// `DiceMetric.aggregate()` with `ignore_empty` averages a metric over cases.
pub fn class_means(cases: &[Vec<Option<f64>>], k: usize) -> Vec<Option<f64>> {
    (0..k)
        .map(|c| {
            let v: Vec<f64> = cases.iter().filter_map(|m| m.get(c).copied().flatten()).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect()
}

/// Surface voxels of a binary mask: in the mask with a 6-neighbour outside it (or at the volume border),
/// as MONAI's `get_mask_edges` (mask XOR binary_erosion).
fn edges(mask: &[bool], d: [usize; 3]) -> Vec<[usize; 3]> {
    let mut out = Vec::new();
    let at = |i: usize, j: usize, k: usize| mask[(i * d[1] + j) * d[2] + k];
    for i in 0..d[0] {
        for j in 0..d[1] {
            for k in 0..d[2] {
                if !at(i, j, k) {
                    continue;
                }
                let border = i == 0 || j == 0 || k == 0 || i + 1 == d[0] || j + 1 == d[1] || k + 1 == d[2];
                if border || !at(i - 1, j, k) || !at(i + 1, j, k) || !at(i, j - 1, k) || !at(i, j + 1, k) || !at(i, j, k - 1) || !at(i, j, k + 1) {
                    out.push([i, j, k]);
                }
            }
        }
    }
    out
}

/// numpy's default (linear) percentile.
fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// MONAI's `HausdorffDistanceMetric(percentile=95)` for one class: the larger of the two directed 95th
/// percentile surface distances, in voxels scaled by `spacing`. `None` when either mask is empty.
pub fn hd95(pred: &[f32], label: &[f32], class: usize, d: [usize; 3], spacing: [f64; 3]) -> Option<f64> {
    let a: Vec<bool> = pred.iter().map(|&p| p as usize == class).collect();
    let b: Vec<bool> = label.iter().map(|&p| p as usize == class).collect();
    let (ea, eb) = (edges(&a, d), edges(&b, d));
    if ea.is_empty() || eb.is_empty() {
        return None;
    }
    let directed = |from: &[[usize; 3]], to: &[[usize; 3]]| -> f64 {
        let mut ds: Vec<f64> = from
            .iter()
            .map(|p| {
                to.iter()
                    .map(|q| (0..3).map(|x| ((p[x] as f64 - q[x] as f64) * spacing[x]).powi(2)).sum::<f64>())
                    .fold(f64::INFINITY, f64::min)
                    .sqrt()
            })
            .collect();
        percentile(&mut ds, 95.0)
    };
    Some(directed(&ea, &eb).max(directed(&eb, &ea)))
}
