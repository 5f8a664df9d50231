//! How far each tau-b can be trusted with ten backbones: a percentile bootstrap over the
//! backbones (resampled with replacement, the scores and accuracies of a backbone kept
//! together), a permutation p-value (exact up to eight backbones, else Monte Carlo), and the mean
//! tau-b across tasks with its bootstrap interval (backbones resampled within each task).
//!
//! Every draw comes from ChaCha8 seeded with the study's bootstrap seed mixed with the cell's
//! name, so a cell's interval does not depend on which other cells exist.

use medxfer_scores::kendall_tau_b;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Resamples and seed of the bootstrap and of the Monte Carlo permutation test (study.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapSettings {
    pub resamples: usize,
    pub seed: u64,
}

impl Default for BootstrapSettings {
    fn default() -> Self {
        Self { resamples: 10_000, seed: 0 }
    }
}

/// The central 95% of the bootstrap distribution.
const LOWER_QUANTILE: f64 = 0.025;
const UPPER_QUANTILE: f64 = 0.975;
/// Up to this many backbones the permutation test enumerates every permutation (8! = 40,320).
const EXACT_PERMUTATIONS_UP_TO: usize = 8;

/// A generator for one named cell: the settings' seed mixed with the name (FNV-1a).
pub fn cell_rng(settings: BootstrapSettings, name: &str) -> ChaCha8Rng {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    ChaCha8Rng::seed_from_u64(settings.seed ^ hash)
}

/// tau-b, or None where it is undefined (a constant side).
fn tau(x: &[f64], y: &[f64]) -> Option<f64> {
    kendall_tau_b(x, y).ok().map(|k| k.tau).filter(|t| t.is_finite())
}

/// numpy's default ("linear") quantile of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let (below, fraction) = (position.floor() as usize, position.fract());
    match sorted.get(below + 1) {
        Some(next) => sorted[below] + fraction * (next - sorted[below]),
        None => sorted[below],
    }
}

/// The percentile interval of tau-b over `resamples` bootstrap resamples of the backbones.
/// Resamples on which tau-b is undefined (every drawn backbone tied) are dropped; None when more
/// than half are, or with fewer than three backbones.
pub fn tau_interval(x: &[f64], y: &[f64], resamples: usize, rng: &mut impl Rng) -> Option<(f64, f64)> {
    if x.len() < 3 || resamples == 0 {
        return None;
    }
    interval(bootstrap_taus(x, y, resamples, rng), resamples)
}

/// tau-b of each bootstrap resample of the backbones where it is defined.
fn bootstrap_taus(x: &[f64], y: &[f64], resamples: usize, rng: &mut impl Rng) -> Vec<f64> {
    let n = x.len();
    let mut taus = Vec::with_capacity(resamples);
    let (mut xs, mut ys) = (vec![0.0; n], vec![0.0; n]);
    for _ in 0..resamples {
        for k in 0..n {
            let i = rng.random_range(0..n);
            (xs[k], ys[k]) = (x[i], y[i]);
        }
        taus.extend(tau(&xs, &ys));
    }
    taus
}

/// The 95% bias-corrected percentile interval (Efron's BC: BCa without the acceleration, which
/// would cost a jackknife over every image) of sorted bootstrap values of a statistic whose value
/// on the full sample is `observed`. Where a share p of the values lies below `observed` (ties
/// counted half, as scipy's bootstrap counts them), the bounds are the quantiles at
/// Φ(2·Φ⁻¹(p) ∓ 1.96) in place of 2.5% and 97.5%: resamples whose median has moved off the
/// observed value (a score that rises on repeated images) move the interval back by as much. A
/// p of 0 or 1 (every value on one side, where scipy gives NaN) is taken as one value tied: the
/// interval then lies at the resamples' extreme, still on that side.
pub fn bias_corrected_interval(sorted: &[f64], observed: f64) -> (f64, f64) {
    use statrs::distribution::{ContinuousCDF, Normal};
    let normal = Normal::standard();
    let count = sorted.len() as f64;
    let below = sorted.iter().filter(|&&v| v < observed).count() as f64;
    let at_most = sorted.iter().filter(|&&v| v <= observed).count() as f64;
    let share = ((below + at_most) / (2.0 * count)).clamp(0.5 / count, 1.0 - 0.5 / count);
    let bias = normal.inverse_cdf(share);
    let tail = normal.inverse_cdf(LOWER_QUANTILE);
    (quantile(sorted, normal.cdf(2.0 * bias + tail)), quantile(sorted, normal.cdf(2.0 * bias - tail)))
}

