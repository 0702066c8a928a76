//! Evaluation of a predictor on labelled cases: Dice and HD95 per case and class, averaged per class.

use crate::error::Result;
use crate::metrics::{class_means, dice_per_class, dice_per_set, hd95_set, mean_dice, Background};
use crate::predictor::{Prediction, Predictor, Tta};
use unetr_data::transforms::Sample;
use serde::Serialize;
use std::path::PathBuf;
use unetr_data::Item;

/// One case's metrics (on the preprocessed grid, as MONAI's validation computes them).
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub image: PathBuf,
    pub label: PathBuf,
    /// Per class; `None` where the class is absent from the ground truth.
    pub dice: Vec<Option<f64>>,
    /// Per class, in mm; `None` where the prediction or the ground truth is empty.
    pub hd95_mm: Vec<Option<f64>>,
}

/// Every case, and the per-class and mean aggregates.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub classes: Vec<String>,
    pub cases: Vec<CaseResult>,
    pub mean_dice_per_class: Vec<Option<f64>>,
    pub mean_hd95_per_class: Vec<Option<f64>>,
    /// Means over the classes (background excluded unless asked).
    pub mean_dice: f64,
    pub mean_hd95_mm: f64,
    pub include_background: bool,
}

/// Runs `p` over labelled `items` (named by `ids`; `classes` names the predictor's output channels), calling
/// `on_case` after each case with the
/// preprocessed sample, the prediction and the metrics (for progress, overlays, outputs).
pub fn evaluate(
    p: &Predictor,
    items: &[Item],
    ids: &[String],
    classes: &[String],
    tta: Tta,
    background: Background,
    mut on_case: impl FnMut(&Sample, &Prediction, &CaseResult) -> Result<()>,
) -> Result<Evaluation> {
    let k = p.model.cfg.out_channels;
    let sets = p.labels.value_sets(k);
    let mut cases = Vec::with_capacity(items.len());
    for (it, id) in items.iter().zip(ids) {
        let s = p.preprocess(it)?;
        let pred = p.predict(&s, tta)?;
        let lab = s.label.as_ref().ok_or_else(|| crate::error::ferr(&it.image[0], "no label to evaluate against"))?;
        let sp = unetr_data::nifti::spacing(&s.affine);
        let r = case_result(id, it, &pred, lab, s.dims, sp, &sets);
        on_case(&s, &pred, &r)?;
        cases.push(r);
    }
    Ok(aggregate(classes, cases, k, background))
}

/// One case's metrics from its prediction and label (on the grid `dims` of spacing `sp`), per set of label
/// values (`LabelMode::value_sets`: one class each, or the regions).
pub fn case_result(id: &str, it: &Item, pred: &Prediction, lab: &[f32], dims: [usize; 3], sp: [f64; 3], sets: &[Vec<u32>]) -> CaseResult {
    let singles = sets.iter().enumerate().all(|(i, s)| s.len() == 1 && s[0] as usize == i);
    CaseResult {
        case: id.to_string(),
        image: it.image[0].clone(),
        label: it.label.clone().unwrap_or_default(),
        dice: if singles { dice_per_class(&pred.labels, lab, sets.len()) } else { dice_per_set(&pred.labels, lab, sets) },
        hd95_mm: sets.iter().map(|set| hd95_set(&pred.labels, lab, set, dims, sp)).collect(),
    }
}

/// The per-class means and their means over classes.
pub fn aggregate(classes: &[String], cases: Vec<CaseResult>, k: usize, background: Background) -> Evaluation {
    let dice: Vec<Vec<Option<f64>>> = cases.iter().map(|c| c.dice.clone()).collect();
    let hd: Vec<Vec<Option<f64>>> = cases.iter().map(|c| c.hd95_mm.clone()).collect();
    let (md, mh) = (class_means(&dice, k), class_means(&hd, k));
    Evaluation {
        classes: classes.to_vec(),
        mean_dice: mean_dice(&md, background),
        mean_hd95_mm: mean_dice(&mh, background),
        mean_dice_per_class: md,
        mean_hd95_per_class: mh,
        cases,
        include_background: background == Background::Include,
    }
}

impl CaseResult {
    /// The mean Dice over the classes present (background excluded unless asked): how cases rank.
    pub fn mean_dice(&self, background: Background) -> f64 {
        mean_dice(&self.dice, background)
    }
}
