//! The one input every score takes: features, target labels, and optionally the source model's
//! class probabilities. Validation happens once, here, so the scores can assume clean input.

use faer::{Mat, MatRef};

use crate::error::{Error, Result};

/// Row sums of source probabilities may deviate from one by this much (f32 softmax outputs
/// stored and summed in f32 are off by a few 1e-7 at most).
const PROBABILITY_SUM_TOLERANCE: f64 = 1e-3;

/// Features (N x D), target labels (N, integers 0..C-1) and optional source probabilities
/// (N x Cs, rows summing to one), validated.
#[derive(Debug, Clone)]
pub struct ScoreInput {
    features: Mat<f64>,
    labels: Vec<usize>,
    num_classes: usize,
    source_probs: Option<SourceProbs>,
}

/// The source model's probabilities at the precision they were stored in. The scores read them
/// into f64 arithmetic (f32 to f64 is exact), so keeping f32 halves the memory LEEP and NCE
/// stream through without changing a result.
#[derive(Debug, Clone)]
pub enum SourceProbs {
    /// Single precision, as extraction writes them.
    F32(Mat<f32>),
    /// Double precision.
    F64(Mat<f64>),
}

impl SourceProbs {
    /// (N, Cs).
    pub fn shape(&self) -> (usize, usize) {
        match self {
            SourceProbs::F32(m) => m.shape(),
            SourceProbs::F64(m) => m.shape(),
        }
    }

    /// Entry (row, col) as f64.
    pub fn get(&self, row: usize, col: usize) -> f64 {
        match self {
            SourceProbs::F32(m) => f64::from(m[(row, col)]),
            SourceProbs::F64(m) => m[(row, col)],
        }
    }
}

impl ScoreInput {
    /// Builds an input from an N x D feature matrix and N labels.
    ///
    /// Fails on NaN/infinite features, N != labels.len(), fewer than two samples or two
    /// classes, and labels that are not exactly the integers 0..C-1 with every class present.
    pub fn new(features: Mat<f64>, labels: &[i64]) -> Result<Self> {
        if features.nrows() != labels.len() {
            return Err(Error::LengthMismatch {
                what: "score input",
                left_name: "features",
                left: features.nrows(),
                right_name: "labels",
                right: labels.len(),
            });
        }
        if features.ncols() == 0 {
            return Err(Error::NoFeatures);
        }
        if features.nrows() < 2 {
            return Err(Error::TooFewSamples { what: "a transferability score", needed: 2, got: features.nrows() });
        }
        check_finite("features", features.as_ref())?;
        let (labels, num_classes) = dense_labels(labels)?;
        Ok(Self { features, labels, num_classes, source_probs: None })
    }

    /// Builds an input from features stored row by row (`data.len() == rows * cols`).
    pub fn from_row_major(rows: usize, cols: usize, data: &[f64], labels: &[i64]) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(Error::LengthMismatch {
                what: "row-major features",
                left_name: "data",
                left: data.len(),
                right_name: "rows * cols",
                right: rows * cols,
            });
        }
        Self::new(Mat::from_fn(rows, cols, |i, j| data[i * cols + j]), labels)
    }

    /// Adds the source model's probabilities (N x Cs, the softmax of its logits), which LEEP and
    /// NCE use; fails if a row is negative, non-finite or does not sum to one.
    pub fn with_source_probs(self, probs: Mat<f64>) -> Result<Self> {
        self.with_probs(SourceProbs::F64(probs))
    }

    /// As [`ScoreInput::with_source_probs`], keeping single precision.
    pub fn with_source_probs_f32(self, probs: Mat<f32>) -> Result<Self> {
        self.with_probs(SourceProbs::F32(probs))
    }

    fn with_probs(mut self, probs: SourceProbs) -> Result<Self> {
        if probs.shape().0 != self.features.nrows() {
            return Err(Error::LengthMismatch {
                what: "score input",
                left_name: "features",
                left: self.features.nrows(),
                right_name: "source probabilities",
                right: probs.shape().0,
            });
        }
        if probs.shape().1 == 0 {
            return Err(Error::BadProbabilities { row: 0, problem: "there are no source classes".into() });
        }
        let (rows, cols) = probs.shape();
        match &probs {
            SourceProbs::F32(m) => check_finite("source probabilities", m.as_ref())?,
            SourceProbs::F64(m) => check_finite("source probabilities", m.as_ref())?,
        }
        let mut sums = vec![0.0f64; rows];
        for col in 0..cols {
            for (row, sum) in sums.iter_mut().enumerate() {
                let p = probs.get(row, col);
                if p < 0.0 {
                    return Err(Error::BadProbabilities { row, problem: format!("entry {col} is negative ({p})") });
                }
                *sum += p;
            }
        }
        for (row, &sum) in sums.iter().enumerate() {
            if (sum - 1.0).abs() > PROBABILITY_SUM_TOLERANCE {
                return Err(Error::BadProbabilities { row, problem: format!("the row sums to {sum}, not 1") });
            }
        }
        self.source_probs = Some(probs);
        Ok(self)
    }

    /// The N x D feature matrix.
    pub fn features(&self) -> MatRef<'_, f64> {
        self.features.as_ref()
    }

    /// The target label of each sample, in 0..C.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// C, the number of target classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The N x Cs source probabilities, if given.
    pub fn source_probs(&self) -> Option<&SourceProbs> {
        self.source_probs.as_ref()
    }

    /// N, the number of samples.
    pub fn num_samples(&self) -> usize {
        self.features.nrows()
    }

    /// D, the feature dimension.
    pub fn feature_dim(&self) -> usize {
        self.features.ncols()
    }

    /// The number of samples of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &label in &self.labels {
            counts[label] += 1;
        }
        counts
    }

    pub(crate) fn require_source_probs(&self, metric: &'static str) -> Result<&SourceProbs> {
        self.source_probs().ok_or(Error::MissingSourceProbs { metric })
    }
}

