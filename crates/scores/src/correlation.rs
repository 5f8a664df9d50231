//! How well a score ranks backbones: Kendall's tau-b with scipy's p-value, scipy's weighted tau,
//! Pearson, Spearman, and the top-1 regret. Each agrees with scipy.stats to rounding.

use serde::Serialize;

use crate::error::{Error, Result};

/// Kendall's tau-b and its two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KendallTau {
    /// tau-b, in [-1, 1].
    pub tau: f64,
    /// Two-sided p-value: exact for n <= 33 without ties (or nearly sorted data), else the
    /// normal approximation with the tie-corrected variance, as `scipy.stats.kendalltau`.
    pub p_value: f64,
}

/// Every correlation of one set of (x, y) pairs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Correlation {
    /// Number of pairs.
    pub n: usize,
    /// Kendall's tau-b.
    pub tau_b: f64,
    /// Its two-sided p-value.
    pub p_value: f64,
    /// Weighted tau (hyperbolic weigher, rank=True).
    pub weighted_tau: f64,
    /// Pearson's r.
    pub pearson: f64,
    /// Spearman's rho.
    pub spearman: f64,
}

fn check_pairs(what: &'static str, x: &[f64], y: &[f64]) -> Result<()> {
    if x.len() != y.len() {
        return Err(Error::LengthMismatch { what, left_name: "x", left: x.len(), right_name: "y", right: y.len() });
    }
    if x.len() < 2 {
        return Err(Error::TooFewSamples { what, needed: 2, got: x.len() });
    }
    for (name, values) in [("x", x), ("y", y)] {
        if let Some((row, value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite { name: if name == "x" { "x" } else { "y" }, row, col: 0, value: *value });
        }
    }
    Ok(())
}

/// All correlations of x against y.
pub fn correlate(x: &[f64], y: &[f64]) -> Result<Correlation> {
    let kendall = kendall_tau_b(x, y)?;
    Ok(Correlation {
        n: x.len(),
        tau_b: kendall.tau,
        p_value: kendall.p_value,
        weighted_tau: weighted_tau(x, y)?,
        pearson: pearson(x, y)?,
        spearman: spearman(x, y)?,
    })
}

/// Kendall's tau-b with the two-sided p-value of `scipy.stats.kendalltau` (method "auto").
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> Result<KendallTau> {
    check_pairs("Kendall's tau", x, y)?;
    let n = x.len();
    let (mut x_ties, mut y_ties, mut joint_ties, mut discordant) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..n {
        for j in i + 1..n {
            let dx = x[i].partial_cmp(&x[j]);
            let dy = y[i].partial_cmp(&y[j]);
            let tie_x = dx == Some(std::cmp::Ordering::Equal);
            let tie_y = dy == Some(std::cmp::Ordering::Equal);
            x_ties += u64::from(tie_x);
            y_ties += u64::from(tie_y);
            joint_ties += u64::from(tie_x && tie_y);
            if !tie_x && !tie_y && dx != dy {
                discordant += 1;
            }
        }
    }
    let total = (n * (n - 1) / 2) as u64;
    if x_ties == total {
        return Err(Error::ConstantInput { what: "Kendall's tau", side: "x" });
    }
    if y_ties == total {
        return Err(Error::ConstantInput { what: "Kendall's tau", side: "y" });
    }
    let con_minus_dis = total as i64 - x_ties as i64 - y_ties as i64 + joint_ties as i64 - 2 * discordant as i64;
    let tau = (con_minus_dis as f64 / ((total - x_ties) as f64).sqrt() / ((total - y_ties) as f64).sqrt()).clamp(-1.0, 1.0);
    let no_ties = x_ties == 0 && y_ties == 0;
    let p_value = if no_ties && (n <= 33 || discordant.min(total - discordant) <= 1) {
        kendall_p_exact(n, total - discordant)
    } else {
        let (x0, x1) = tie_group_sums(x);
        let (y0, y1) = tie_group_sums(y);
        let m = n as f64 * (n as f64 - 1.0);
        let nf = n as f64;
        let variance = (m * (2.0 * nf + 5.0) - x1 - y1) / 18.0 + (2 * x_ties * y_ties) as f64 / m + x0 * y0 / (9.0 * m * (nf - 2.0));
        let z = con_minus_dis as f64 / variance.sqrt();
        2.0 * normal_sf(z.abs())
    };
    Ok(KendallTau { tau, p_value })
}

