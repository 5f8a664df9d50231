//! How far a fine-tuned model's probabilities can be read as probabilities, and temperature
//! scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"), which divides every
//! logit by one temperature fitted on held-out images: the predicted classes stay, the
//! probabilities change. A network trained to a low cross-entropy is typically overconfident, and
//! a clinician reading "0.99" reads it as a probability.
//!
//! Everything here is on logits in f64 (a log-softmax, never the log of a rounded probability).

use thiserror::Error;

/// Bins of [`expected_calibration_error`], as Guo et al. measured it.
pub const ECE_BINS: usize = 15;

/// Why no temperature could be fitted on a set of images.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TemperatureError {
    /// No images, or logits and labels of different counts.
    #[error("no images to fit a temperature on")]
    Empty,
    /// A logit that is not finite, or a label outside the logits.
    #[error("a logit is not finite or a label is not one of the model's outputs")]
    Invalid,
    /// Every image's true class has the highest logit: the likelihood keeps rising as the
    /// temperature falls, so its maximum is at 0 (every probability 0 or 1).
    #[error(
        "every one of the {0} images is classified right, so the likelihood keeps rising as the temperature falls to 0 and no temperature can be fitted"
    )]
    Separated(usize),
    /// The logits, at any temperature, fit the labels worse than the uniform distribution.
    #[error("the model's logits fit these images no better than equal probabilities at any temperature")]
    NoBetterThanUniform,
}

/// Each class's probability, the softmax of `logits / temperature`.
pub fn probabilities(logits: &[f32], temperature: f64) -> Vec<f64> {
    let log_p = log_softmax(logits, 1.0 / temperature);
    log_p.iter().map(|l| l.exp()).collect()
}

/// The predicted class and its probability: the first of equal largest probabilities, as
/// argmax takes it.
pub fn most_probable(probabilities: &[f64]) -> (usize, f64) {
    probabilities.iter().enumerate().fold((0, f64::NEG_INFINITY), |best, (i, &p)| if p > best.1 { (i, p) } else { best })
}

/// The mean of each group's rows of probabilities, `rows[i]` of group `group_of[i]` among
/// `groups`: a loop's frames pooled into its file's prediction. A group without rows is all
/// zeros.
pub fn mean_probabilities(rows: &[Vec<f64>], group_of: &[usize], groups: usize) -> Vec<Vec<f64>> {
    let classes = rows.first().map_or(0, Vec::len);
    let mut sums = vec![vec![0.0; classes]; groups];
    let mut counts = vec![0_usize; groups];
    for (row, &group) in rows.iter().zip(group_of) {
        sums[group].iter_mut().zip(row).for_each(|(sum, p)| *sum += p);
        counts[group] += 1;
    }
    for (sum, count) in sums.iter_mut().zip(counts) {
        sum.iter_mut().for_each(|p| *p /= count.max(1) as f64);
    }
    sums
}

/// `log softmax(inverse_temperature * logits)`, computed stably.
fn log_softmax(logits: &[f32], inverse_temperature: f64) -> Vec<f64> {
    let scaled: Vec<f64> = logits.iter().map(|&z| inverse_temperature * f64::from(z)).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = max + scaled.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
    scaled.iter().map(|s| s - log_sum).collect()
}

/// The temperature T minimising the mean negative log-likelihood of `labels` under
/// softmax(logits / T), as Guo et al. fit it on the validation images.
///
/// The likelihood is convex in 1/T, and its slope there tends to the mean margin by which the
/// images are misclassified (the largest logit minus the true class's) as 1/T grows, and is the
/// mean of each image's mean logit minus its true one at 1/T = 0. So a finite minimum exists
/// exactly when some image is misclassified and the logits beat equal probabilities; it is found
/// by bisection on the slope, to f64 precision.
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[u32]) -> Result<f64, TemperatureError> {
    if logits.is_empty() || logits.len() != labels.len() {
        return Err(TemperatureError::Empty);
    }
    let valid = logits.iter().zip(labels).all(|(row, &label)| (label as usize) < row.len() && row.iter().all(|z| z.is_finite()));
    if !valid {
        return Err(TemperatureError::Invalid);
    }
    let n = logits.len() as f64;
    // d/dβ of the mean NLL at β = 1/T: E_softmax(βz)[z] - z_label, averaged.
    let slope = |beta: f64| {
        logits
            .iter()
            .zip(labels)
            .map(|(row, &label)| {
                let p = log_softmax(row, beta);
                row.iter().zip(&p).map(|(&z, l)| f64::from(z) * l.exp()).sum::<f64>() - f64::from(row[label as usize])
            })
            .sum::<f64>()
            / n
    };
    let misclassified = logits.iter().zip(labels).any(|(row, &label)| row.iter().any(|&z| z > row[label as usize]));
    if !misclassified {
        return Err(TemperatureError::Separated(logits.len()));
    }
    if slope(0.0) >= 0.0 {
        return Err(TemperatureError::NoBetterThanUniform);
    }
    // Bracket the root: the slope is negative at 0 and positive far enough out.
    let (mut low, mut high) = (0.0_f64, 1.0_f64);
    while slope(high) < 0.0 {
        low = high;
        high *= 2.0;
        if !high.is_finite() {
            return Err(TemperatureError::Separated(logits.len()));
        }
    }
    for _ in 0..200 {
        let middle = 0.5 * (low + high);
        if middle <= low || middle >= high {
            break;
        }
        if slope(middle) < 0.0 {
            low = middle;
        } else {
            high = middle;
        }
    }
    Ok(2.0 / (low + high))
}

