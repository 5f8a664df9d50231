//! LEEP (Nguyen et al. 2020): the mean log-likelihood of the target labels under the "expected
//! empirical predictor" built from the source model's soft predictions.

use faer::MatRef;
use rayon::prelude::*;

use crate::error::Result;
use crate::h_score::finite;
use crate::input::{ScoreInput, SourceProbs};

/// Rows per parallel task: the passes over N x Cs probabilities are bound by memory bandwidth,
/// which two cores share better than one uses.
pub(crate) const ROW_CHUNK: usize = 2048;
const LANES: usize = 4;

/// LEEP of the source probabilities for the labels.
pub fn leep(input: &ScoreInput) -> Result<f64> {
    let value = match input.require_source_probs("leep")? {
        SourceProbs::F32(probs) => leep_of(probs.as_ref(), input.labels(), input.num_classes()),
        SourceProbs::F64(probs) => leep_of(probs.as_ref(), input.labels(), input.num_classes()),
    };
    finite("leep", value)
}

/// Row ranges for the parallel passes, in a fixed order so that sums do not depend on threads.
pub(crate) fn row_chunks(n: usize) -> Vec<(usize, usize)> {
    (0..n).step_by(ROW_CHUNK).map(|start| (start, ROW_CHUNK.min(n - start))).collect()
}

/// LEEP of any soft assignment (N x Cs rows summing to one); N-LEEP reuses it with mixture
/// posteriors.
pub(crate) fn leep_of<T: Copy + Into<f64> + Sync>(probs: MatRef<'_, T>, labels: &[usize], num_classes: usize) -> f64 {
    let (n, sources) = probs.shape();
    let chunks = row_chunks(n);
    // joint[y][z] = sum over samples of class y of P[i, z] / N, summed chunk by chunk.
    let partial_joints: Vec<Vec<Vec<f64>>> = chunks
        .par_iter()
        .map(|&(start, rows)| {
            let mut joint = vec![vec![0.0f64; sources]; num_classes];
            // LANES interleaved accumulators per class: consecutive rows of one class would
            // otherwise wait on each other's addition.
            let mut lanes = vec![0.0f64; num_classes * LANES];
            let chunk_labels = &labels[start..start + rows];
            for z in 0..sources {
                lanes.fill(0.0);
                for (i, (p, &y)) in probs.col(z).subrows(start, rows).iter().zip(chunk_labels).enumerate() {
                    lanes[y * LANES + i % LANES] += (*p).into();
                }
                for (row, class_lanes) in joint.iter_mut().zip(lanes.chunks_exact(LANES)) {
                    row[z] = class_lanes.iter().sum::<f64>() / n as f64;
                }
            }
            joint
        })
        .collect();
    let mut joint = vec![vec![0.0f64; sources]; num_classes];
    for partial in &partial_joints {
        for (row, partial_row) in joint.iter_mut().zip(partial) {
            for (value, add) in row.iter_mut().zip(partial_row) {
                *value += add;
            }
        }
    }
    // P(y | z) = joint / column sum. A source class no sample puts mass on contributes nothing
    // (the reference would divide 0 by 0 there, with no effect on the sum it keeps).
    // Stored source-major, conditional[z * C + y], for the pass below.
    let mut conditional = vec![0.0f64; sources * num_classes];
    for z in 0..sources {
        let column: f64 = (0..num_classes).map(|y| joint[y][z]).sum();
        if column > 0.0 {
            for y in 0..num_classes {
                conditional[z * num_classes + y] = joint[y][z] / column;
            }
        }
    }
    let partial_logs: Vec<f64> = chunks
        .par_iter()
        .map(|&(start, rows)| {
            let chunk_labels = &labels[start..start + rows];
            let mut expected = vec![0.0f64; rows];
            for (z, given_z) in conditional.chunks_exact(num_classes).enumerate() {
                for ((e, p), &y) in expected.iter_mut().zip(probs.col(z).subrows(start, rows).iter()).zip(chunk_labels) {
                    *e += (*p).into() * given_z[y];
                }
            }
            expected.iter().map(|e| e.ln()).sum::<f64>()
        })
        .collect();
    partial_logs.iter().sum::<f64>() / n as f64
}
