//! k-means as scikit-learn's `KMeans(n_clusters, n_init=1, random_state=seed)` runs it: greedy
//! k-means++ seeding (2 + ln k candidates per centre), then Lloyd iterations until the labels
//! stop changing or the centres move less than 1e-4 times the mean feature variance. Used to
//! start N-LEEP's Gaussian mixture, as `GaussianMixture(init_params="kmeans")` does.
//!
//! The random stream differs from numpy's, so the clusters can differ from scikit-learn's when
//! the data has several equally good clusterings.

use faer::{Accum, Mat, MatRef};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::linalg::parallelism;

const MAX_ITERATIONS: usize = 300;
const RELATIVE_TOLERANCE: f64 = 1e-4;

/// Cluster labels (0..k) of each row of `x`.
pub(crate) fn kmeans_labels(x: MatRef<'_, f64>, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut centres = kmeans_plus_plus(x, k, &mut rng);
    let (n, d) = x.shape();
    let tolerance = RELATIVE_TOLERANCE * mean_column_variance(x);
    let mut labels = assign(x, centres.as_ref());
    for _ in 0..MAX_ITERATIONS {
        let new_centres = update_centres(x, &labels, k, centres.as_ref());
        let shift: f64 = (0..k).map(|c| (0..d).map(|j| (new_centres[(c, j)] - centres[(c, j)]).powi(2)).sum::<f64>()).sum();
        centres = new_centres;
        let new_labels = assign(x, centres.as_ref());
        let unchanged = new_labels == labels;
        labels = new_labels;
        if unchanged || shift <= tolerance {
            break;
        }
    }
    debug_assert_eq!(labels.len(), n);
    labels
}

fn mean_column_variance(x: MatRef<'_, f64>) -> f64 {
    let n = x.nrows() as f64;
    let total: f64 = (0..x.ncols())
        .map(|j| {
            let mean = x.col(j).iter().sum::<f64>() / n;
            x.col(j).iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n
        })
        .sum();
    total / x.ncols() as f64
}

fn squared_distances_to(x: MatRef<'_, f64>, row: usize) -> Vec<f64> {
    let (n, d) = x.shape();
    let mut out = vec![0.0; n];
    for j in 0..d {
        let centre = x[(row, j)];
        for (i, value) in x.col(j).iter().enumerate() {
            out[i] += (value - centre).powi(2);
        }
    }
    out
}

/// scikit-learn's greedy k-means++: each new centre is the best of several candidates drawn
/// with probability proportional to the squared distance to the nearest chosen centre.
fn kmeans_plus_plus(x: MatRef<'_, f64>, k: usize, rng: &mut ChaCha8Rng) -> Mat<f64> {
    let (n, d) = x.shape();
    let trials = 2 + (k as f64).ln() as usize;
    let mut chosen = Vec::with_capacity(k);
    let first = rng.random_range(0..n);
    chosen.push(first);
    let mut closest = squared_distances_to(x, first);
    let mut potential: f64 = closest.iter().sum();
    for _ in 1..k {
        let mut cumulative = Vec::with_capacity(n);
        let mut running = 0.0;
        for value in &closest {
            running += value;
            cumulative.push(running);
        }
        let mut best: Option<(f64, usize, Vec<f64>)> = None;
        for _ in 0..trials {
            let target = rng.random::<f64>() * potential;
            let candidate = cumulative.partition_point(|&c| c < target).min(n - 1);
            let mut distances = squared_distances_to(x, candidate);
            for (mine, closest) in distances.iter_mut().zip(&closest) {
                *mine = mine.min(*closest);
            }
            let candidate_potential: f64 = distances.iter().sum();
            if best.as_ref().is_none_or(|(p, _, _)| candidate_potential < *p) {
                best = Some((candidate_potential, candidate, distances));
            }
        }
        if let Some((best_potential, candidate, distances)) = best {
            potential = best_potential;
            closest = distances;
            chosen.push(candidate);
        }
    }
    Mat::from_fn(k, d, |c, j| x[(chosen[c], j)])
}

/// The nearest centre of each row (ties to the lowest index).
fn assign(x: MatRef<'_, f64>, centres: MatRef<'_, f64>) -> Vec<usize> {
    let n = x.nrows();
    let k = centres.nrows();
    // ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; the first term does not change the argmin.
    let mut cross = Mat::<f64>::zeros(n, k);
    faer::linalg::matmul::matmul(cross.as_mut(), Accum::Replace, x, centres.transpose(), 1.0, parallelism());
    let centre_norms: Vec<f64> = (0..k).map(|c| centres.row(c).iter().map(|v| v * v).sum()).collect();
    (0..n)
        .map(|i| {
            let mut best = (f64::INFINITY, 0);
            for c in 0..k {
                let distance = centre_norms[c] - 2.0 * cross[(i, c)];
                if distance < best.0 {
                    best = (distance, c);
                }
            }
            best.1
        })
        .collect()
}

/// Cluster means; an empty cluster takes the row farthest from its current centre, as
/// scikit-learn relocates empty clusters.
fn update_centres(x: MatRef<'_, f64>, labels: &[usize], k: usize, old: MatRef<'_, f64>) -> Mat<f64> {
    let (n, d) = x.shape();
    let mut sums = Mat::<f64>::zeros(k, d);
    let mut counts = vec![0usize; k];
    for (i, &label) in labels.iter().enumerate() {
        counts[label] += 1;
        for j in 0..d {
            sums[(label, j)] += x[(i, j)];
        }
    }
    let mut taken = vec![false; n];
    for c in 0..k {
        if counts[c] > 0 {
            for j in 0..d {
                sums[(c, j)] /= counts[c] as f64;
            }
            continue;
        }
        let farthest = (0..n)
            .filter(|&i| !taken[i])
            .map(|i| {
                let distance: f64 = (0..d).map(|j| (x[(i, j)] - old[(labels[i], j)]).powi(2)).sum();
                (distance, i)
            })
            .fold((f64::NEG_INFINITY, 0), |best, candidate| if candidate.0 > best.0 { candidate } else { best });
        taken[farthest.1] = true;
        for j in 0..d {
            sums[(c, j)] = x[(farthest.1, j)];
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_three_obvious_clusters_whatever_the_seed() {
        let centres = [(0.0, 0.0), (10.0, 10.0), (-10.0, 10.0)];
        let x = Mat::from_fn(90, 2, |i, j| {
            let c = centres[i % 3];
            let jitter = ((i * 37 % 11) as f64 - 5.0) / 10.0;
            if j == 0 { c.0 + jitter } else { c.1 - jitter }
        });
        for seed in 0..5 {
            let labels = kmeans_labels(x.as_ref(), 3, seed);
            for i in 0..90 {
                assert_eq!(labels[i], labels[i % 3], "seed {seed}, row {i}");
            }
            assert_ne!(labels[0], labels[1]);
            assert_ne!(labels[1], labels[2]);
            assert_ne!(labels[0], labels[2]);
        }
    }
}