/// How well a set of probabilities matches what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Mean negative log-likelihood of the true classes (the cross-entropy), in nats.
    pub negative_log_likelihood: f64,
    /// [`expected_calibration_error`] over [`ECE_BINS`] bins.
    pub expected_calibration_error: f64,
    /// Mean over images of the squared distance between the probabilities and the one-hot truth
    /// (Brier 1950, summed over classes).
    pub brier: f64,
    /// The [`reliability`] diagram's [`ECE_BINS`] bins the ECE is computed from.
    pub reliability: Vec<ReliabilityBin>,
}

/// The calibration of softmax(logits / temperature) against `labels` (labels within the logits,
/// as [`fit_temperature`] checks).
pub fn calibration(logits: &[Vec<f32>], labels: &[u32], temperature: f64) -> Calibration {
    let n = logits.len().max(1) as f64;
    let (mut nll, mut brier) = (0.0, 0.0);
    let mut probabilities_of = Vec::with_capacity(logits.len());
    for (row, &label) in logits.iter().zip(labels) {
        let log_p = log_softmax(row, 1.0 / temperature);
        nll -= log_p.get(label as usize).copied().unwrap_or(f64::NEG_INFINITY);
        let p: Vec<f64> = log_p.iter().map(|l| l.exp()).collect();
        brier += p.iter().enumerate().map(|(c, &p)| if c == label as usize { (1.0 - p).powi(2) } else { p * p }).sum::<f64>();
        probabilities_of.push(p);
    }
    let reliability = reliability(&probabilities_of, labels, ECE_BINS);
    Calibration {
        negative_log_likelihood: nll / n,
        expected_calibration_error: error_of_bins(&reliability, probabilities_of.len()),
        brier: brier / n,
        reliability,
    }
}

/// One confidence bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReliabilityBin {
    /// The bin's lowest confidence (excluded).
    pub lower: f64,
    /// The bin's highest confidence (included).
    pub upper: f64,
    /// Images whose confidence (largest probability) falls in it.
    pub count: usize,
    /// Their mean confidence (0 for an empty bin).
    pub confidence: f64,
    /// The share of them predicted right (0 for an empty bin).
    pub accuracy: f64,
}

