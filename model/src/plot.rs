//! PNG line plots (plotters' bitmap backend into a buffer, encoded with the `png` crate).
//!
//! Text needs a TrueType font: the first of `$TPLA_FONT` and the usual DejaVu/Liberation paths
//! that exists is registered; without one the plot is drawn without labels and legend.

use super::error::{ModelError, Result};
use super::fsio::OutputFile;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// One line of a panel.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// (x, y) points; y must be > 0 (log axis).
    pub points: Vec<(f64, f64)>,
    /// Colour index (palette).
    pub color: usize,
    /// Dashed (drawn as points every other segment).
    pub dashed: bool,
}

/// One panel (sub-plot).
#[derive(Clone, Debug)]
pub struct Panel {
    /// Title.
    pub title: String,
    /// x label.
    pub x_label: String,
    /// y label.
    pub y_label: String,
    /// Lines.
    pub series: Vec<Series>,
}

fn font_loaded() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let mut cands: Vec<String> = std::env::var("TPLA_FONT").into_iter().collect();
        cands.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            ]
            .map(String::from),
        );
        for c in cands {
            if let Ok(bytes) = std::fs::read(&c) {
                let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const PALETTE: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
];

/// Draw panels side by side (log y) into a PNG of `width x height` at `path`, written atomically.
pub fn line_plot_png(path: &Path, panels: &[Panel], width: u32, height: u32) -> Result<()> {
    line_plot_png_to(OutputFile::prepare(path)?, panels, width, height)
}

/// [`line_plot_png`] into a prepared output file (the plot is drawn before the file is touched).
pub fn line_plot_png_to(out: OutputFile, panels: &[Panel], width: u32, height: u32) -> Result<()> {
    let text = font_loaded();
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| ModelError::Plot(e.to_string()))?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (panel, area) in panels.iter().zip(areas.iter()) {
            let pts = panel
                .series
                .iter()
                .flat_map(|s| s.points.iter())
                .filter(|p| p.1 > 0.0);
            let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
            for &(x, y) in pts {
                x0 = x0.min(x);
                x1 = x1.max(x);
                y0 = y0.min(y);
                y1 = y1.max(y);
            }
            if x0 > x1 {
                continue;
            }
            let (y0, y1) = (y0 / 1.5, y1 * 1.5);
            let mut cb = ChartBuilder::on(area);
            cb.margin(12)
                .x_label_area_size(if text { 40 } else { 5 })
                .y_label_area_size(if text { 60 } else { 5 });
            if text {
                cb.caption(&panel.title, ("sans-serif", 18));
            }
            let mut chart = cb
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(|e| ModelError::Plot(e.to_string()))?;
            let mut mesh = chart.configure_mesh();
            if text {
                mesh.x_desc(panel.x_label.as_str())
                    .y_desc(panel.y_label.as_str())
                    .y_label_formatter(&|v| format!("{v:.0e}"));
            } else {
                mesh.x_labels(0).y_labels(0);
            }
            mesh.draw().map_err(|e| ModelError::Plot(e.to_string()))?;
            for s in &panel.series {
                let col = PALETTE[s.color % PALETTE.len()];
                let style = ShapeStyle {
                    color: col.to_rgba(),
                    filled: false,
                    stroke_width: 2,
                };
                let data: Vec<(f64, f64)> =
                    s.points.iter().cloned().filter(|p| p.1 > 0.0).collect();
                let drawn = if s.dashed {
                    let segs: Vec<Vec<(f64, f64)>> =
                        data.windows(2).step_by(2).map(|w| w.to_vec()).collect();
                    let mut last = None;
                    for seg in segs {
                        last = Some(
                            chart
                                .draw_series(LineSeries::new(seg, style))
                                .map_err(|e| ModelError::Plot(e.to_string()))?,
                        );
                    }
                    last
                } else {
                    Some(
                        chart
                            .draw_series(LineSeries::new(data, style))
                            .map_err(|e| ModelError::Plot(e.to_string()))?,
                    )
                };
                if text {
                    if let Some(d) = drawn {
                        d.label(s.label.clone()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], style)
                        });
                    }
                }
            }
            if text {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 12))
                    .position(SeriesLabelPosition::LowerRight)
                    .draw()
                    .map_err(|e| ModelError::Plot(e.to_string()))?;
            }
        }
        root.present()
            .map_err(|e| ModelError::Plot(e.to_string()))?;
    }
    out.commit_with(|w| {
        let mut enc = png::Encoder::new(w, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .map_err(|e| ModelError::Plot(e.to_string()))?;
        w.write_image_data(&buf)
            .map_err(|e| ModelError::Plot(e.to_string()))?;
        w.finish().map_err(|e| ModelError::Plot(e.to_string()))
    })
}