/// Over groups of tied values: (sum t(t-1)(t-2), sum t(t-1)(2t+5)), scipy's `count_rank_tie`.
fn tie_group_sums(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (mut first, mut second) = (0.0, 0.0);
    let mut start = 0;
    while start < sorted.len() {
        let end = sorted[start..].iter().position(|v| *v != sorted[start]).map_or(sorted.len(), |p| start + p);
        let t = (end - start) as f64;
        if t > 1.0 {
            first += t * (t - 1.0) * (t - 2.0);
            second += t * (t - 1.0) * (2.0 * t + 5.0);
        }
        start = end;
    }
    (first, second)
}

/// scipy's `_kendall_p_exact` for the two-sided alternative: the exact null distribution of the
/// number of concordant pairs `concordant` among n untied items (Kendall 1970).
fn kendall_p_exact(n: usize, concordant: u64) -> f64 {
    let total = (n * (n - 1) / 2) as u64;
    let c = concordant.min(total - concordant) as usize;
    let probability = if n <= 2 {
        1.0
    } else if c == 0 {
        if n < 171 { 2.0 / factorial(n) } else { 0.0 }
    } else if c == 1 {
        if n < 172 { 2.0 / factorial(n - 1) } else { 0.0 }
    } else if 4 * c == n * (n - 1) {
        1.0
    } else if n < 171 {
        let mut counts = vec![0.0f64; c + 1];
        counts[0] = 1.0;
        counts[1] = 1.0;
        for j in 3..=n {
            cumulative_sum(&mut counts);
            if j <= c {
                for index in (j..=c).rev() {
                    counts[index] -= counts[index - j];
                }
            }
        }
        2.0 * counts.iter().sum::<f64>() / factorial(n)
    } else {
        let mut counts = vec![0.0f64; c + 1];
        counts[0] = 1.0;
        counts[1] = 1.0;
        for j in 3..=n {
            cumulative_sum(&mut counts);
            for value in &mut counts {
                *value /= j as f64;
            }
            if j <= c {
                for index in (j..=c).rev() {
                    counts[index] -= counts[index - j];
                }
            }
        }
        counts.iter().sum::<f64>()
    };
    probability.clamp(0.0, 1.0)
}

fn cumulative_sum(values: &mut [f64]) {
    let mut running = 0.0;
    for value in values.iter_mut() {
        running += *value;
        *value = running;
    }
}

/// n! as the nearest f64 (exact in integers up to 34!, as Python's int-to-float division).
fn factorial(n: usize) -> f64 {
    if n <= 34 {
        (1..=n as u128).product::<u128>() as f64
    } else {
        (35..=n).fold((1..=34u128).product::<u128>() as f64, |acc, k| acc * k as f64)
    }
}

/// The standard normal survival function, as scipy's `ndtr(-z)` (Cephes) branches it.
fn normal_sf(z: f64) -> f64 {
    let x = -z * std::f64::consts::FRAC_1_SQRT_2;
    let magnitude = x.abs();
    if magnitude < std::f64::consts::FRAC_1_SQRT_2 {
        0.5 + 0.5 * libm::erf(x)
    } else {
        let y = 0.5 * libm::erfc(magnitude);
        if x > 0.0 { 1.0 - y } else { y }
    }
}

