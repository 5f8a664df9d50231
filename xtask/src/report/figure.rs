//! Fig. 3: one panel per (task, score), the backbones as labelled points (score on x, balanced
//! accuracy on y), the least-squares line and tau-b in the corner; rows are tasks, columns scores.
//! Written as SVG and PNG with the same drawing code.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::table::Panel;

/// Panel size in pixels: ten labelled points stay readable.
const PANEL: (u32, u32) = (330, 290);
const TITLE_HEIGHT: u32 = 50;
pub const FONT: &str = "sans-serif";

/// The bitmap backend draws text with this embedded font (DejaVu Sans, its licence beside it):
/// no system fonts are needed, so figures look the same on every machine.
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is valid; a failure would only mean text falls back to nothing.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, include_bytes!("../../assets/DejaVuSans.ttf"));
    });
}

/// The error of drawing `figure` (plotters' errors say what failed, not in which figure).
pub fn plot_error<E: std::fmt::Debug>(figure: &str) -> impl Fn(E) -> anyhow::Error + '_ {
    move |error| anyhow!("drawing {figure}: {error:?}")
}

/// Draws one figure as SVG and as PNG in memory, then writes `stem`.svg and `stem`.png through
/// medxfer-durable. Drawn straight into the files, a full disk or a kill mid-write left a
/// truncated PNG where the last good figure was (seen: 28 KB of a ranking.png Pillow calls
/// "truncated", and an error quoting plotters' nested debug output instead of the file).
pub fn write_svg_and_png(
    stem: &Path,
    size: (u32, u32),
    draw_svg: impl FnOnce(DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
    draw_png: impl FnOnce(DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    let mut svg = String::new();
    draw_svg(SVGBackend::with_string(&mut svg, size).into_drawing_area())?;
    let mut pixels = vec![0u8; size.0 as usize * size.1 as usize * 3];
    draw_png(BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area())?;
    let image =
        image::RgbImage::from_raw(size.0, size.1, pixels).ok_or_else(|| anyhow!("drawing the figure: a bitmap of the wrong size"))?;
    let mut png = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    medxfer_durable::write_atomic(&stem.with_extension("svg"), svg.as_bytes())?;
    medxfer_durable::write_atomic(&stem.with_extension("png"), &png)?;
    Ok(())
}

/// `title` over a grid of `panels` (rows = tasks in order of appearance, columns = metrics),
/// written to `stem`.svg and `stem`.png.
pub fn write(stem: &Path, title: &str, y_label: &str, panels: &[&Panel]) -> Result<()> {
    register_font();
    let mut rows: Vec<&str> = Vec::new();
    let mut columns: Vec<&str> = Vec::new();
    for panel in panels {
        if !rows.contains(&panel.task.as_str()) {
            rows.push(&panel.task);
        }
        if !columns.contains(&panel.metric.as_str()) {
            columns.push(&panel.metric);
        }
    }
    let size = (PANEL.0 * columns.len().max(1) as u32, PANEL.1 * rows.len().max(1) as u32 + TITLE_HEIGHT);
    let grid = Grid { rows, columns, title, y_label };
    write_svg_and_png(stem, size, |area| grid.draw(area, panels), |area| grid.draw(area, panels))
}

struct Grid<'a> {
    rows: Vec<&'a str>,
    columns: Vec<&'a str>,
    title: &'a str,
    y_label: &'a str,
}

impl Grid<'_> {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>, panels: &[&Panel]) -> Result<()> {
        root.fill(&WHITE).map_err(plot_error("the figure"))?;
        let (title, body) = root.split_vertically(TITLE_HEIGHT);
        title.draw(&Text::new(self.title.to_string(), (12, 14), (FONT, 20).into_font().color(&BLACK))).map_err(plot_error("the figure"))?;
        let cells = body.split_evenly((self.rows.len().max(1), self.columns.len().max(1)));
        for panel in panels {
            let row = self.rows.iter().position(|r| *r == panel.task).unwrap_or(0);
            let column = self.columns.iter().position(|c| *c == panel.metric).unwrap_or(0);
            if let Some(cell) = cells.get(row * self.columns.len() + column) {
                self.panel(cell, panel)?;
            }
        }
        root.present().map_err(plot_error("the figure"))
    }

    fn panel<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, panel: &Panel) -> Result<()> {
        let (x, y) = (panel.scores(), panel.accuracies());
        // The axis covers the error bars too.
        let extent: Vec<f64> = x.iter().copied().chain(panel.score_intervals.iter().flatten().flat_map(|(l, h)| [*l, *h])).collect();
        // Room on the right for the last points' labels.
        let (x0, x1) = padded_range(&extent, 0.08);
        let x1 = x1 + 0.25 * (x1 - x0);
        let (y0, y1) = padded_range(&y, 0.12);
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .caption(caption(panel), (FONT, 15))
            .x_label_area_size(26)
            .y_label_area_size(54)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(plot_error("the figure"))?;
        let x_step = (x1 - x0).abs();
        chart
            .configure_mesh()
            .x_labels(4)
            .y_labels(5)
            .light_line_style(WHITE)
            .label_style((FONT, 10))
            .x_label_formatter(&|v| tick(*v, x_step))
            .y_label_formatter(&|v| format!("{v:.2}"))
            .y_desc(self.y_label)
            .axis_desc_style((FONT, 10))
            .draw()
            .map_err(plot_error("the figure"))?;
        if let Some((intercept, slope)) = least_squares(&x, &y) {
            let line = [(x0, intercept + slope * x0), (x1, intercept + slope * x1)];
            chart.draw_series(LineSeries::new(line, BLUE.mix(0.55).stroke_width(2))).map_err(plot_error("the figure"))?;
        }
        // Each score's 95% interval over image resamples (image-bootstrap), where it exists.
        for ((_, _, accuracy), interval) in panel.points.iter().zip(&panel.score_intervals) {
            if let Some((low, high)) = interval {
                chart
                    .draw_series(LineSeries::new([(*low, *accuracy), (*high, *accuracy)], RGBColor(200, 40, 40).mix(0.6).stroke_width(1)))
                    .map_err(plot_error("the figure"))?;
            }
        }
        chart
            .draw_series(panel.points.iter().map(|(name, score, accuracy)| {
                EmptyElement::at((*score, *accuracy))
                    + Circle::new((0, 0), 4, RGBColor(200, 40, 40).filled())
                    + Text::new(name.clone(), (5, -12), (FONT, 10).into_font().color(&BLACK))
            }))
            .map_err(plot_error("the figure"))?;
        // tau-b of the oriented score: positive when the score agrees with accuracy, also where
        // lower is better (and the points fall from left to right).
        let tau = panel.tau_b().map_or("τb undefined".to_string(), |t| format!("τb = {t:.3}"));
        let (width, _) = area.dim_in_pixel();
        area.draw(&Text::new(tau, (width as i32 - 100, 30), (FONT, 13).into_font().color(&BLUE))).map_err(plot_error("the figure"))?;
        Ok(())
    }
}

