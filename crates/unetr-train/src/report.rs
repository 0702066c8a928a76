//! The HTML report of a run or an evaluation: one self-contained offline file (inline CSS and SVG, images
//! as data URIs; no scripts, fonts or anything fetched) with the configuration, the curves, per-class and
//! per-case Dice and HD95, overlays of the best and worst cases, and time and memory.

use crate::error::{ferr, Result};
use crate::plots::overlay_png_bytes;
use base64::Engine;
use std::fmt::Write;
use std::path::Path;
use unetr_data::transforms::Sample;
use unetr_infer::evaluate::{CaseResult, Evaluation};
use unetr_infer::metrics::Background;
use unetr_infer::Prediction;

/// The best and the worst case seen so far (by mean Dice), with their overlays rendered when they become so.
#[derive(Default)]
pub struct Extremes {
    pub best: Option<(f64, String, Vec<u8>)>,
    pub worst: Option<(f64, String, Vec<u8>)>,
}

impl Extremes {
    /// Considers one case (its preprocessed sample, prediction and metrics).
    pub fn consider(&mut self, s: &Sample, p: &Prediction, r: &CaseResult, classes: &[String], background: Background) -> Result<()> {
        let score = r.mean_dice(background);
        if !score.is_finite() {
            return Ok(());
        }
        let render = |what: &str| -> Result<Vec<u8>> {
            let label = s.label.as_deref().unwrap_or(&[]);
            overlay_png_bytes(&format!("{what} case: {} (mean Dice {score:.3})", r.case), &s.image[..s.dims.iter().product()], label, &p.labels, s.dims, classes).map_err(|e| ferr(&r.image, e))
        };
        if self.best.as_ref().is_none_or(|b| score > b.0) {
            self.best = Some((score, r.case.clone(), render("best")?));
        }
        if self.worst.as_ref().is_none_or(|w| score < w.0) {
            self.worst = Some((score, r.case.clone(), render("worst")?));
        }
        Ok(())
    }
}

/// What a report shows.
pub struct Report<'a> {
    pub title: String,
    /// (name, value) lines of the summary (time, memory, scores).
    pub summary: Vec<(String, String)>,
    /// SVG documents (the curves).
    pub curves: Vec<String>,
    pub evaluation: Option<&'a Evaluation>,
    pub extremes: &'a Extremes,
    /// The configuration as TOML.
    pub config: &'a str,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.filter(|x| x.is_finite()).map_or("–".into(), |x| format!("{x:.digits$}"))
}

const STYLE: &str = "body{font-family:'DejaVu Sans',Arial,sans-serif;margin:24px;color:#222;max-width:1400px}\
h1{font-size:24px}h2{font-size:19px;margin-top:28px;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}\
.curves{display:flex;flex-wrap:wrap;gap:12px}.curves svg{width:600px;height:auto;border:1px solid #ddd}\
.ov{display:flex;flex-wrap:wrap;gap:16px}.ov figure{margin:0}.ov img{max-width:700px;border:1px solid #ddd}\
pre{background:#f7f7f7;padding:10px;font-size:12px;max-height:420px;overflow:auto}";

/// Renders the report as one HTML document.
pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let _ = write!(h, "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>", esc(&r.title));
    let _ = write!(h, "<h1>{}</h1><h2>Summary</h2><table>", esc(&r.title));
    for (k, v) in &r.summary {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
    }
    h += "</table>";
    if !r.curves.is_empty() {
        h += "<h2>Curves</h2><div class=\"curves\">";
        for svg in &r.curves {
            // The SVG documents are ours (plotters' output); only the XML prologue is dropped for inlining.
            let body = svg.find("<svg").map_or(svg.as_str(), |i| &svg[i..]);
            h += body;
        }
        h += "</div>";
    }
    if let Some(e) = r.evaluation {
        let bg = if e.include_background { "background included" } else { "background excluded" };
        let _ = write!(h, "<h2>Per class ({} cases; means over the cases where a class is present)</h2>", e.cases.len());
        h += "<table><tr><th>class</th><th>Dice</th><th>HD95 (mm)</th></tr>";
        for (c, name) in e.classes.iter().enumerate() {
            let _ = write!(h, "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", esc(name), num(e.mean_dice_per_class[c], 4), num(e.mean_hd95_per_class[c], 2));
        }
        let _ = write!(h, "<tr><th>mean ({bg})</th><th>{}</th><th>{}</th></tr></table>", num(Some(e.mean_dice), 4), num(Some(e.mean_hd95_mm), 2));
        h += "<h2>Per case</h2><table><tr><th>case</th>";
        for name in &e.classes {
            let _ = write!(h, "<th>Dice {0}</th><th>HD95 {0}</th>", esc(name));
        }
        h += "</tr>";
        for c in &e.cases {
            let _ = write!(h, "<tr><td>{}</td>", esc(&c.case));
            for k in 0..e.classes.len() {
                let _ = write!(h, "<td>{}</td><td>{}</td>", num(c.dice[k], 3), num(c.hd95_mm[k], 2));
            }
            h += "</tr>";
        }
        h += "</table>";
    }
    let same = matches!((&r.extremes.best, &r.extremes.worst), (Some(b), Some(w)) if b.1 == w.1);
    let shots: Vec<(&str, &(f64, String, Vec<u8>))> = [("best case", &r.extremes.best), ("worst case", &r.extremes.worst)]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (if same { "best and worst case" } else { k }, v)))
        .take(if same { 1 } else { 2 })
        .collect();
    if !shots.is_empty() {
        h += "<h2>Best and worst cases (slices through the centre)</h2><div class=\"ov\">";
        for (what, (score, case, png)) in shots {
            let b64 = base64::engine::general_purpose::STANDARD.encode(png);
            let _ = write!(h, "<figure><img alt=\"overlay of {0}\" src=\"data:image/png;base64,{b64}\"><figcaption>{what}: {0}, mean Dice {score:.3}</figcaption></figure>", esc(case));
        }
        h += "</div>";
    }
    let _ = write!(h, "<h2>Configuration</h2><pre>{}</pre></body></html>\n", esc(r.config));
    h
}

/// Writes the report atomically.
pub fn write(path: &Path, r: &Report) -> Result<()> {
    Ok(unetr_infer::checkpoint::write_file_atomic(path, render(r).as_bytes())?)
}

/// The process's peak resident memory in bytes (Linux; None elsewhere).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
