//! Figures of a run, drawn with plotters: line charts (loss, learning rate, validation Dice per class) with
//! a title, labelled axes, ticks and a legend, as SVG (for the HTML report) and PNG (for a quick look); and
//! slice overlays (axial, coronal, sagittal planes of image, label and prediction) with a legend of class
//! colours and names. Text uses the embedded DejaVu Sans, so figures look the same on every machine.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// Class colours (index 0, background, is not drawn in overlays).
pub const COLORS: [[u8; 3]; 10] = [
    [120, 120, 120],
    [230, 60, 60],
    [60, 160, 230],
    [240, 200, 40],
    [80, 200, 90],
    [200, 90, 220],
    [250, 140, 40],
    [40, 220, 200],
    [150, 100, 60],
    [250, 120, 180],
];

pub fn class_color(c: usize) -> RGBColor {
    let k = COLORS[c % COLORS.len()];
    RGBColor(k[0], k[1], k[2])
}

fn fonts() {
    static F: Once = Once::new();
    F.call_once(|| {
        // The font is a static asset: registering it cannot fail in a way a run could recover from.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// One named line.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
}

/// A line chart: its title, axis labels (with units), y range (the data's when None) and scale.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub y_range: Option<(f64, f64)>,
    pub log_y: bool,
    pub series: &'a [Series],
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn draw_chart<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &Chart) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let pts: Vec<(f64, f64)> = c.series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| p.0.is_finite() && p.1.is_finite() && (!c.log_y || p.1 > 0.0)).collect();
    let (x0, x1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (x0, x1) = if x0.is_finite() { (x0, if x1 > x0 { x1 } else { x0 + 1.0 }) } else { (0.0, 1.0) };
    let (y0, y1) = c.y_range.unwrap_or_else(|| pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.1), a.1.max(p.1))));
    let (y0, y1) = if y0.is_finite() && y1 > y0 { (y0, y1) } else if y0.is_finite() { (y0 * 0.9, y0 * 1.1 + 1e-9) } else { (0.0, 1.0) };
    let mut b = ChartBuilder::on(&root);
    b.caption(c.title, ("sans-serif", 20)).margin(12).x_label_area_size(40).y_label_area_size(64);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart.configure_mesh().x_desc(c.x_label).y_desc(c.y_label).label_style(("sans-serif", 13)).axis_desc_style(("sans-serif", 14)).draw().map_err(err)?;
            for s in c.series {
                let color = s.color;
                let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.1.is_finite() && (!c.log_y || p.1 > 0.0)).collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(s.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3)));
                if pts.len() <= 40 {
                    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
                }
            }
            if c.series.len() > 1 {
                chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).label_font(("sans-serif", 13)).position(SeriesLabelPosition::LowerRight).draw().map_err(err)?;
            }
        }};
    }
    if c.log_y {
        body!(b.build_cartesian_2d(x0..x1, (y0.max(1e-12)..y1).log_scale()).map_err(err)?);
    } else {
        body!(b.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?);
    }
    root.present().map_err(err)
}

/// Writes the chart as PNG (`png`) and, when given, as SVG.
pub fn line_chart(png: &Path, svg: Option<&Path>, c: &Chart) -> Result<(), String> {
    fonts();
    draw_chart(BitMapBackend::new(png, (800, 450)).into_drawing_area(), c)?;
    if let Some(svg) = svg {
        draw_chart(SVGBackend::new(svg, (800, 450)).into_drawing_area(), c)?;
    }
    Ok(())
}

/// Image, label and prediction on the three planes through the centre of a [D, H, W] RAS volume
/// (axial = fixed last axis, coronal = fixed middle axis, sagittal = fixed first axis), each slice scaled
/// to `cell` pixels, the label and prediction blended in class colours, with titles and a legend.
pub fn overlay_png(path: &Path, title: &str, image: &[f32], label: &[f32], pred: &[f32], d: [usize; 3], classes: &[String]) -> Result<(), String> {
    let png = overlay_png_bytes(title, image, label, pred, d, classes)?;
    std::fs::write(path, png).map_err(err)
}

/// [`overlay_png`]'s picture as PNG bytes (for embedding).
pub fn overlay_png_bytes(title: &str, image: &[f32], label: &[f32], pred: &[f32], d: [usize; 3], classes: &[String]) -> Result<Vec<u8>, String> {
    fonts();
    let cell = 220u32;
    let (left, top, legend_h) = (90u32, 56u32, 40u32);
    let (w, h) = (left + 3 * (cell + 8), top + 3 * (cell + 8) + legend_h);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    // Planes as (width axis, height axis, index of voxel (a, b)).
    let planes: [(usize, usize, Box<dyn Fn(usize, usize) -> usize>); 3] = [
        (d[0], d[1], Box::new(move |a, b| (a * d[1] + b) * d[2] + d[2] / 2)),
        (d[0], d[2], Box::new(move |a, b| (a * d[1] + d[1] / 2) * d[2] + b)),
        (d[1], d[2], Box::new(move |a, b| ((d[0] / 2) * d[1] + a) * d[2] + b)),
    ];
    let (lo, hi) = image.iter().filter(|v| v.is_finite()).fold((f32::INFINITY, f32::NEG_INFINITY), |a, &v| (a.0.min(v), a.1.max(v)));
    let range = if hi > lo { hi - lo } else { 1.0 };
    for (col, (pw, ph, idx)) in planes.iter().enumerate() {
        let s = cell as f64 / (*pw.max(ph)) as f64;
        for row in 0..3u32 {
            let (ox, oy) = (left + col as u32 * (cell + 8), top + row * (cell + 8));
            for py in 0..cell {
                for px in 0..cell {
                    let (a, bb) = ((px as f64 / s) as usize, *ph as isize - 1 - (py as f64 / s) as isize);
                    if a >= *pw || bb < 0 {
                        continue;
                    }
                    let i = idx(a, bb as usize);
                    let g = (((image[i] - lo) / range).clamp(0.0, 1.0) * 255.0) as u8;
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
                    let o = (((oy + py) * w + ox + px) * 3) as usize;
                    buf[o..o + 3].copy_from_slice(&c);
                }
            }
        }
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let font = ("sans-serif", 15).into_font();
        root.draw(&Text::new(title.to_string(), (left as i32, 12), ("sans-serif", 18).into_font())).map_err(err)?;
        for (col, name) in ["axial", "coronal", "sagittal"].iter().enumerate() {
            root.draw(&Text::new(name.to_string(), ((left + col as u32 * (cell + 8) + cell / 2 - 25) as i32, (top - 20) as i32), font.clone())).map_err(err)?;
        }
        for (row, name) in ["image", "label", "prediction"].iter().enumerate() {
            root.draw(&Text::new(name.to_string(), (6, (top + row as u32 * (cell + 8) + cell / 2) as i32), font.clone())).map_err(err)?;
        }
        let mut x = left as i32;
        let y = (top + 3 * (cell + 8) + 10) as i32;
        for (c, name) in classes.iter().enumerate().skip(1) {
            root.draw(&Rectangle::new([(x, y), (x + 16, y + 16)], class_color(c).filled())).map_err(err)?;
            root.draw(&Text::new(name.clone(), (x + 22, y), font.clone())).map_err(err)?;
            x += 30 + 9 * name.len() as i32;
        }
        root.present().map_err(err)?;
    }
    let mut png = Vec::new();
    image::ImageEncoder::write_image(image::codecs::png::PngEncoder::new(&mut png), &buf, w, h, image::ExtendedColorType::Rgb8).map_err(err)?;
    Ok(png)
}