/// "task · metric", marked where the metric is beyond the paper (†) or lower is better (↓).
fn caption(panel: &Panel) -> String {
    format!("{} · {}{}", panel.task, panel.metric, super::table::marks(&panel.metric))
}

/// The range of `values` widened by `fraction` on each side (a unit range around a constant).
fn padded_range(values: &[f64], fraction: f64) -> (f64, f64) {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !low.is_finite() || !high.is_finite() {
        return (0.0, 1.0);
    }
    let span = high - low;
    if span <= f64::EPSILON * high.abs().max(1.0) {
        let pad = low.abs().max(1.0) * 0.05;
        return (low - pad, high + pad);
    }
    (low - fraction * span, high + fraction * span)
}

/// A tick label with as many decimals as the axis span needs.
fn tick(value: f64, span: f64) -> String {
    if value.abs() >= 1e4 || (value != 0.0 && value.abs() < 1e-3 && span < 1e-2) {
        return format!("{value:.2e}");
    }
    let decimals = (2.0 - span.log10().floor()).clamp(0.0, 6.0) as usize;
    format!("{value:.decimals$}")
}

/// Intercept and slope of the least-squares line of y on x; None for fewer than two distinct x.
pub fn least_squares(x: &[f64], y: &[f64]) -> Option<(f64, f64)> {
    let n = x.len() as f64;
    if x.len() < 2 {
        return None;
    }
    let (mean_x, mean_y) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxx: f64 = x.iter().map(|v| (v - mean_x).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mean_x) * (b - mean_y)).sum();
    let slope = sxy / sxx;
    Some((mean_y - slope * mean_x, slope))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Both files are drawn before either is written: a failure while drawing leaves the last
    /// good pair as it was, and a written PNG is whole, at the figure's size, with what was drawn.
    #[test]
    fn a_figure_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("fig");
        let red_square = |area: DrawingArea<BitMapBackend<'_>, Shift>| -> Result<()> {
            area.fill(&WHITE).map_err(plot_error("the figure"))?;
            area.draw(&Rectangle::new([(10, 10), (20, 20)], RED.filled())).map_err(plot_error("the figure"))?;
            area.present().map_err(plot_error("the figure"))
        };
        let svg_text = |area: DrawingArea<SVGBackend<'_>, Shift>| -> Result<()> {
            area.draw(&Text::new("first", (5, 5), (FONT, 12).into_font())).map_err(plot_error("the figure"))?;
            area.present().map_err(plot_error("the figure"))
        };
        write_svg_and_png(&stem, (40, 30), svg_text, red_square).unwrap();
        let png = image::open(stem.with_extension("png")).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (40, 30));
        assert_eq!(png.get_pixel(15, 15).0, [255, 0, 0]);
        assert_eq!(png.get_pixel(30, 25).0, [255, 255, 255]);
        let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
        assert!(svg.contains("\nfirst\n"), "{svg}");
        let error = write_svg_and_png(
            &stem,
            (40, 30),
            |area| {
                area.draw(&Text::new("second", (5, 5), (FONT, 12).into_font())).map_err(plot_error("the figure"))?;
                area.present().map_err(plot_error("the figure"))
            },
            |_| Err(anyhow!("drawing failed")),
        );
        assert!(error.is_err());
        assert!(std::fs::read_to_string(stem.with_extension("svg")).unwrap().contains("\nfirst\n"), "the SVG was replaced");
        assert_eq!(image::open(stem.with_extension("png")).unwrap().to_rgb8(), png);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "temporary files left");
    }

    #[test]
    fn least_squares_recovers_a_line_and_refuses_a_vertical_one() {
        // y = 0.5 + 0.25 x exactly.
        let x = [-2.0, 0.0, 1.0, 4.0];
        let y: Vec<f64> = x.iter().map(|v| 0.5 + 0.25 * v).collect();
        let (a, b) = least_squares(&x, &y).unwrap();
        assert!((a - 0.5).abs() < 1e-15 && (b - 0.25).abs() < 1e-15);
        // numpy.polyfit([0, 1, 2], [0, 2, 1], 1) = [0.5, 0.5].
        let (a, b) = least_squares(&[0.0, 1.0, 2.0], &[0.0, 2.0, 1.0]).unwrap();
        assert!((a - 0.5).abs() < 1e-15 && (b - 0.5).abs() < 1e-15);
        assert!(least_squares(&[3.0, 3.0], &[0.0, 1.0]).is_none());
    }

    #[test]
    fn ticks_show_the_digits_the_span_needs() {
        assert_eq!(tick(0.8126, 0.3), "0.813");
        assert_eq!(tick(-812.4, 400.0), "-812");
        assert_eq!(tick(123456.0, 1000.0), "1.23e5");
        assert_eq!(padded_range(&[2.0, 2.0], 0.1), (1.9, 2.1));
    }
}
