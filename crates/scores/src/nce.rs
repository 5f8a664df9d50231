//! NCE (Tran et al. 2019): the negative conditional entropy -H(Y | Z) of the target labels given
//! the source model's hard predictions z = argmax P, in nats.

use faer::MatRef;
use rayon::prelude::*;

use crate::error::Result;
use crate::h_score::finite;
use crate::input::{ScoreInput, SourceProbs};

/// Added to P(y | z) before the logarithm, as the reference does.
const LOG_EPSILON: f64 = 1e-20;

/// NCE of the source model's predictions for the labels.
pub fn nce(input: &ScoreInput) -> Result<f64> {
    let probs = input.require_source_probs("nce")?;
    let (n, sources) = probs.shape();
    let predicted = match probs {
        SourceProbs::F32(probs) => argmax_rows(probs.as_ref()),
        SourceProbs::F64(probs) => argmax_rows(probs.as_ref()),
    };
    let classes = input.num_classes();
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
                let p = joint[y][z] / p_z;
                -p * (p + LOG_EPSILON).ln()
            })
            .sum();
        conditional_entropy += entropy * p_z;
    }
    finite("nce", -conditional_entropy)
}

/// numpy's argmax of each row (the first maximum), column by column as the probabilities are
/// stored, in parallel row chunks.
fn argmax_rows<T: Copy + PartialOrd + Sync>(probs: MatRef<'_, T>) -> Vec<usize> {
    let (n, sources) = probs.shape();
    // One chunk per thread: an argmax does not depend on how rows are split.
    let chunk = n.div_ceil(rayon::current_num_threads()).max(1);
    (0..n)
        .step_by(chunk)
        .map(|start| (start, chunk.min(n - start)))
        .collect::<Vec<_>>()
        .into_par_iter()
        .flat_map_iter(|(start, rows)| {
            // u32 indices keep the selects as wide as the f32 comparisons.
            let mut predicted = vec![0u32; rows];
            let mut best: Vec<T> = probs.col(0).subrows(start, rows).iter().copied().collect();
            for z in 1..sources {
                for ((p, b), index) in probs.col(z).subrows(start, rows).iter().zip(best.iter_mut()).zip(predicted.iter_mut()) {
                    // Branch-free, so the loop vectorises.
                    let greater = *p > *b;
                    *b = if greater { *p } else { *b };
                    *index = if greater { z as u32 } else { *index };
                }
            }
            predicted.into_iter().map(|z| z as usize)
        })
        .collect()
}
