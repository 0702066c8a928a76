//! Dice per class (MONAI's `DiceMetric` on one-hot argmax predictions), HD95 (MONAI's
//! `HausdorffDistanceMetric(percentile=95)`, by exact distance transforms), and their averages over cases.

use rayon::prelude::*;

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

/// Dice of each set of label values (a region: voxels whose label is in the set) between two label maps;
/// `None` where the set is absent from the ground truth. With singleton sets this is [`dice_per_class`].
pub fn dice_per_set(pred: &[f32], label: &[f32], sets: &[Vec<u32>]) -> Vec<Option<f64>> {
    sets.iter()
        .map(|set| {
            let is = |v: f32| v >= 0.0 && set.contains(&(v as u32));
            let (mut inter, mut ps, mut ls) = (0u64, 0u64, 0u64);
            for (&p, &l) in pred.iter().zip(label) {
                let (a, b) = (is(p), is(l));
                ps += a as u64;
                ls += b as u64;
                inter += (a && b) as u64;
            }
            (ls > 0).then(|| 2.0 * inter as f64 / (ps + ls) as f64)
        })
        .collect()
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

/// The bounding box [lo, hi) of voxels where `sel` holds, over a [D, H, W] grid; None if there is none.
fn bbox(sel: impl Fn(usize) -> bool, d: [usize; 3]) -> Option<([usize; 3], [usize; 3])> {
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    for i in 0..d[0] {
        for j in 0..d[1] {
            for k in 0..d[2] {
                if sel((i * d[1] + j) * d[2] + k) {
                    let p = [i, j, k];
                    for a in 0..3 {
                        lo[a] = lo[a].min(p[a]);
                        hi[a] = hi[a].max(p[a] + 1);
                    }
                }
            }
        }
    }
    (lo[0] != usize::MAX).then_some((lo, hi))
}

/// Surface voxels of a binary mask over grid `d`: in the mask with a 6-neighbour outside it (or at the
/// volume border), as MONAI's `get_mask_edges` (mask XOR binary_erosion).
fn edges(mask: &[bool], d: [usize; 3]) -> Vec<bool> {
    let at = |i: usize, j: usize, k: usize| mask[(i * d[1] + j) * d[2] + k];
    let mut out = vec![false; mask.len()];
    out.par_chunks_mut(d[1] * d[2]).enumerate().for_each(|(i, plane)| {
        for j in 0..d[1] {
            for k in 0..d[2] {
                if !at(i, j, k) {
                    continue;
                }
                let border = i == 0 || j == 0 || k == 0 || i + 1 == d[0] || j + 1 == d[1] || k + 1 == d[2];
                plane[j * d[2] + k] = border || !at(i - 1, j, k) || !at(i + 1, j, k) || !at(i, j - 1, k) || !at(i, j + 1, k) || !at(i, j, k - 1) || !at(i, j, k + 1);
            }
        }
    });
    out
}

/// Squared Euclidean distance transform along one line (Felzenszwalb & Huttenlocher): `f` holds squared
/// distances so far (0 at features, infinity elsewhere), sample positions are `step` mm apart.
fn edt_line(f: &mut [f64], step: f64, v: &mut Vec<usize>, z: &mut Vec<f64>, out: &mut Vec<f64>) {
    let n = f.len();
    let w = step * step;
    v.clear();
    z.clear();
    out.clear();
    // Lower envelope of the parabolas w (x - q)^2 + f[q] over the finite f[q].
    for q in 0..n {
        if !f[q].is_finite() {
            continue;
        }
        loop {
            match v.last() {
                None => {
                    v.push(q);
                    z.push(f64::NEG_INFINITY);
                    break;
                }
                Some(&p) => {
                    let s = ((f[q] + w * (q * q) as f64) - (f[p] + w * (p * p) as f64)) / (2.0 * w * (q as f64 - p as f64));
                    if s <= *z.last().unwrap() {
                        v.pop();
                        z.pop();
                    } else {
                        v.push(q);
                        z.push(s);
                        break;
                    }
                }
            }
        }
    }
    if v.is_empty() {
        return;
    }
    let mut k = 0;
    for x in 0..n {
        while k + 1 < v.len() && z[k + 1] < x as f64 {
            k += 1;
        }
        let d = x as f64 - v[k] as f64;
        out.push(w * d * d + f[v[k]]);
    }
    f.copy_from_slice(out);
}

/// Squared Euclidean distances (in mm, `spacing` per axis) from every voxel of grid `d` to the nearest
/// `feature` voxel: exact, separable over the three axes, lines in parallel.
pub fn distance_transform_sq(feature: &[bool], d: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let mut g: Vec<f64> = feature.iter().map(|&f| if f { 0.0 } else { f64::INFINITY }).collect();
    let (dh, dw) = (d[1], d[2]);
    // Along the last axis: contiguous lines.
    g.par_chunks_mut(dw).for_each_init(|| (Vec::new(), Vec::new(), Vec::new()), |(v, z, o), line| edt_line(line, spacing[2], v, z, o));
    // Along the middle axis, within each plane.
    g.par_chunks_mut(dh * dw).for_each_init(
        || (Vec::new(), Vec::new(), Vec::new(), vec![0.0; dh]),
        |(v, z, o, line), plane| {
            for k in 0..dw {
                for j in 0..dh {
                    line[j] = plane[j * dw + k];
                }
                edt_line(line, spacing[1], v, z, o);
                for j in 0..dh {
                    plane[j * dw + k] = line[j];
                }
            }
        },
    );
    // Along the first axis: one column of planes per (j, k), gathered in parallel over j.
    let plane = dh * dw;
    let cols: Vec<Vec<f64>> = (0..dh)
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new(), Vec::new(), vec![0.0; d[0]]),
            |(v, z, o, line), j| {
                let mut res = vec![0.0; d[0] * dw];
                for k in 0..dw {
                    for i in 0..d[0] {
                        line[i] = g[i * plane + j * dw + k];
                    }
                    edt_line(line, spacing[0], v, z, o);
                    for i in 0..d[0] {
                        res[i * dw + k] = line[i];
                    }
                }
                res
            },
        )
        .collect();
    for (j, col) in cols.iter().enumerate() {
        for i in 0..d[0] {
            g[i * plane + j * dw..i * plane + (j + 1) * dw].copy_from_slice(&col[i * dw..(i + 1) * dw]);
        }
    }
    g
}

