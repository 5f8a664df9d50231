//! The forest plot: tau-b with its 95% bootstrap interval for every score (rows, the paper's
//! seven first) and task (one colour each, side by side within a row), in-distribution and OOD
//! panels side by side, a vertical line at zero. SVG and PNG from the same drawing code.

use std::path::Path;

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::figure::{FONT, plot_error, register_font, write_svg_and_png};
use super::table::{Table2Row, scope};
use crate::results::Setting;

const PANEL_WIDTH: u32 = 420;
const ROW_HEIGHT: u32 = 34;
const MARGINS: u32 = 110;
const TASK_COLOURS: [RGBColor; 6] = [
    RGBColor(200, 40, 40),
    RGBColor(40, 90, 200),
    RGBColor(30, 140, 60),
    RGBColor(150, 60, 170),
    RGBColor(220, 130, 20),
    RGBColor(90, 90, 90),
];

/// Writes `stem`.svg and `stem`.png from Table 2's rows.
pub fn write(stem: &Path, rows: &[Table2Row]) -> Result<()> {
    register_font();
    let mut metrics: Vec<&str> = Vec::new();
    let mut tasks: Vec<&str> = Vec::new();
    for row in rows {
        if !metrics.contains(&row.metric.as_str()) {
            metrics.push(&row.metric);
        }
        if !tasks.contains(&row.task.as_str()) {
            tasks.push(&row.task);
        }
    }
    let settings: Vec<Setting> = Setting::BOTH.into_iter().filter(|s| rows.iter().any(|r| r.setting == *s)).collect();
    let size = (PANEL_WIDTH * settings.len() as u32 + 60, ROW_HEIGHT * metrics.len() as u32 + MARGINS);
    let forest = Forest { rows, metrics, tasks, settings };
    write_svg_and_png(stem, size, |area| forest.draw(area), |area| forest.draw(area))
}

struct Forest<'a> {
    rows: &'a [Table2Row],
    metrics: Vec<&'a str>,
    tasks: Vec<&'a str>,
    settings: Vec<Setting>,
}

impl Forest<'_> {
    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(plot_error("the forest plot"))?;
        let (title, body) = root.split_vertically(40);
        title
            .draw(&Text::new(
                "Kendall's tau-b with its 95% bootstrap interval († beyond the paper)",
                (12, 12),
                (FONT, 17).into_font().color(&BLACK),
            ))
            .map_err(plot_error("the forest plot"))?;
        let (panels_area, legend) = body.split_horizontally(PANEL_WIDTH * self.settings.len() as u32);
        let panels = panels_area.split_evenly((1, self.settings.len().max(1)));
        for (area, setting) in panels.iter().zip(&self.settings) {
            self.panel(area, *setting)?;
        }
        for (i, task) in self.tasks.iter().enumerate() {
            let colour = TASK_COLOURS[i % TASK_COLOURS.len()];
            let y = 30 + 18 * i as i32;
            legend.draw(&Circle::new((6, y), 4, colour.filled())).map_err(plot_error("the forest plot"))?;
            legend
                .draw(&Text::new(task.to_string(), (14, y - 6), (FONT, 11).into_font().color(&BLACK)))
                .map_err(plot_error("the forest plot"))?;
        }
        root.present().map_err(plot_error("the forest plot"))
    }

    fn panel<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, setting: Setting) -> Result<()> {
        let count = self.metrics.len() as f64;
        let labels: Vec<String> =
            self.metrics.iter().map(|m| if scope(m) == "beyond" { format!("{m} †") } else { m.to_string() }).collect();
        let mut chart = ChartBuilder::on(area)
            .margin(8)
            .caption(setting.as_str().to_uppercase(), (FONT, 14))
            .x_label_area_size(28)
            .y_label_area_size(120)
            .build_cartesian_2d(-1.05f64..1.05f64, -0.5f64..count - 0.5)
            .map_err(plot_error("the forest plot"))?;
        chart
            .configure_mesh()
            .x_labels(5)
            .y_labels(self.metrics.len().max(1))
            .y_label_formatter(&|v| {
                let index = v.round();
                if (v - index).abs() < 1e-6 && index >= 0.0 {
                    // Row 0 at the top.
                    labels.get(self.metrics.len().saturating_sub(1 + index as usize)).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc("tau-b")
            .label_style((FONT, 10))
            .axis_desc_style((FONT, 10))
            .light_line_style(WHITE)
            .draw()
            .map_err(plot_error("the forest plot"))?;
        chart.draw_series(LineSeries::new([(0.0, -0.5), (0.0, count - 0.5)], BLACK.mix(0.4))).map_err(plot_error("the forest plot"))?;
        let spread = 0.6 / self.tasks.len().max(1) as f64;
        for (row_index, metric) in self.metrics.iter().enumerate() {
            let centre = count - 1.0 - row_index as f64;
            for (task_index, task) in self.tasks.iter().enumerate() {
                let Some(row) = self.rows.iter().find(|r| r.setting == setting && r.task == *task && r.metric == *metric) else { continue };
                let Some(tau) = row.tau_b else { continue };
                let y = centre + 0.3 - spread * (task_index as f64 + 0.5);
                let colour = TASK_COLOURS[task_index % TASK_COLOURS.len()];
                if let (Some(low), Some(high)) = (row.ci_low, row.ci_high) {
                    chart
                        .draw_series(LineSeries::new([(low, y), (high, y)], colour.stroke_width(2)))
                        .map_err(plot_error("the forest plot"))?;
                }
                chart.draw_series(std::iter::once(Circle::new((tau, y), 4, colour.filled()))).map_err(plot_error("the forest plot"))?;
            }
        }
        Ok(())
    }
}