/// Weighted tau as `scipy.stats.weightedtau(x, y)` (hyperbolic weigher 1/(r+1), additive,
/// rank=True: the mean of the values ranked by x and ranked by y).
pub fn weighted_tau(x: &[f64], y: &[f64]) -> Result<f64> {
    check_pairs("weighted tau", x, y)?;
    let by_x = weighted_ranked_tau(x, y).ok_or(Error::ConstantInput { what: "weighted tau", side: "x or y" })?;
    let by_y = weighted_ranked_tau(y, x).ok_or(Error::ConstantInput { what: "weighted tau", side: "x or y" })?;
    Ok((by_x + by_y) / 2.0)
}

fn weigher(rank: usize) -> f64 {
    1.0 / (1.0 + rank as f64)
}

/// scipy's `_weightedrankedtau(x, y, rank=None, weigher=hyperbolic, additive=True)`; None when
/// x or y is constant.
fn weighted_ranked_tau(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len();
    // np.lexsort((y, x)): ascending by x, then y, stable.
    let mut perm: Vec<usize> = (0..n).collect();
    perm.sort_by(|&a, &b| x[a].total_cmp(&x[b]).then(y[a].total_cmp(&y[b])));
    // The rank of the element at sorted position p is n - 1 - p: the largest gets rank 0.
    let mut rank = vec![0usize; n];
    for (position, &index) in perm.iter().enumerate() {
        rank[index] = n - 1 - position;
    }
    let w = |index: usize| weigher(rank[index]);

    let tie_weight = |perm: &[usize], same: &dyn Fn(usize, usize) -> bool| -> (f64, usize) {
        let mut first = 0;
        let mut total = 0.0;
        let mut s = w(perm[0]);
        for i in 1..n {
            if !same(perm[first], perm[i]) {
                total += s * (i - first - 1) as f64;
                first = i;
                s = 0.0;
            }
            s += w(perm[i]);
        }
        total += s * (n - first - 1) as f64;
        (total, first)
    };
    let (t, _) = tie_weight(&perm, &|a, b| x[a] == x[b] && y[a] == y[b]);
    let (u, first_x) = tie_weight(&perm, &|a, b| x[a] == x[b]);
    if first_x == 0 {
        return None;
    }
    let mut exchanges = 0.0;
    let mut temp = vec![0usize; n];
    weigh(&mut perm, &mut temp, 0, n, y, &w, &mut exchanges);
    let (v, first_y) = tie_weight(&perm, &|a, b| y[a] == y[b]);
    if first_y == 0 {
        return None;
    }
    let s: f64 = perm.iter().map(|&i| w(i)).sum();
    let total = s * (n - 1) as f64;
    let tau = ((total - (v + u - t)) - 2.0 * exchanges) / (total - u).sqrt() / (total - v).sqrt();
    Some(tau.clamp(-1.0, 1.0))
}

/// The merge sort of scipy's `weigh` closure: sorts perm[offset..offset+length] by y, adding
/// the weight of each exchange, and returns the section's total weight.
fn weigh(
    perm: &mut [usize],
    temp: &mut [usize],
    offset: usize,
    length: usize,
    y: &[f64],
    w: &dyn Fn(usize) -> f64,
    exchanges: &mut f64,
) -> f64 {
    if length == 1 {
        return w(perm[offset]);
    }
    let length0 = length / 2;
    let length1 = length - length0;
    let middle = offset + length0;
    let mut residual = weigh(perm, temp, offset, length0, y, w, exchanges);
    let weight = weigh(perm, temp, middle, length1, y, w, exchanges) + residual;
    if y[perm[middle - 1]] < y[perm[middle]] {
        return weight;
    }
    let (mut i, mut j, mut k) = (0, 0, 0);
    while j < length0 && k < length1 {
        if y[perm[offset + j]] <= y[perm[middle + k]] {
            temp[i] = perm[offset + j];
            residual -= w(temp[i]);
            j += 1;
        } else {
            temp[i] = perm[middle + k];
            *exchanges += w(temp[i]) * (length0 - j) as f64 + residual;
            k += 1;
        }
        i += 1;
    }
    perm.copy_within(offset + j..offset + length0, offset + i);
    perm[offset..offset + i].copy_from_slice(&temp[..i]);
    weight
}

