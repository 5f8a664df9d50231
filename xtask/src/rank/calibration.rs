//! What `rank --finetune-top` measures of each fine-tuned model's probabilities on the test
//! part: how far they can be read as probabilities (the calibration table and the reliability
//! diagram's bins), as the model gives them and divided by the temperature fitted on the val part
//! (temperature scaling, Guo et al. 2017), which `predict --calibrated` applies; and how well
//! they order the images (the AUROC and its interval, for the per-class table).

use std::fmt::Write as _;

use anyhow::Result;
use medxfer_train::calibration::{self, Calibration, ECE_BINS, TemperatureError};
use medxfer_train::{RunData, RunSettings, logits_split, macro_auroc, one_vs_rest_auroc};
use medxfer_zoo::Backbone;

use crate::features::GroupedDraw;

/// One fine-tuned backbone's probabilities on the test part, measured.
pub struct Calibrated {
    pub backbone: String,
    /// Fitted on the val part's images.
    pub temperature: Result<f64, TemperatureError>,
    /// The probabilities as the model gives them (temperature 1).
    pub raw: Calibration,
    /// Divided by the fitted temperature, where one was.
    pub scaled: Option<Calibration>,
    /// The test part's macro one-vs-rest AUROC, from the probabilities as the model gives them,
    /// and its 95% interval ([`auroc_interval`]).
    pub auroc: Option<(f64, Option<(f64, f64)>)>,
    /// The test part's probabilities as the model gives them, image by image.
    pub probabilities: Vec<Vec<f64>>,
}

/// Resamples of [`auroc_interval`].
pub const AUROC_RESAMPLES: usize = 2_000;

/// The macro AUROC's 95% percentile bootstrap interval: the test images' groups (`groups`, one
/// per image: a patient, a lesion; each image its own where there are none) drawn with
/// replacement within strata of groups of the same classes, each with all its images
/// ([`GroupedDraw`], as `image-bootstrap` and `--bootstrap` draw), the AUROC recomputed on each.
/// A patient's images are alike, and drawn one by one they would narrow the interval. With one
/// image per group, for two classes it matches DeLong's interval on large samples. None where
/// the images give no AUROC.
pub fn auroc_interval(
    probabilities: &[Vec<f64>],
    labels: &[u32],
    groups: &[String],
    classes: usize,
    resamples: usize,
    rng: &mut impl rand::Rng,
) -> Option<(f64, f64)> {
    macro_auroc(&one_vs_rest_auroc(probabilities, labels, classes))?;
    let draw = GroupedDraw::new(&labels.iter().map(|&l| l as usize).collect::<Vec<_>>(), groups);
    let mut values = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        let picks = draw.draw(rng);
        let drawn_probabilities: Vec<Vec<f64>> = picks.iter().map(|&i| probabilities[i].clone()).collect();
        let drawn_labels: Vec<u32> = picks.iter().map(|&i| labels[i]).collect();
        values.extend(macro_auroc(&one_vs_rest_auroc(&drawn_probabilities, &drawn_labels, classes)));
    }
    values.sort_by(f64::total_cmp);
    let quantile = crate::report::uncertainty::quantile;
    Some((quantile(&values, 0.025), quantile(&values, 0.975)))
}

/// The kept `model` of `backbone` on `data`'s val part (the temperature's fit) and test part.
pub fn measure(
    backbone: &str,
    model: &Backbone,
    data: &RunData,
    test_groups: &[String],
    settings: &RunSettings,
    rng: &mut impl rand::Rng,
) -> Result<Calibrated> {
    let val = logits_split(model, &data.val, settings, &mut |_, _| {})?;
    let temperature = calibration::fit_temperature(&val, &data.val.labels);
    let Some(test) = &data.test else { anyhow::bail!("the tuning split has no test part") };
    let logits = logits_split(model, test, settings, &mut |_, _| {})?;
    let probabilities: Vec<Vec<f64>> = logits.iter().map(|row| calibration::probabilities(row, 1.0)).collect();
    Ok(Calibrated {
        backbone: backbone.to_string(),
        raw: calibration::calibration(&logits, &test.labels, 1.0),
        scaled: temperature.as_ref().ok().map(|&t| calibration::calibration(&logits, &test.labels, t)),
        temperature,
        auroc: macro_auroc(&one_vs_rest_auroc(&probabilities, &test.labels, data.classes))
            .map(|auroc| (auroc, auroc_interval(&probabilities, &test.labels, test_groups, data.classes, AUROC_RESAMPLES, rng))),
        probabilities,
    })
}

