//! NCE (Tran et al. 2019): the negative conditional entropy -H(Y | Z) of the target labels given
//! the source model's hard predictions z = argmax P, in nats.

use crate::error::Result;
use crate::h_score::finite;
use crate::input::ScoreInput;

/// Added to P(y | z) before the logarithm, as the reference does.
const LOG_EPSILON: f64 = 1e-20;

/// NCE of the source model's predictions for the labels.
pub fn nce(input: &ScoreInput) -> Result<f64> {
    let probs = input.require_source_probs("nce")?;
    let (n, sources) = probs.shape();
    let classes = input.num_classes();
    // numpy's argmax (the first maximum), column by column as the probabilities are stored.
    let mut predicted = vec![0usize; n];
    let mut best: Vec<f64> = probs.col(0).iter().copied().collect();
    for z in 1..sources {
        for ((p, b), index) in probs.col(z).iter().zip(best.iter_mut()).zip(predicted.iter_mut()) {
            if *p > *b {
                *b = *p;
                *index = z;
            }
        }
    }
    let mut joint = vec![vec![0.0f64; sources]; classes];
    for (&y, &z) in input.labels().iter().zip(&predicted) {
        joint[y][z] += 1.0 / n as f64;
    }
    let mut conditional_entropy = 0.0;
    for z in 0..sources {
        let p_z: f64 = (0..classes).map(|y| joint[y][z]).sum();
        if p_z == 0.0 {
            continue;
        }
        let entropy: f64 = (0..classes)
            .map(|y| {
                let p = joint[y][z] / p_z + LOG_EPSILON;
                -p * p.ln()
            })
            .sum();
        conditional_entropy += entropy * p_z;
    }
    finite("nce", -conditional_entropy)
}
