//! Classification metrics over a whole split: the confusion matrix, per-class recall, balanced
//! accuracy (their mean, sklearn's `balanced_accuracy_score`) and accuracy.

use serde::{Deserialize, Serialize};

/// A split's predictions summarised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// confusion[true][predicted].
    pub confusion: Vec<Vec<usize>>,
    /// Recall of each class present in the split (None for a class with no sample).
    pub recall: Vec<Option<f64>>,
    /// The mean of the per-class recalls.
    pub balanced_accuracy: f64,
    /// The fraction predicted right.
    pub accuracy: f64,
}

/// Evaluates `predicted` against `truth` over `classes` classes. Classes absent from `truth`
/// are left out of the balanced accuracy, as scikit-learn does (with its warning).
pub fn evaluate(truth: &[u32], predicted: &[u32], classes: usize) -> Evaluation {
    let mut confusion = vec![vec![0usize; classes]; classes];
    for (&t, &p) in truth.iter().zip(predicted) {
        if (t as usize) < classes && (p as usize) < classes {
            confusion[t as usize][p as usize] += 1;
        }
    }
    let recall: Vec<Option<f64>> = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let total: usize = row.iter().sum();
            (total > 0).then(|| row[c] as f64 / total as f64)
        })
        .collect();
    let present: Vec<f64> = recall.iter().flatten().copied().collect();
    let balanced_accuracy = if present.is_empty() { 0.0 } else { present.iter().sum::<f64>() / present.len() as f64 };
    let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
    let accuracy = if truth.is_empty() { 0.0 } else { correct as f64 / truth.len() as f64 };
    Evaluation { confusion, recall, balanced_accuracy, accuracy }
}