/// ranking.md's calibration table (empty without tuned backbones).
pub fn render(calibrated: &[Calibrated], val_images: usize, test_images: usize) -> String {
    if calibrated.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "\nCalibration on the test part ({test_images} images; lower is better in each column; ranking_calibration.svg draws each model's \
         reliability diagram): the probabilities as the model gives them, \
         and divided by a temperature fitted on the val part's {val_images} images by likelihood (temperature scaling, Guo et al. 2017: \
         the same predicted classes; `cargo xtask predict --calibrated` applies it). ECE: the expected calibration error over \
         {ECE_BINS} confidence bins; NLL: the mean negative log-likelihood of the true class, in nats; Brier: the squared error \
         summed over classes. Fitted on few images, a temperature can \
         make the test's columns worse.\n\n\
         | backbone | temperature | ECE | NLL | Brier | ECE, scaled | NLL, scaled | Brier, scaled |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let mut unfitted = Vec::new();
    for row in calibrated {
        let cells = |c: Option<&Calibration>| match c {
            Some(c) => {
                format!("{:.3} | {:.3} | {:.3}", c.expected_calibration_error, c.negative_log_likelihood, c.brier)
            }
            None => "– | – | –".to_string(),
        };
        let temperature = match &row.temperature {
            Ok(t) => format!("{t:.3}"),
            Err(error) => {
                unfitted.push(format!("{}: {error}", row.backbone));
                "–".to_string()
            }
        };
        let _ = writeln!(text, "| {} | {temperature} | {} | {} |", row.backbone, cells(Some(&row.raw)), cells(row.scaled.as_ref()));
    }
    if !unfitted.is_empty() {
        let _ = writeln!(
            text,
            "\nNo temperature on the val part for {} (more images, or a val part with errors to learn from, would give one).\n",
            unfitted.join("; ")
        );
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Two classes, 100 images each (scores (37 i mod 101) / 101, the positives' raised by 0.3):
    /// DeLong et al.'s (1988) interval, AUROC +- 1.96 sqrt(V10 / m + V01 / n) from the
    /// placements' sample variances (numpy), is [0.68681, 0.81739] around 0.7521; the bootstrap's
    /// is close to it (numpy's own 10,000 resamples gave [0.6834, 0.8147]).
    #[test]
    fn the_auroc_interval_matches_delong_s_on_two_classes() {
        let labels: Vec<u32> = (0..200).map(|i| i % 2).collect();
        let each_its_own: Vec<String> = (0..200).map(|i| i.to_string()).collect();
        let probabilities: Vec<Vec<f64>> = (0..200)
            .map(|i: u32| {
                let p = f64::from((i * 37) % 101) / 101.0 + 0.3 * f64::from(i % 2);
                vec![1.0 - p, p]
            })
            .collect();
        let auroc = macro_auroc(&one_vs_rest_auroc(&probabilities, &labels, 2)).unwrap();
        assert!((auroc - 0.7521).abs() < 1e-12, "{auroc}");
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
        let (low, high) = auroc_interval(&probabilities, &labels, &each_its_own, 2, 10_000, &mut rng).unwrap();
        assert!((low - 0.686_813_8).abs() < 0.01 && (high - 0.817_386_2).abs() < 0.01, "[{low}, {high}]");
        // Perfectly separated, every resample is too; one class alone has none.
        let separated: Vec<Vec<f64>> = labels.iter().map(|&y| if y == 1 { vec![0.2, 0.8] } else { vec![0.9, 0.1] }).collect();
        assert_eq!(auroc_interval(&separated, &labels, &each_its_own, 2, 100, &mut rng), Some((1.0, 1.0)));
        assert_eq!(auroc_interval(&separated, &[1; 200], &each_its_own, 2, 100, &mut rng), None);
        // Twenty patients of ten alike images each (patient p holds the images i with i mod 20 =
        // p, all of class p mod 2): drawn by patient the interval is wider than drawn image by
        // image, which counts the 200 images as 200 patients.
        let patients: Vec<String> = (0..200).map(|i| (i % 20).to_string()).collect();
        let alike: Vec<Vec<f64>> = (0..200)
            .map(|i: u32| {
                let p = f64::from(((i % 20) * 7) % 11) / 11.0 + 0.2 * f64::from(i % 2);
                vec![1.0 - p, p]
            })
            .collect();
        let width = |(low, high): (f64, f64)| high - low;
        let by_image = auroc_interval(&alike, &labels, &each_its_own, 2, 2_000, &mut rng).unwrap();
        let by_patient = auroc_interval(&alike, &labels, &patients, 2, 2_000, &mut rng).unwrap();
        assert!(width(by_patient) > 2.0 * width(by_image), "by patient {by_patient:?}, by image {by_image:?}");
    }

    #[test]
    fn the_table_gives_each_backbone_its_row_and_says_why_a_temperature_is_missing() {
        let raw = Calibration { negative_log_likelihood: 0.41, expected_calibration_error: 0.12, brier: 0.2, reliability: Vec::new() };
        let scaled = Calibration { negative_log_likelihood: 0.3, expected_calibration_error: 0.05, brier: 0.18, reliability: Vec::new() };
        let rows = [
            Calibrated {
                backbone: "a".into(),
                temperature: Ok(1.8),
                raw: raw.clone(),
                scaled: Some(scaled),
                auroc: None,
                probabilities: Vec::new(),
            },
            Calibrated {
                backbone: "b".into(),
                temperature: Err(TemperatureError::Separated(12)),
                raw,
                scaled: None,
                auroc: None,
                probabilities: Vec::new(),
            },
        ];
        let table = render(&rows, 12, 24);
        assert!(table.contains("(24 images;") && table.contains("val part's 12 images"), "{table}");
        assert!(table.contains("| a | 1.800 | 0.120 | 0.410 | 0.200 | 0.050 | 0.300 | 0.180 |"), "{table}");
        assert!(table.contains("| b | – | 0.120 | 0.410 | 0.200 | – | – | – |"), "{table}");
        assert!(table.contains("No temperature on the val part for b: every one of the 12 images is classified right"), "{table}");
        assert_eq!(render(&[], 1, 1), "");
    }
}