/// The reliability diagram's bins (DeGroot and Fienberg 1983, as Guo et al. draw it): the images
/// binned by their confidence (the largest probability) into `bins` equal-width bins, (lower,
/// upper], each with its mean confidence and accuracy; the prediction is [`most_probable`]'s.
pub fn reliability(probabilities: &[Vec<f64>], labels: &[u32], bins: usize) -> Vec<ReliabilityBin> {
    let bins = bins.max(1);
    let (mut confidence, mut correct, mut count) = (vec![0.0; bins], vec![0.0; bins], vec![0usize; bins]);
    for (row, &label) in probabilities.iter().zip(labels) {
        let (predicted, top) = most_probable(row);
        // (lower, upper]: the bin whose upper edge is the first at or above the confidence.
        let bin = ((top * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        confidence[bin] += top;
        correct[bin] += f64::from(u8::from(predicted == label as usize));
        count[bin] += 1;
    }
    (0..bins)
        .map(|b| {
            let n = count[b].max(1) as f64;
            ReliabilityBin {
                lower: b as f64 / bins as f64,
                upper: (b + 1) as f64 / bins as f64,
                count: count[b],
                confidence: confidence[b] / n,
                accuracy: correct[b] / n,
            }
        })
        .collect()
}

/// The expected calibration error (Naeini et al. 2015, as Guo et al. compute it): the gap
/// between each [`reliability`] bin's accuracy and its mean confidence, averaged with the bin's
/// share of the images as weight.
pub fn expected_calibration_error(probabilities: &[Vec<f64>], labels: &[u32], bins: usize) -> f64 {
    error_of_bins(&reliability(probabilities, labels, bins), probabilities.len())
}

/// The ECE of `images` images' bins.
fn error_of_bins(bins: &[ReliabilityBin], images: usize) -> f64 {
    let n = images.max(1) as f64;
    bins.iter().map(|b| b.count as f64 / n * (b.accuracy - b.confidence).abs()).sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Hand-computed: group 0's two rows average to (0.5, 0.5), group 1's one row is itself,
    /// group 2 has none.
    #[test]
    fn each_group_s_rows_are_averaged() {
        let rows = [vec![0.9, 0.1], vec![0.6, 0.4], vec![0.1, 0.9]].map(|row| row.to_vec());
        let means = mean_probabilities(&rows, &[0, 1, 0], 3);
        assert_eq!(means, [vec![0.5, 0.5], vec![0.6, 0.4], vec![0.0, 0.0]]);
    }

    /// Logits of 8 images over 3 classes, two misclassified.
    fn logits() -> (Vec<Vec<f32>>, Vec<u32>) {
        let logits = vec![
            vec![3.0, 0.5, -1.0],
            vec![0.2, 2.5, 0.1],
            vec![-0.5, 0.3, 4.0],
            vec![2.0, 2.2, -0.3],
            vec![1.5, -2.0, 0.0],
            vec![0.0, 0.1, 3.5],
            vec![-1.0, 3.0, 0.5],
            vec![1.0, 0.0, 1.2],
        ];
        (logits, vec![0, 1, 2, 0, 0, 2, 1, 0])
    }

    const SCIPY_TEMPERATURE: f64 = 0.5055886473091111;
    const SCIPY_NLL_RAW: f64 = 0.31030320711883325;
    const SCIPY_BRIER_RAW: f64 = 0.1711823855124294;
    const SCIPY_ECE_RAW: f64 = 0.20464073726031182;
    const SCIPY_NLL_SCALED: f64 = 0.24590760089219926;
    const SCIPY_BRIER_SCALED: f64 = 0.17815121701223113;
    const SCIPY_ECE_SCALED: f64 = 0.15597146049726832;

    /// scipy.optimize.minimize_scalar(lambda t: mean(-log_softmax(z / t)[y]), bounds=(0.05, 20),
    /// method="bounded", options={"xatol": 1e-12}) on the same logits (rounded to f32, as the
    /// model gives them), and the NLL, Brier score and 15-bin ECE (numpy, (lower, upper] bins as
    /// Guo et al.'s code) at T = 1 and at the fit.
    #[test]
    fn the_fitted_temperature_and_the_calibration_match_scipy() {
        let (logits, labels) = logits();
        let temperature = fit_temperature(&logits, &labels).unwrap();
        assert!((temperature - SCIPY_TEMPERATURE).abs() < 1e-7, "{temperature}");
        let raw = calibration(&logits, &labels, 1.0);
        let scaled = calibration(&logits, &labels, temperature);
        for (ours, scipy) in [
            (raw.negative_log_likelihood, SCIPY_NLL_RAW),
            (raw.brier, SCIPY_BRIER_RAW),
            (raw.expected_calibration_error, SCIPY_ECE_RAW),
            (scaled.negative_log_likelihood, SCIPY_NLL_SCALED),
            (scaled.brier, SCIPY_BRIER_SCALED),
            (scaled.expected_calibration_error, SCIPY_ECE_SCALED),
        ] {
            assert!((ours - scipy).abs() < 1e-8, "{ours} against {scipy}");
        }
        // The fit is the minimum: either side of it the likelihood is worse.
        for t in [temperature * 0.99, temperature * 1.01] {
            assert!(calibration(&logits, &labels, t).negative_log_likelihood > scaled.negative_log_likelihood);
        }
    }

    #[test]
    fn no_temperature_is_fitted_where_none_exists() {
        let (logits, labels) = logits();
        // All right: the likelihood rises as T falls.
        let right: Vec<u32> = logits
            .iter()
            .map(|row| row.iter().enumerate().fold((0, f32::MIN), |b, (i, &z)| if z > b.1 { (i as u32, z) } else { b }).0)
            .collect();
        assert_eq!(fit_temperature(&logits, &right), Err(TemperatureError::Separated(8)));
        // Every label the smallest logit: worse than uniform at any temperature.
        let wrong: Vec<u32> = logits
            .iter()
            .map(|row| row.iter().enumerate().fold((0, f32::MAX), |b, (i, &z)| if z < b.1 { (i as u32, z) } else { b }).0)
            .collect();
        assert_eq!(fit_temperature(&logits, &wrong), Err(TemperatureError::NoBetterThanUniform));
        assert_eq!(fit_temperature(&[], &[]), Err(TemperatureError::Empty));
        assert_eq!(fit_temperature(&logits, &labels[..3]), Err(TemperatureError::Empty));
        assert_eq!(fit_temperature(&[vec![f32::NAN, 1.0]], &[0]), Err(TemperatureError::Invalid));
        assert_eq!(fit_temperature(&[vec![0.0, 1.0]], &[2]), Err(TemperatureError::Invalid));
        assert!(fit_temperature(&logits, &labels).is_ok());
    }

    /// Hand-made bins: confidences 0.94 (right) and 0.96 (wrong) share the bin (14/15, 1]; 0.5
    /// (right) and 0.6 (wrong) each have their own.
    #[test]
    fn the_ece_bins_by_confidence_with_upper_edges_closed() {
        let probabilities = vec![vec![0.94, 0.06], vec![0.04, 0.96], vec![0.5, 0.5], vec![0.4, 0.6]];
        let labels = [0, 0, 0, 0];
        // Bin (14/15, 1]: accuracy 1/2 against confidence 0.95, 2 of 4 images; then 1 against
        // 0.5 and 0 against 0.6, a quarter each.
        let expected = 0.5 * (0.95 - 0.5_f64) + 0.25 * 0.5 + 0.25 * 0.6;
        let ece = expected_calibration_error(&probabilities, &labels, 15);
        assert!((ece - expected).abs() < 1e-12, "{ece} against {expected}");
        // One bin: |mean accuracy - mean confidence|.
        let one = expected_calibration_error(&probabilities, &labels, 1);
        assert!((one - (0.75_f64 - 0.5)).abs() < 1e-12, "{one}");
        // Two bins, (0, 0.5] and (0.5, 1]: a confidence of exactly 0.5 (wrong) falls in the
        // first, with 0.4 (right); 0.9 (right) in the second. Open at the top, the first would
        // hold 0.4 alone (0.6 / 3) and the second 0.5 and 0.9 (0.2 * 2 / 3).
        let probabilities = vec![vec![0.3, 0.3, 0.4], vec![0.5, 0.25, 0.25], vec![0.9, 0.05, 0.05]];
        let ece = expected_calibration_error(&probabilities, &[2, 1, 0], 2);
        let closed = 2.0 / 3.0 * (0.5 - 0.45_f64).abs() + (1.0 - 0.9) / 3.0;
        assert!((ece - closed).abs() < 1e-12, "{ece} against {closed}");
    }

    /// The hand-made bins above, as the diagram has them.
    #[test]
    fn the_reliability_bins_hold_each_bin_s_confidence_and_accuracy() {
        let probabilities = vec![vec![0.94, 0.06], vec![0.04, 0.96], vec![0.5, 0.5], vec![0.4, 0.6]];
        let bins = reliability(&probabilities, &[0, 0, 0, 0], 15);
        assert_eq!(bins.len(), 15);
        let filled: Vec<(usize, usize, f64, f64)> =
            bins.iter().enumerate().filter(|(_, b)| b.count > 0).map(|(i, b)| (i, b.count, b.confidence, b.accuracy)).collect();
        assert_eq!(filled.len(), 3, "{filled:?}");
        assert_eq!((filled[0].0, filled[0].1, filled[0].3), (7, 1, 1.0));
        assert_eq!((filled[1].0, filled[1].1, filled[1].3), (8, 1, 0.0));
        assert_eq!((filled[2].0, filled[2].1, filled[2].3), (14, 2, 0.5));
        assert!((filled[2].2 - 0.95).abs() < 1e-12 && (bins[14].upper - 1.0).abs() < 1e-12 && bins[7].lower == 7.0 / 15.0);
    }

    #[test]
    fn probabilities_are_the_tempered_softmax() {
        let p = probabilities(&[1.0, 2.0, 3.0], 2.0);
        let e: Vec<f64> = [0.5_f64, 1.0, 1.5].iter().map(|x| x.exp()).collect();
        let sum: f64 = e.iter().sum();
        for (p, e) in p.iter().zip(&e) {
            assert!((p - e / sum).abs() < 1e-15);
        }
    }
}