/// Pearson's correlation coefficient.
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64> {
    check_pairs("Pearson's r", x, y)?;
    let centred = |values: &[f64], side| -> Result<Vec<f64>> {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let centred: Vec<f64> = values.iter().map(|v| v - mean).collect();
        let norm = centred.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            return Err(Error::ConstantInput { what: "Pearson's r", side });
        }
        Ok(centred.into_iter().map(|v| v / norm).collect())
    };
    let (cx, cy) = (centred(x, "x")?, centred(y, "y")?);
    Ok(cx.iter().zip(&cy).map(|(a, b)| a * b).sum::<f64>().clamp(-1.0, 1.0))
}

/// Spearman's rank correlation: Pearson's r of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64> {
    check_pairs("Spearman's rho", x, y)?;
    pearson(&average_ranks(x), &average_ranks(y)).map_err(|error| match error {
        Error::ConstantInput { side, .. } => Error::ConstantInput { what: "Spearman's rho", side },
        other => other,
    })
}

/// Ranks 1..n, ties sharing their average rank (scipy's `rankdata(method="average")`).
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let average = (start + end + 1) as f64 / 2.0;
        for &index in &order[start..end] {
            ranks[index] = average;
        }
        start = end;
    }
    ranks
}

/// Best accuracy minus the accuracy of the backbone the score ranks first (the first of tied
/// top scores): what trusting the score costs.
pub fn top1_regret(scores: &[f64], accuracies: &[f64]) -> Result<f64> {
    check_pairs("top-1 regret", scores, accuracies)?;
    let pick = (1..scores.len()).fold(0, |best, i| if scores[i] > scores[best] { i } else { best });
    let best = accuracies.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Ok(best - accuracies[pick])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_agreement_and_reversal() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let reversed: Vec<f64> = x.iter().rev().copied().collect();
        let k = kendall_tau_b(&x, &x).unwrap();
        // scipy gives 0.9999999999999999: 10 / sqrt(10) / sqrt(10) in floating point.
        assert!((k.tau - 1.0).abs() < 1e-15);
        // Exact: P(C = 10 or C = 0) = 2 / 5!.
        assert!((k.p_value - 2.0 / 120.0).abs() < 1e-15);
        assert!((kendall_tau_b(&x, &reversed).unwrap().tau + 1.0).abs() < 1e-15);
        assert!((weighted_tau(&x, &x).unwrap() - 1.0).abs() < 1e-15);
        assert!((spearman(&x, &reversed).unwrap() + 1.0).abs() < 1e-15);
    }

    #[test]
    fn hand_computed_tau_b_with_ties() {
        // Pairs of (1,1),(2,2),(2,3),(3,1): concordant 2, discordant 2, x ties 1, y ties 1.
        let k = kendall_tau_b(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 1.0]).unwrap();
        assert!((k.tau - 0.0).abs() < 1e-15);
        let k = kendall_tau_b(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!((k.tau - 5.0 / (5.0f64 * 6.0).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn constant_input_is_an_error() {
        assert!(kendall_tau_b(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_err());
        assert!(weighted_tau(&[1.0, 2.0, 3.0], &[2.0, 2.0, 2.0]).is_err());
        assert!(pearson(&[1.0, 2.0, 3.0], &[2.0, 2.0, 2.0]).is_err());
    }

    #[test]
    fn regret_is_what_the_top_pick_loses() {
        assert_eq!(top1_regret(&[0.1, 0.9, 0.5], &[0.8, 0.7, 0.9]).unwrap(), 0.9 - 0.7);
        assert_eq!(top1_regret(&[3.0, 1.0], &[0.9, 0.5]).unwrap(), 0.0);
    }

    #[test]
    fn average_ranks_share_ties() {
        assert_eq!(average_ranks(&[10.0, 20.0, 10.0, 30.0]), vec![1.5, 3.0, 1.5, 4.0]);
    }
}
