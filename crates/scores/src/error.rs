//! The one error type of the crate: every message says what was wrong, where, and what to do.

use std::path::PathBuf;

/// Everything that can go wrong when scoring features or correlating results.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two inputs that must describe the same samples have different lengths.
    #[error("{what}: {left_name} has {left} rows but {right_name} has {right}; they must describe the same samples")]
    LengthMismatch {
        /// What was being computed.
        what: &'static str,
        /// The first input.
        left_name: &'static str,
        /// Its rows.
        left: usize,
        /// The second input.
        right_name: &'static str,
        /// Its rows.
        right: usize,
    },

    /// A matrix holds NaN or an infinity.
    #[error("{name} holds a non-finite value ({value}) at row {row}, column {col}; remove or impute such samples before scoring")]
    NonFinite {
        /// The matrix (or metric name).
        name: &'static str,
        /// The row.
        row: usize,
        /// The column.
        col: usize,
        /// The value found.
        value: f64,
    },

    /// Too few samples for the statistic.
    #[error("{what} needs at least {needed} samples, got {got}")]
    TooFewSamples {
        /// What was being computed.
        what: &'static str,
        /// How many it needs.
        needed: usize,
        /// How many it got.
        got: usize,
    },

    /// Too few features for the statistic.
    #[error("{what} needs at least {needed} features, got {got}")]
    TooFewFeatures {
        /// What was being computed.
        what: &'static str,
        /// How many it needs.
        needed: usize,
        /// How many it got.
        got: usize,
    },

    /// The features have no columns.
    #[error("the feature matrix has no columns; features must be N x D with D >= 1")]
    NoFeatures,

    /// Labels are not the integers 0..C-1 with every class present.
    #[error("labels must be the integers 0..C-1 with every class present: {problem}")]
    BadLabels {
        /// What is wrong.
        problem: String,
    },

    /// Fewer than two classes: no score can tell backbones apart.
    #[error("the labels hold {classes} class(es); transferability needs at least two")]
    TooFewClasses {
        /// Classes found.
        classes: usize,
    },

    /// A class has fewer samples than a per-class statistic needs.
    #[error(
        "{metric} estimates a per-class variance, which needs at least {needed} samples of class {class}; it has {count}. Merge or drop that class"
    )]
    SmallClass {
        /// The score.
        metric: &'static str,
        /// The class.
        class: usize,
        /// Its samples.
        count: usize,
        /// How many it needs.
        needed: usize,
    },

    /// A row of source probabilities does not sum to one, or has a negative entry.
    #[error("source probabilities, row {row}: {problem}; pass the softmax of the source logits")]
    BadProbabilities {
        /// The row.
        row: usize,
        /// What is wrong.
        problem: String,
    },

    /// A label-based score was asked for without source probabilities.
    #[error("{metric} needs the source model's probabilities (N x Cs softmax), which this input lacks")]
    MissingSourceProbs {
        /// The score.
        metric: &'static str,
    },

    /// A metric name that is not one of the scores.
    #[error("unknown metric '{name}'{hint}; the metrics are {known}")]
    UnknownMetric {
        /// The name given.
        name: String,
        /// ": did you mean ..." where the name is a score's spelled otherwise, else empty.
        hint: String,
        /// Every score's name, the paper's seven first.
        known: String,
    },

    /// The Gaussian mixture of N-LEEP met a covariance that is not positive definite.
    #[error(
        "the Gaussian mixture's component {component} has an ill-defined covariance (not positive definite) at EM iteration {iteration}; use fewer components or a larger reg_covar"
    )]
    IllDefinedCovariance {
        /// The mixture component.
        component: usize,
        /// The EM iteration.
        iteration: usize,
    },

    /// A mixture start whose shapes or values do not fit the data.
    #[error("invalid Gaussian mixture start: {problem}")]
    BadMixtureStart {
        /// What is wrong.
        problem: String,
    },

    /// An eigendecomposition did not converge.
    #[error("the symmetric eigendecomposition of the {what} did not converge")]
    EigenFailed {
        /// What was being computed.
        what: &'static str,
    },

    /// A score's iterative optimisation stopped without converging (PACTran-Gauss, LogME's
    /// fixed point): the value where it stopped is no score.
    #[error("{metric}: the optimiser stopped at {value} without converging: {why}")]
    NotConverged {
        /// The score.
        metric: &'static str,
        /// The objective where it stopped.
        value: f64,
        /// Why it stopped.
        why: &'static str,
    },

    /// A score's own parameter is out of its range.
    #[error("{metric}: {name} is {value}; {why}")]
    InvalidParameter {
        /// The score.
        metric: &'static str,
        /// The parameter.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What it must be.
        why: &'static str,
    },

    /// A score came out non-finite although its inputs were valid.
    #[error("{metric} came out non-finite ({value}): {why}")]
    NonFiniteScore {
        /// The score.
        metric: &'static str,
        /// The value found.
        value: f64,
        /// The likely cause.
        why: &'static str,
    },

    /// Terms to combine that are not a set-level score's (another count per model, or a
    /// per-model score).
    #[error("{metric}: the terms to combine must be a set-level score's (etran, ncti), {expected} per model")]
    MalformedTerms {
        /// The metric.
        metric: &'static str,
        /// Terms per model the metric has.
        expected: usize,
    },

    /// A score defined over a set of models was asked of one.
    #[error(
        "{metric} is defined over a set of candidate models (min-max scaled across them); score them together with score_set or `medxfer-scores score-set`"
    )]
    SetLevelMetric {
        /// The metric.
        metric: &'static str,
    },

    /// The models of a set were not scored on the same samples (labels differ).
    #[error(
        "model {model} of the set was not scored on the same samples as model 1: {problem}; a set compares models on the same images, in the same order (extract every model's features from one split)"
    )]
    NotTheSameSamples {
        /// The model, counting from 1.
        model: usize,
        /// How its samples differ.
        problem: String,
    },

    /// A correlation is undefined because one side is constant.
    #[error("{what} is undefined: the {side} values are all equal")]
    ConstantInput {
        /// What was being computed.
        what: &'static str,
        /// Which side is constant.
        side: &'static str,
    },

    /// A feature file could not be read or does not hold what the scores need.
    #[error("{path}: {problem}")]
    FeatureFile {
        /// The feature file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