fn interval(mut values: Vec<f64>, resamples: usize) -> Option<(f64, f64)> {
    if values.len() * 2 < resamples {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some((quantile(&values, LOWER_QUANTILE), quantile(&values, UPPER_QUANTILE)))
}

/// Two-sided permutation p-value of tau-b: the share of orderings of the accuracies whose |tau-b|
/// is at least the observed one. Every permutation up to eight backbones (then, without ties, it
/// is the exact null distribution scipy's exact p-value uses); else `permutations` random ones,
/// counted as (1 + hits) / (1 + permutations).
pub fn permutation_p(x: &[f64], y: &[f64], permutations: usize, rng: &mut impl Rng) -> Option<f64> {
    let observed = tau(x, y)?.abs();
    // Rounding: equal |tau| of another ordering must count as "at least".
    let at_least = |t: f64| t.abs() >= observed - 1e-12;
    let n = x.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut permuted = vec![0.0; n];
    if n <= EXACT_PERMUTATIONS_UP_TO {
        let (mut hits, mut total) = (0u64, 0u64);
        // Heap's algorithm over every ordering.
        let mut counters = vec![0usize; n];
        let mut visit = |order: &[usize]| {
            for (k, &i) in order.iter().enumerate() {
                permuted[k] = y[i];
            }
            total += 1;
            hits += u64::from(tau(x, &permuted).is_some_and(at_least));
        };
        visit(&order);
        let mut i = 0;
        while i < n {
            if counters[i] < i {
                let j = if i % 2 == 0 { 0 } else { counters[i] };
                order.swap(j, i);
                visit(&order);
                counters[i] += 1;
                i = 0;
            } else {
                counters[i] = 0;
                i += 1;
            }
        }
        return Some(hits as f64 / total as f64);
    }
    if permutations == 0 {
        return None;
    }
    let mut hits = 0usize;
    for _ in 0..permutations {
        for k in (1..n).rev() {
            order.swap(k, rng.random_range(0..=k));
        }
        for (k, &i) in order.iter().enumerate() {
            permuted[k] = y[i];
        }
        hits += usize::from(tau(x, &permuted).is_some_and(at_least));
    }
    Some((1 + hits) as f64 / (1 + permutations) as f64)
}

/// The mean tau-b over tasks (each task's (scores, accuracies)) and its percentile interval:
/// each resample redraws every task's backbones with replacement, independently (a resample
/// where some task's tau-b is undefined is dropped). None when a task's tau-b is undefined; no
/// interval when a task has fewer than three backbones or most resamples are dropped.
pub fn mean_tau_interval(tasks: &[(Vec<f64>, Vec<f64>)], resamples: usize, rng: &mut impl Rng) -> Option<(f64, Option<(f64, f64)>)> {
    if tasks.is_empty() {
        return None;
    }
    let observed: Vec<f64> = tasks.iter().map(|(x, y)| tau(x, y)).collect::<Option<_>>()?;
    let mean = observed.iter().sum::<f64>() / observed.len() as f64;
    if tasks.iter().any(|(x, _)| x.len() < 3) {
        return Some((mean, None));
    }
    let mut means = Vec::with_capacity(resamples);
    'resample: for _ in 0..resamples {
        let mut total = 0.0;
        for (x, y) in tasks {
            let n = x.len();
            let (mut xs, mut ys) = (vec![0.0; n], vec![0.0; n]);
            for k in 0..n {
                let i = rng.random_range(0..n);
                (xs[k], ys[k]) = (x[i], y[i]);
            }
            match tau(&xs, &ys) {
                Some(t) => total += t,
                None => continue 'resample,
            }
        }
        means.push(total / tasks.len() as f64);
    }
    Some((mean, interval(means, resamples)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The bias-corrected interval against scipy 1.17's BCa with the acceleration 0 (its
    /// `_bca_interval` steps: `_percentile_of_score`, `ndtri`, `ndtr`, `stats.quantile`), on 40
    /// values: an observed value tied with one value, one with 30% below, the median (the
    /// percentile interval), and values beyond either end (scipy: NaN; here one value tied).
    #[test]
    fn the_bias_corrected_interval_is_scipy_s_bca_without_acceleration() {
        let mut draws: Vec<f64> = (0..40).map(|i| ((i * 37) % 41) as f64 / 8.0 + 0.01 * i as f64).collect();
        draws.sort_by(f64::total_cmp);
        let median = (draws[19] + draws[20]) / 2.0;
        for (observed, scipy) in [
            (0.225, (1.479823747541076e-07, 0.47992553845681696)),
            (1.7, (0.011508935441386254, 4.3183291655727345)),
            (median, (0.21937499999999982, 5.090625)),
            (-5.0, (5.147100745617195e-10, 0.0510752679847676)),
            (100.0, (5.258924732015233, 5.3099999994852904)),
        ] {
            let (low, high) = bias_corrected_interval(&draws, observed);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-6);
            assert!(close(low, scipy.0) && close(high, scipy.1), "{observed}: ({low}, {high}) vs scipy {scipy:?}");
        }
        // At the median it is the percentile interval (statrs's Φ and Φ⁻¹ round-trip to ~1e-11).
        let (low, high) = bias_corrected_interval(&draws, median);
        assert!((low - quantile(&draws, 0.025)).abs() < 1e-9 && (high - quantile(&draws, 0.975)).abs() < 1e-9, "{low} {high}");
    }

    /// The bootstrap distribution of tau-b for five backbones, enumerated exactly (all 5^5
    /// equally likely resamples): the Monte Carlo draws follow it (its share below each atom, its
    /// mean), and the interval's ends are quantiles of it.
    #[test]
    fn the_bootstrap_follows_the_enumerated_bootstrap_distribution() {
        let x = [0.1, 0.4, 0.2, 0.9, 0.5];
        let y = [0.60, 0.72, 0.65, 0.70, 0.81];
        let mut exact = Vec::new();
        for code in 0..5usize.pow(5) {
            let picks: Vec<usize> = (0..5).map(|k| code / 5usize.pow(k) % 5).collect();
            let xs: Vec<f64> = picks.iter().map(|&i| x[i]).collect();
            let ys: Vec<f64> = picks.iter().map(|&i| y[i]).collect();
            exact.extend(tau(&xs, &ys));
        }
        let mut rng = cell_rng(BootstrapSettings::default(), "test");
        let drawn = bootstrap_taus(&x, &y, 40_000, &mut rng);
        let share = |values: &[f64], t: f64| values.iter().filter(|&&v| v <= t + 1e-12).count() as f64 / values.len() as f64;
        for t in [-0.5, 0.0, 0.2, 0.5, 0.8] {
            assert!(
                (share(&drawn, t) - share(&exact, t)).abs() < 0.01,
                "P(tau <= {t}): drawn {}, exact {}",
                share(&drawn, t),
                share(&exact, t)
            );
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean(&drawn) - mean(&exact)).abs() < 0.01);
        let (low, high) = tau_interval(&x, &y, 10_000, &mut rng).unwrap();
        assert!(share(&exact, low) >= 0.01 && share(&exact, low) <= 0.06, "{low}: {}", share(&exact, low));
        assert!(share(&exact, high - 1e-9) <= 0.975 && high <= 1.0, "{high}");
        // The same seed and cell give the same interval; another cell name another stream.
        let again = tau_interval(&x, &y, 2_000, &mut cell_rng(BootstrapSettings::default(), "a")).unwrap();
        assert_eq!(again, tau_interval(&x, &y, 2_000, &mut cell_rng(BootstrapSettings::default(), "a")).unwrap());
        let other = bootstrap_taus(&x, &y, 50, &mut cell_rng(BootstrapSettings::default(), "b"));
        assert_ne!(bootstrap_taus(&x, &y, 50, &mut cell_rng(BootstrapSettings::default(), "a")), other);
        assert!(tau_interval(&x[..2], &y[..2], 100, &mut rng).is_none());
    }

    /// Without ties, the exact permutation p-value is scipy's exact kendalltau p-value:
    /// scipy.stats.kendalltau([1..7], [2, 1, 4, 3, 7, 5, 6]) = (0.6190476190476191,
    /// 0.0690476190476190); for ten backbones the Monte Carlo estimate falls near scipy's exact
    /// kendalltau(range(10), [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]) = (0.7777777777777777, 0.0009463183421516755).
    #[test]
    fn the_permutation_p_value_is_scipys_exact_one() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let y = [2.0, 1.0, 4.0, 3.0, 7.0, 5.0, 6.0];
        let mut rng = cell_rng(BootstrapSettings::default(), "p");
        let p = permutation_p(&x, &y, 0, &mut rng).unwrap();
        assert!((p - 0.069_047_619_047_619_05).abs() < 1e-12, "{p}");
        let x: Vec<f64> = (0..10).map(f64::from).collect();
        let y = [1.0, 0.0, 3.0, 2.0, 5.0, 4.0, 7.0, 6.0, 9.0, 8.0];
        let p = permutation_p(&x, &y, 200_000, &mut rng).unwrap();
        assert!((p - 0.000_946_318_342_151_675_5).abs() < 3e-4, "{p}");
        assert!(permutation_p(&x, &[1.0; 10], 10, &mut rng).is_none());
    }

    /// One task: the mean is its tau-b and the interval its own bootstrap interval (same draws);
    /// two identical tasks average to the same tau-b with a narrower interval.
    #[test]
    fn the_mean_over_tasks_of_one_task_is_its_own_tau() {
        let x = vec![0.1, 0.4, 0.2, 0.9, 0.5, 0.3];
        let y = vec![0.60, 0.72, 0.65, 0.70, 0.81, 0.62];
        let settings = BootstrapSettings::default();
        let (mean, Some((low, high))) = mean_tau_interval(&[(x.clone(), y.clone())], 4_000, &mut cell_rng(settings, "m")).unwrap() else {
            panic!("no interval")
        };
        assert!((mean - tau(&x, &y).unwrap()).abs() < 1e-15);
        let (own_low, own_high) = tau_interval(&x, &y, 4_000, &mut cell_rng(settings, "m")).unwrap();
        assert!((low - own_low).abs() < 1e-12 && (high - own_high).abs() < 1e-12);
        let (mean2, Some((low2, high2))) =
            mean_tau_interval(&[(x.clone(), y.clone()), (x.clone(), y.clone())], 4_000, &mut cell_rng(settings, "m")).unwrap()
        else {
            panic!("no interval")
        };
        assert!((mean2 - mean).abs() < 1e-15 && high2 - low2 < high - low);
        // Two backbones: a mean, no interval.
        assert_eq!(mean_tau_interval(&[(x[..2].to_vec(), y[..2].to_vec())], 100, &mut cell_rng(settings, "m")).unwrap().1, None);
    }
}