fn check_finite<T: Copy + Into<f64>>(name: &'static str, matrix: MatRef<'_, T>) -> Result<()> {
    for col in 0..matrix.ncols() {
        for row in 0..matrix.nrows() {
            let value: f64 = matrix[(row, col)].into();
            if !value.is_finite() {
                return Err(Error::NonFinite { name, row, col, value });
            }
        }
    }
    Ok(())
}

/// Checks that labels are exactly 0..C-1, every class present, and returns them as indices.
fn dense_labels(labels: &[i64]) -> Result<(Vec<usize>, usize)> {
    let mut max = 0i64;
    for (index, &label) in labels.iter().enumerate() {
        if label < 0 {
            return Err(Error::BadLabels { problem: format!("sample {index} has label {label}") });
        }
        max = max.max(label);
    }
    let num_classes = usize::try_from(max).map_err(|_| Error::BadLabels { problem: format!("label {max} is too large") })? + 1;
    if num_classes > labels.len() {
        return Err(Error::BadLabels { problem: format!("the largest label is {max} but there are only {} samples", labels.len()) });
    }
    let mut counts = vec![0usize; num_classes];
    // Labels are non-negative and at most `max`, checked above.
    let labels: Vec<usize> = labels.iter().map(|&label| label as usize).collect();
    for &label in &labels {
        counts[label] += 1;
    }
    let missing: Vec<usize> = (0..num_classes).filter(|&class| counts[class] == 0).collect();
    if !missing.is_empty() {
        return Err(Error::BadLabels {
            problem: format!("class(es) {missing:?} have no sample although label {max} occurs; renumber the classes"),
        });
    }
    if num_classes < 2 {
        return Err(Error::TooFewClasses { classes: num_classes });
    }
    Ok((labels, num_classes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(rows: usize) -> Mat<f64> {
        Mat::from_fn(rows, 2, |i, j| (i * 2 + j) as f64)
    }

    #[test]
    fn rejects_mismatched_lengths() {
        let err = ScoreInput::new(features(3), &[0, 1]).unwrap_err();
        assert!(matches!(err, Error::LengthMismatch { left: 3, right: 2, .. }), "{err}");
    }

    #[test]
    fn rejects_nan_and_names_its_position() {
        let mut f = features(4);
        f[(2, 1)] = f64::NAN;
        let err = ScoreInput::new(f, &[0, 1, 0, 1]).unwrap_err();
        assert!(matches!(err, Error::NonFinite { row: 2, col: 1, .. }), "{err}");
    }

    #[test]
    fn rejects_a_single_class() {
        let err = ScoreInput::new(features(3), &[0, 0, 0]).unwrap_err();
        assert!(matches!(err, Error::TooFewClasses { classes: 1 }), "{err}");
    }

    #[test]
    fn rejects_gaps_and_negative_labels() {
        let err = ScoreInput::new(features(4), &[0, 2, 0, 2]).unwrap_err();
        assert!(err.to_string().contains("[1]"), "{err}");
        let err = ScoreInput::new(features(4), &[0, -1, 0, 1]).unwrap_err();
        assert!(err.to_string().contains("label -1"), "{err}");
    }

    #[test]
    fn single_precision_probabilities_score_exactly_as_their_f64_copy() {
        let input = ScoreInput::new(features(6), &[0, 1, 0, 1, 1, 0]).unwrap();
        let probs = Mat::from_fn(6, 3, |i, j| [0.2f32, 0.3, 0.5][(i + j) % 3]);
        let single = input.clone().with_source_probs_f32(probs.clone()).unwrap();
        let double = input.with_source_probs(Mat::from_fn(6, 3, |i, j| f64::from(probs[(i, j)]))).unwrap();
        assert_eq!(crate::leep(&single).unwrap(), crate::leep(&double).unwrap());
        assert_eq!(crate::nce(&single).unwrap(), crate::nce(&double).unwrap());
    }

    #[test]
    fn rejects_probability_rows_that_do_not_sum_to_one() {
        let input = ScoreInput::new(features(2), &[0, 1]).unwrap();
        let probs = Mat::from_fn(2, 2, |i, _| if i == 0 { 0.5 } else { 0.7 });
        let err = input.clone().with_source_probs(probs).unwrap_err();
        assert!(matches!(err, Error::BadProbabilities { row: 1, .. }), "{err}");
        let negative = Mat::from_fn(2, 2, |_, j| if j == 0 { -0.5 } else { 1.5 });
        assert!(input.with_source_probs(negative).is_err());
    }
}
