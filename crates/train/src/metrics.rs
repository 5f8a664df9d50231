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

/// Each class's area under the ROC curve against all the others (one-vs-rest, as scikit-learn's
/// `roc_auc_score(..., multi_class="ovr", average=None)`), from each image's probability of that
/// class: the chance that an image of the class gets a higher probability of it than an image of
/// another class, ties counted half (the Mann-Whitney U over the two groups). None for a class
/// with no image, or every image, in `labels`: there is nothing to separate.
pub fn one_vs_rest_auroc(probabilities: &[Vec<f64>], labels: &[u32], classes: usize) -> Vec<Option<f64>> {
    (0..classes)
        .map(|class| {
            let mut scored: Vec<(f64, bool)> = probabilities
                .iter()
                .zip(labels)
                .map(|(row, &label)| (row.get(class).copied().unwrap_or(f64::NAN), label as usize == class))
                .collect();
            let positives = scored.iter().filter(|(_, positive)| *positive).count();
            let negatives = scored.len() - positives;
            if positives == 0 || negatives == 0 || scored.iter().any(|(p, _)| p.is_nan()) {
                return None;
            }
            scored.sort_by(|a, b| a.0.total_cmp(&b.0));
            // The positives' rank sum, tied scores given their mean rank (1-based).
            let mut positive_ranks = 0.0;
            let mut start = 0;
            while start < scored.len() {
                let end = start + scored[start..].iter().take_while(|(p, _)| *p == scored[start].0).count();
                let mean_rank = (start + 1 + end) as f64 / 2.0;
                positive_ranks += mean_rank * scored[start..end].iter().filter(|(_, positive)| *positive).count() as f64;
                start = end;
            }
            let (positives, negatives) = (positives as f64, negatives as f64);
            Some((positive_ranks - positives * (positives + 1.0) / 2.0) / (positives * negatives))
        })
        .collect()
}

/// The mean of the classes' one-vs-rest AUROCs that are defined (scikit-learn's
/// `average="macro"`, which refuses a class without images instead); None where none is.
pub fn macro_auroc(per_class: &[Option<f64>]) -> Option<f64> {
    let defined: Vec<f64> = per_class.iter().flatten().copied().collect();
    (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// scikit-learn 1.9.1's `roc_auc_score(y, p, multi_class="ovr", average=None)` and `"macro"` on the
    /// same probabilities (tenths, so that many tie), and its binary AUROC of p(class 1).
    #[test]
    fn the_aurocs_are_scikit_learn_s_with_ties_counted_half() {
        let p = [
            [0.7, 0.2, 0.1],
            [0.5, 0.3, 0.2],
            [0.2, 0.6, 0.2],
            [0.3, 0.3, 0.4],
            [0.1, 0.1, 0.8],
            [0.4, 0.4, 0.2],
            [0.6, 0.3, 0.1],
            [0.2, 0.2, 0.6],
            [0.3, 0.5, 0.2],
            [0.5, 0.1, 0.4],
            [0.2, 0.3, 0.5],
            [0.4, 0.3, 0.3],
        ];
        let probabilities: Vec<Vec<f64>> = p.iter().map(|row| row.to_vec()).collect();
        let labels = [0, 0, 1, 2, 2, 1, 0, 2, 1, 0, 1, 0];
        let per_class = one_vs_rest_auroc(&probabilities, &labels, 3);
        for (ours, sklearn) in per_class.iter().zip([0.9857142857142857, 0.9375, 0.9444444444444444]) {
            assert!((ours.unwrap() - sklearn).abs() < 1e-12, "{per_class:?}");
        }
        assert!((macro_auroc(&per_class).unwrap() - 0.9558862433862435).abs() < 1e-12);
        // Binary: both classes' one-vs-rest AUROC is sklearn's AUROC of p(class 1).
        let p1 = [0.2, 0.8, 0.4, 0.4, 0.9, 0.1, 0.6, 0.6];
        let binary: Vec<Vec<f64>> = p1.iter().map(|&p| vec![1.0 - p, p]).collect();
        let per_class = one_vs_rest_auroc(&binary, &[0, 1, 1, 0, 1, 0, 0, 1], 2);
        assert!(per_class.iter().all(|auroc| (auroc.unwrap() - 0.875).abs() < 1e-12), "{per_class:?}");
        // A class without images, or with every image, has none; the macro mean skips it.
        let per_class = one_vs_rest_auroc(&binary, &[1; 8], 2);
        assert_eq!(per_class, [None, None]);
        assert_eq!(macro_auroc(&per_class), None);
        let per_class = one_vs_rest_auroc(&probabilities, &labels, 4);
        assert_eq!(per_class[3], None);
        assert!((macro_auroc(&per_class).unwrap() - 0.9558862433862435).abs() < 1e-12);
    }
}
