//! PNG figures of a run: loss and validation-Dice curves, and slice overlays (image, label, prediction on
//! axial, coronal and sagittal planes). Plain pixels, no text: the numbers are in log.jsonl.

use image::{Rgb, RgbImage};
use std::path::Path;

/// Class colours (index 0, background, is not drawn).
pub const COLORS: [[u8; 3]; 8] = [[0, 0, 0], [230, 60, 60], [60, 160, 230], [240, 200, 40], [80, 200, 90], [200, 90, 220], [250, 140, 40], [40, 220, 200]];

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()) as usize).max(1);
    for s in 0..=n {
        let t = s as f64 / n as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
            let (px, py) = (x as i64 + dx, y as i64 + dy);
            if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                img.put_pixel(px as u32, py as u32, Rgb(c));
            }
        }
    }
}

/// Line plot of several (x, y) series sharing axes; y from `y_range` (or the data's range).
pub fn curves_png(path: &Path, series: &[(Vec<(f64, f64)>, [u8; 3])], y_range: Option<(f64, f64)>) -> std::io::Result<()> {
    let (w, h, m) = (640u32, 360u32, 30.0);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.0.iter().copied()).filter(|p| p.1.is_finite()).collect();
    if pts.is_empty() {
        return img.save(path).map_err(std::io::Error::other);
    }
    let (x0, x1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (y0, y1) = y_range.unwrap_or_else(|| pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.1), a.1.max(p.1))));
    let sx = |x: f64| m + (x - x0) / (x1 - x0).max(1e-12) * (w as f64 - 2.0 * m);
    let sy = |y: f64| h as f64 - m - (y - y0) / (y1 - y0).max(1e-12) * (h as f64 - 2.0 * m);
    let grey = [160, 160, 160];
    line(&mut img, (m, h as f64 - m), (w as f64 - m, h as f64 - m), grey);
    line(&mut img, (m, m), (m, h as f64 - m), grey);
    for (s, c) in series {
        for p in s.windows(2) {
            if p[0].1.is_finite() && p[1].1.is_finite() {
                line(&mut img, (sx(p[0].0), sy(p[0].1)), (sx(p[1].0), sy(p[1].1)), *c);
            }
        }
    }
    img.save(path).map_err(std::io::Error::other)
}

/// Three rows (image; image + label; image + prediction) x three planes through the volume's centre
/// (axial = fixed k, coronal = fixed j, sagittal = fixed i on the RAS grid). Image intensities scaled to 0..1.
pub fn overlay_png(path: &Path, image: &[f32], label: &[f32], pred: &[f32], d: [usize; 3], scale: u32) -> std::io::Result<()> {
    let planes: [(usize, usize, Box<dyn Fn(usize, usize) -> usize>); 3] = [
        (d[0], d[1], Box::new(move |a, b| (a * d[1] + b) * d[2] + d[2] / 2)),
        (d[0], d[2], Box::new(move |a, b| (a * d[1] + d[1] / 2) * d[2] + b)),
        (d[1], d[2], Box::new(move |a, b| ((d[0] / 2) * d[1] + a) * d[2] + b)),
    ];
    let width: usize = planes.iter().map(|p| p.0).sum::<usize>() + 2 * 2;
    let height = 3 * d.iter().copied().max().unwrap_or(1) + 2 * 2;
    let mut img = RgbImage::from_pixel(width as u32 * scale, height as u32 * scale, Rgb([0, 0, 0]));
    let rowh = d.iter().copied().max().unwrap_or(1) + 2;
    let mut x0 = 0;
    for (w, h, idx) in &planes {
        for row in 0..3 {
            for a in 0..*w {
                for b in 0..*h {
                    let i = idx(a, b);
                    let g = (image[i].clamp(0.0, 1.0) * 255.0) as u8;
                    let mut c = [g, g, g];
                    let cls = match row {
                        1 => label[i] as usize,
                        2 => pred[i] as usize,
                        _ => 0,
                    };
                    if cls > 0 {
                        let k = COLORS[cls % COLORS.len()];
                        c = [0, 1, 2].map(|j| ((c[j] as u16 + 2 * k[j] as u16) / 3) as u8);
                    }
                    // Screen: x along a, y upward along b.
                    let (px, py) = (x0 + a, row * rowh + (h - 1 - b));
                    for sx in 0..scale {
                        for sy in 0..scale {
                            img.put_pixel(px as u32 * scale + sx, py as u32 * scale + sy, Rgb(c));
                        }
                    }
                }
            }
        }
        x0 += w + 2;
    }
    img.save(path).map_err(std::io::Error::other)
}
