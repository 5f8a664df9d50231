//! What a benchmark measures and how it is summarised: every run of both sides, medians with
//! their spread, and which way is faster.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

/// What a figure counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Unit {
    /// Lower is better.
    Seconds,
    /// Higher is better.
    ImagesPerSecond,
}

/// One benchmark case: every run of each side.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub area: &'static str,
    pub case: String,
    pub unit: Unit,
    pub ours: Vec<f64>,
    pub theirs: Option<Vec<f64>>,
}

impl Measurement {
    /// How many times faster ours is (medians); above 1 means ours is faster.
    pub fn speedup(&self) -> Option<f64> {
        let (ours, theirs) = (median(&self.ours), median(self.theirs.as_deref()?));
        Some(match self.unit {
            Unit::Seconds => theirs / ours,
            Unit::ImagesPerSecond => ours / theirs,
        })
    }
}

/// The median (the upper one of an even count, as the workers report).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// A worker's "runs" array as numbers.
pub fn runs_of(value: &Value) -> Vec<f64> {
    value.as_array().map(|runs| runs.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
}

/// "median (min–max)" with the unit's precision.
fn figure(values: &[f64], unit: Unit) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let show = |v: f64| match unit {
        Unit::Seconds => format!("{v:.3}"),
        Unit::ImagesPerSecond => format!("{v:.1}"),
    };
    if values.len() == 1 { show(values[0]) } else { format!("{} ({}–{})", show(median(values)), show(low), show(high)) }
}

/// The summary table.
pub fn table(measurements: &[Measurement]) -> String {
    let mut text = String::from("| area | case | unit | medxfer | Python stack | medxfer speed-up |\n|---|---|---|---:|---:|---:|\n");
    for m in measurements {
        let unit = match m.unit {
            Unit::Seconds => "s (lower is better)",
            Unit::ImagesPerSecond => "images/s",
        };
        let _ = writeln!(
            text,
            "| {} | {} | {unit} | {} | {} | {} |",
            m.area,
            m.case,
            figure(&m.ours, m.unit),
            m.theirs.as_deref().map_or("–".into(), |t| figure(t, m.unit)),
            m.speedup().map_or("–".into(), |s| format!("{s:.2}x"))
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speedups_point_the_right_way_and_spreads_show_min_and_max() {
        let seconds =
            Measurement { area: "a", case: "c".into(), unit: Unit::Seconds, ours: vec![1.0, 3.0, 2.0], theirs: Some(vec![4.0, 4.0, 5.0]) };
        assert_eq!(seconds.speedup(), Some(2.0));
        let rate = Measurement { unit: Unit::ImagesPerSecond, ours: vec![10.0], theirs: Some(vec![20.0]), ..seconds.clone() };
        assert_eq!(rate.speedup(), Some(0.5));
        let text = table(&[seconds, rate]);
        assert!(text.contains("| a | c | s (lower is better) | 2.000 (1.000–3.000) | 4.000 (4.000–5.000) | 2.00x |"), "{text}");
        assert!(text.contains("| 10.0 | 20.0 | 0.50x |"), "{text}");
        assert_eq!(median(&[4.0, 1.0, f64::NAN, 3.0, 2.0]), 3.0);
    }
}
