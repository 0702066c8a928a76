//! What the model's output channels mean: one class per label value (softmax, argmax), or overlapping
//! regions, each a set of label values (sigmoid per channel), as MONAI's brain-tumour recipe does with
//! `ConvertToMultiChannelBasedOnBratsClasses` (tumour core, whole tumour, enhancing tumour).

use serde::{Deserialize, Serialize};

/// A region: the label values it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
    pub values: Vec<u32>,
}

/// The `[labels]` section of a training config.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum LabelMode {
    /// One output channel per label value 0..K-1 (softmax; the label map is the argmax).
    #[default]
    Classes,
    /// One output channel per region (sigmoid, each thresholded at 0.5); regions must nest (each pair
    /// disjoint or one inside the other), so that a label map can be written back: each voxel gets the
    /// value its smallest predicted region covers alone.
    Regions { regions: Vec<Region> },
}

impl LabelMode {
    /// Output channels for data with `n_classes` label values.
    pub fn out_channels(&self, n_classes: usize) -> usize {
        match self {
            Self::Classes => n_classes,
            Self::Regions { regions } => regions.len(),
        }
    }

    /// The label values each output channel stands for (metrics compare these sets).
    pub fn value_sets(&self, n_classes: usize) -> Vec<Vec<u32>> {
        match self {
            Self::Classes => (0..n_classes as u32).map(|c| vec![c]).collect(),
            Self::Regions { regions } => regions.iter().map(|r| r.values.clone()).collect(),
        }
    }

    /// Names per output channel (`class_names` are the datalist's).
    pub fn names(&self, class_names: &[String]) -> Vec<String> {
        match self {
            Self::Classes => class_names.to_vec(),
            Self::Regions { regions } => regions.iter().map(|r| r.name.clone()).collect(),
        }
    }

    /// Whether metrics and reports count channel 0 as a background to leave out of means.
    pub fn has_background(&self) -> bool {
        matches!(self, Self::Classes)
    }

    /// Checks the regions: non-empty, values below `n_classes` (when known), nested; and that each region
    /// has a value of its own to write back.
    pub fn check(&self, n_classes: Option<usize>) -> Result<(), String> {
        let Self::Regions { regions } = self else { return Ok(()) };
        if regions.is_empty() {
            return Err("labels.regions: at least one region".into());
        }
        for r in regions {
            if r.values.is_empty() || r.values.contains(&0) {
                return Err(format!("labels.regions {:?}: a region covers one or more label values, never 0 (the background)", r.name));
            }
            if let Some(n) = n_classes {
                if let Some(v) = r.values.iter().find(|&&v| v as usize >= n) {
                    return Err(format!("labels.regions {:?}: value {v} is not one of the datalist's {n} labels", r.name));
                }
            }
        }
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                let inter = a.values.iter().filter(|v| b.values.contains(v)).count();
                let nested = inter == 0 || inter == a.values.len() || inter == b.values.len();
                if !nested {
                    return Err(format!("labels.regions {:?} and {:?} overlap without one containing the other", a.name, b.name));
                }
            }
        }
        for (r, v) in regions.iter().zip(self.write_values()) {
            if v.is_none() {
                return Err(format!("labels.regions {:?}: no label value of its own to write back (every value is in a smaller region)", r.name));
            }
        }
        Ok(())
    }

    /// Per region, the label value written where it is the smallest region predicted: its one value that no
    /// smaller region covers.
    fn write_values(&self) -> Vec<Option<u32>> {
        let Self::Regions { regions } = self else { return vec![] };
        regions
            .iter()
            .map(|r| {
                let own: Vec<u32> = r.values.iter().copied().filter(|v| !regions.iter().any(|o| o.values.len() < r.values.len() && o.values.contains(v))).collect();
                (own.len() == 1).then(|| own[0])
            })
            .collect()
    }

    /// A label map from channel scores [K, N] (logits: a region is predicted where its logit > 0): the
    /// argmax, or each region's own value, smaller regions written last.
    pub fn label_map(&self, scores: &[f32], k: usize) -> Vec<f32> {
        let n = scores.len() / k.max(1);
        match self {
            Self::Classes => argmax_channels(scores, k),
            Self::Regions { regions } => {
                let vals = self.write_values();
                let mut order: Vec<usize> = (0..regions.len()).collect();
                order.sort_by_key(|&r| std::cmp::Reverse(regions[r].values.len()));
                let mut out = vec![0f32; n];
                for r in order {
                    let v = vals[r].unwrap_or(0) as f32;
                    for (i, o) in out.iter_mut().enumerate() {
                        if scores[r * n + i] > 0.0 {
                            *o = v;
                        }
                    }
                }
                out
            }
        }
    }
}

/// Per voxel, the channel with the largest value ([K, N] channel-first -> N labels; the first on ties).
pub fn argmax_channels(p: &[f32], k: usize) -> Vec<f32> {
    let n = p.len() / k.max(1);
    (0..n)
        .map(|i| {
            let mut best = 0;
            for c in 1..k {
                if p[c * n + i] > p[best * n + i] {
                    best = c;
                }
            }
            best as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brats() -> LabelMode {
        let r = |name: &str, values: &[u32]| Region { name: name.into(), values: values.to_vec() };
        LabelMode::Regions { regions: vec![r("TC", &[2, 3]), r("WT", &[1, 2, 3]), r("ET", &[2])] }
    }

    /// MONAI's MSD brain-tumour regions write back as MSD's numbering: WT alone -> 1 (edema), TC without
    /// ET -> 3, ET -> 2.
    #[test]
    fn nested_regions_write_back_their_own_values() {
        let m = brats();
        m.check(Some(4)).unwrap();
        // 4 voxels: nothing, WT only, WT + TC, WT + TC + ET; channels TC, WT, ET.
        let s = [-1.0, -1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0];
        assert_eq!(m.label_map(&s, 3), [0.0, 1.0, 3.0, 2.0]);
        let bad = LabelMode::Regions { regions: vec![Region { name: "a".into(), values: vec![1, 2] }, Region { name: "b".into(), values: vec![2, 3] }] };
        assert!(bad.check(Some(4)).unwrap_err().contains("overlap"));
        assert!(brats().check(Some(3)).unwrap_err().contains("value 3"));
        assert_eq!(LabelMode::Classes.label_map(&[0.1, 0.9, 0.5, 0.2], 2), [1.0, 0.0]);
    }
}

