//! LEEP (Nguyen et al. 2020): the mean log-likelihood of the target labels under the "expected
//! empirical predictor" built from the source model's soft predictions.

use faer::MatRef;

use crate::error::Result;
use crate::h_score::finite;
use crate::input::ScoreInput;

/// LEEP of the source probabilities for the labels.
pub fn leep(input: &ScoreInput) -> Result<f64> {
    let probs = input.require_source_probs("leep")?;
    finite("leep", leep_of(probs, input.labels(), input.num_classes()))
}

/// LEEP of any soft assignment (N x Cs rows summing to one); N-LEEP reuses it with mixture
/// posteriors.
pub(crate) fn leep_of(probs: MatRef<'_, f64>, labels: &[usize], num_classes: usize) -> f64 {
    let (n, sources) = probs.shape();
    // joint[y, z] = sum over samples of class y of P[i, z] / N.
    let mut joint = vec![vec![0.0f64; sources]; num_classes];
    for z in 0..sources {
        for (p, &y) in probs.col(z).iter().zip(labels) {
            joint[y][z] += p / n as f64;
        }
    }
    // P(y | z) = joint / column sum. A source class no sample puts mass on contributes nothing
    // (the reference would divide 0 by 0 there, with no effect on the sum it keeps).
    let mut conditional = vec![vec![0.0f64; sources]; num_classes];
    for z in 0..sources {
        let column: f64 = (0..num_classes).map(|y| joint[y][z]).sum();
        if column > 0.0 {
            for y in 0..num_classes {
                conditional[y][z] = joint[y][z] / column;
            }
        }
    }
    // Column by column: the probabilities are stored by column.
    let mut expected = vec![0.0f64; n];
    for z in 0..sources {
        for ((e, p), &y) in expected.iter_mut().zip(probs.col(z).iter()).zip(labels) {
            *e += p * conditional[y][z];
        }
    }
    expected.iter().map(|e| e.ln()).sum::<f64>() / n as f64
}
