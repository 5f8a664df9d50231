//! The ranking's figure: one panel per score, a horizontal bar per candidate (in consensus
//! order, best on top), SVG and PNG.

use std::path::Path;

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::RankRow;
use crate::report::figure::{FONT, plot_error, register_font, write_svg_and_png};

const PANEL: (u32, u32) = (340, 60);
const BAR_HEIGHT: u32 = 22;

pub fn write(stem: &Path, rows: &[RankRow]) -> Result<()> {
    register_font();
    let metrics: Vec<String> =
        medxfer_scores::Metric::every().map(|m| m.as_str().to_string()).filter(|m| rows.iter().any(|r| r.scores.contains_key(m))).collect();
    let columns = metrics.len().clamp(1, 4) as u32;
    let panel_rows = (metrics.len() as u32).div_ceil(columns).max(1);
    let panel_height = PANEL.1 + BAR_HEIGHT * rows.len() as u32;
    let size = (PANEL.0 * columns + 140, panel_height * panel_rows + 40);
    let grid = (panel_rows, columns);
    write_svg_and_png(stem, size, |area| draw(area, rows, &metrics, grid), |area| draw(area, rows, &metrics, grid))
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, rows: &[RankRow], metrics: &[String], grid: (u32, u32)) -> Result<()> {
    root.fill(&WHITE).map_err(plot_error("the ranking"))?;
    let (title, body) = root.split_vertically(40);
    title
        .draw(&Text::new("Scores of each candidate (best consensus on top)", (12, 12), (FONT, 18).into_font().color(&BLACK)))
        .map_err(plot_error("the ranking"))?;
    let cells = body.split_evenly((grid.0 as usize, grid.1 as usize));
    let names: Vec<String> = rows.iter().map(|r| r.backbone.clone()).collect();
    for (cell, metric) in cells.iter().zip(metrics) {
        let values: Vec<f64> = rows.iter().map(|r| r.scores.get(metric).map_or(f64::NAN, |s| s.0)).collect();
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        // Bars grow from the left edge: scores are compared by rank, their zero means nothing.
        let low = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let high = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (low, high) = if low.is_finite() { (low, high) } else { (0.0, 1.0) };
        let pad = ((high - low) * 0.1).max(1e-9 * high.abs().max(1.0));
        let left = low - pad;
        let n = rows.len();
        let mut chart = ChartBuilder::on(cell)
            .margin(8)
            .caption(metric.as_str(), (FONT, 15))
            .x_label_area_size(24)
            .y_label_area_size(130)
            .build_cartesian_2d(left..high + pad, (0..n.saturating_sub(1)).into_segmented())
            .map_err(plot_error("the ranking"))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE)
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if *i < n => names[n - 1 - *i].clone(),
                _ => String::new(),
            })
            .x_labels(4)
            .label_style((FONT, 10))
            .draw()
            .map_err(plot_error("the ranking"))?;
        chart
            .draw_series(values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, v)| {
                let y = n - 1 - i;
                let colour = if i == 0 { RGBColor(40, 110, 200) } else { RGBColor(150, 170, 200) };
                Rectangle::new([(left, SegmentValue::Exact(y)), (*v, SegmentValue::Exact(y + 1))], colour.filled())
            }))
            .map_err(plot_error("the ranking"))?;
    }
    root.present().map_err(plot_error("the ranking"))
}
