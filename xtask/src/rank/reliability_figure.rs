//! `rank --finetune-top`'s reliability diagram (ranking_calibration.svg/.png): one panel per
//! fine-tuned backbone, the test part's accuracy in each confidence bin as the model gives its
//! probabilities (bars) and after temperature scaling (points), against the diagonal a perfectly
//! calibrated model would follow.

use std::path::Path;

use anyhow::{Result, anyhow};
use medxfer_train::calibration::ReliabilityBin;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::calibration::Calibrated;
use crate::report::figure::{FONT, plot_error, register_font, write_svg_and_png};

const PANEL: (u32, u32) = (300, 300);

/// Writes `stem`.svg and `stem`.png; without a fine-tuned backbone to draw, removes an earlier
/// shortlist's, which would be taken for this one's.
pub fn write(stem: &Path, calibrated: &[Calibrated]) -> Result<()> {
    if calibrated.is_empty() {
        for path in [stem.with_extension("svg"), stem.with_extension("png")] {
            if path.exists() {
                std::fs::remove_file(&path).map_err(|e| anyhow!("cannot remove {} (an earlier shortlist's): {e}", path.display()))?;
            }
        }
        return Ok(());
    }
    register_font();
    let columns = calibrated.len().min(3) as u32;
    let rows = (calibrated.len() as u32).div_ceil(columns);
    let size = (PANEL.0 * columns, PANEL.1 * rows + 40);
    let grid = (rows, columns);
    write_svg_and_png(stem, size, |area| draw(area, calibrated, grid), |area| draw(area, calibrated, grid))
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, calibrated: &[Calibrated], grid: (u32, u32)) -> Result<()> {
    root.fill(&WHITE).map_err(plot_error("the reliability diagram"))?;
    let (title, body) = root.split_vertically(40);
    title
        .draw(&Text::new(
            "Test accuracy per confidence bin: bars as given, dots temperature-scaled",
            (12, 12),
            (FONT, 16).into_font().color(&BLACK),
        ))
        .map_err(plot_error("the reliability diagram"))?;
    let raw_colour = RGBColor(150, 170, 200);
    let scaled_colour = RGBColor(210, 100, 30);
    for (cell, row) in body.split_evenly((grid.0 as usize, grid.1 as usize)).iter().zip(calibrated) {
        let caption = match &row.scaled {
            Some(scaled) => {
                format!("{}: ECE {:.3} -> {:.3}", row.backbone, row.raw.expected_calibration_error, scaled.expected_calibration_error)
            }
            None => format!("{}: ECE {:.3}", row.backbone, row.raw.expected_calibration_error),
        };
        let mut chart = ChartBuilder::on(cell)
            .margin(10)
            .caption(caption, (FONT, 13))
            .x_label_area_size(30)
            .y_label_area_size(36)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(plot_error("the reliability diagram"))?;
        chart
            .configure_mesh()
            .x_desc("confidence")
            .y_desc("accuracy")
            .x_labels(6)
            .y_labels(6)
            .label_style((FONT, 10))
            .draw()
            .map_err(plot_error("the reliability diagram"))?;
        let filled = |bins: &[ReliabilityBin]| -> Vec<ReliabilityBin> { bins.iter().filter(|b| b.count > 0).copied().collect() };
        chart
            .draw_series(
                filled(&row.raw.reliability)
                    .into_iter()
                    .map(|b| Rectangle::new([(b.lower, 0.0), (b.upper, b.accuracy)], raw_colour.filled())),
            )
            .map_err(plot_error("the reliability diagram"))?;
        // Over the bars, so that it shows where they stop short of it or pass it.
        chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.6))).map_err(plot_error("the reliability diagram"))?;
        if let Some(scaled) = &row.scaled {
            chart
                .draw_series(
                    filled(&scaled.reliability).into_iter().map(|b| Circle::new((b.confidence, b.accuracy), 4, scaled_colour.filled())),
                )
                .map_err(plot_error("the reliability diagram"))?;
        }
    }
    root.present().map_err(plot_error("the reliability diagram"))
}