/// numpy's default (linear) percentile.
fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// MONAI's `HausdorffDistanceMetric(percentile=95)` for one class: the larger of the two directed 95th
/// percentile surface distances in mm (`spacing` per axis). `None` when either mask is empty. Computed on
/// the bounding box of both masks with exact Euclidean distance transforms, so a whole-body CT takes
/// seconds, not the minutes of comparing every surface voxel with every other.
pub fn hd95(pred: &[f32], label: &[f32], class: usize, d: [usize; 3], spacing: [f64; 3]) -> Option<f64> {
    hd95_set(pred, label, &[class as u32], d, spacing)
}

/// [`hd95`] of a set of label values (a region).
pub fn hd95_set(pred: &[f32], label: &[f32], set: &[u32], d: [usize; 3], spacing: [f64; 3]) -> Option<f64> {
    let is = |v: f32| v >= 0.0 && set.contains(&(v as u32));
    let (lo, hi) = bbox(|i| is(pred[i]) || is(label[i]), d)?;
    // The masks inside the box; the volume border still counts as outside (MONAI pads with background).
    let bd = [0, 1, 2].map(|a| hi[a] - lo[a]);
    let crop = |src: &[f32]| -> Vec<bool> {
        let mut m = vec![false; bd.iter().product()];
        m.par_chunks_mut(bd[1] * bd[2]).enumerate().for_each(|(i, plane)| {
            for j in 0..bd[1] {
                let row = ((lo[0] + i) * d[1] + lo[1] + j) * d[2] + lo[2];
                for k in 0..bd[2] {
                    plane[j * bd[2] + k] = is(src[row + k]);
                }
            }
        });
        m
    };
    let (a, b) = (crop(pred), crop(label));
    // Edges within the box equal the full grid's: a mask voxel on the box's face either lies on the volume
    // border or has a background neighbour outside the box (the box holds every mask voxel).
    let (ea, eb) = (edges(&a, bd), edges(&b, bd));
    if !ea.contains(&true) || !eb.contains(&true) {
        return None;
    }
    let directed = |from: &[bool], to: &[bool]| -> f64 {
        let dt = distance_transform_sq(to, bd, spacing);
        let mut ds: Vec<f64> = from.iter().zip(&dt).filter(|(f, _)| **f).map(|(_, v)| v.sqrt()).collect();
        percentile(&mut ds, 95.0)
    };
    Some(directed(&ea, &eb).max(directed(&eb, &ea)))
}
