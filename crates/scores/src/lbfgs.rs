//! Limited-memory BFGS for the smooth convex objectives of the scores (PACTran-Gauss's
//! regularised softmax regression), run to convergence: the two-loop recursion (Nocedal and
//! Wright, algorithm 7.4) with the initial scaling s'y / y'y, and a backtracking line search that
//! takes a step on Armijo's sufficient decrease or, where the decrease is below the objective's
//! rounding, on Hager and Zhang's approximate Wolfe conditions (the directional derivative), so
//! that the gradient can be driven to 1e-11. On a strictly convex objective every step keeps
//! s'y > 0, so no curvature safeguard beyond skipping a non-positive pair is needed.
//!
//! Written here rather than taken from a crate: the objective is one flat f64 vector, and the
//! crates that offer L-BFGS (argmin and its math backends) bring an executor, observers and a
//! random-number stack for what is forty lines.

use std::collections::VecDeque;

use crate::error::{Error, Result};

/// When to stop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LbfgsOptions {
    /// Correction pairs kept.
    pub memory: usize,
    /// Converged when the largest gradient entry is at most this.
    pub gradient_tolerance: f64,
    /// An error beyond this many iterations.
    pub max_iterations: usize,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        Self { memory: 10, gradient_tolerance: 1e-11, max_iterations: 20_000 }
    }
}

/// The minimiser found and its value.
#[derive(Debug)]
pub(crate) struct Minimum {
    pub x: Vec<f64>,
    pub value: f64,
}

/// Armijo's sufficient-decrease constant and the backtracking factor.
const ARMIJO: f64 = 1e-4;
const BACKTRACK: f64 = 0.5;
const MAX_BACKTRACKS: usize = 60;
/// The approximate Wolfe conditions' constants (Hager and Zhang 2005: delta, sigma, epsilon).
const APPROXIMATE_DECREASE: f64 = 0.1;
const CURVATURE: f64 = 0.9;
const FLAT: f64 = 1e-14;
/// A gradient this small ends the search when no step lowers the objective any more (it sits at
/// rounding level); a larger one is a failure.
const STALLED_GRADIENT: f64 = 1e-7;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// Minimises `objective`, which returns f(x) and writes its gradient into the second argument.
pub(crate) fn minimize(
    what: &'static str,
    mut objective: impl FnMut(&[f64], &mut [f64]) -> f64,
    mut x: Vec<f64>,
    options: LbfgsOptions,
) -> Result<Minimum> {
    let n = x.len();
    let mut gradient = vec![0.0; n];
    let mut value = objective(&x, &mut gradient);
    let mut pairs: VecDeque<(Vec<f64>, Vec<f64>, f64)> = VecDeque::with_capacity(options.memory);
    let mut direction = vec![0.0; n];
    let mut trial = vec![0.0; n];
    let mut trial_gradient = vec![0.0; n];
    for _ in 0..options.max_iterations {
        if !value.is_finite() {
            return Err(Error::NonFiniteScore { metric: what, value, why: "the objective overflowed during the optimisation" });
        }
        if max_abs(&gradient) <= options.gradient_tolerance {
            return Ok(Minimum { x, value });
        }
        // Two-loop recursion: direction = -H gradient.
        direction.copy_from_slice(&gradient);
        let mut alphas = Vec::with_capacity(pairs.len());
        for (s, y, rho) in pairs.iter().rev() {
            let alpha = rho * dot(s, &direction);
            direction.iter_mut().zip(y).for_each(|(d, y)| *d -= alpha * y);
            alphas.push(alpha);
        }
        let scale = match pairs.back() {
            Some((s, y, _)) => dot(s, y) / dot(y, y),
            None => 1.0 / max_abs(&gradient).max(f64::MIN_POSITIVE),
        };
        direction.iter_mut().for_each(|d| *d *= scale);
        for ((s, y, rho), alpha) in pairs.iter().zip(alphas.iter().rev()) {
            let beta = rho * dot(y, &direction);
            direction.iter_mut().zip(s).for_each(|(d, s)| *d += (alpha - beta) * s);
        }
        direction.iter_mut().for_each(|d| *d = -*d);
        let mut slope = dot(&gradient, &direction);
        if slope >= 0.0 {
            // Not a descent direction (rounding): restart from steepest descent.
            pairs.clear();
            direction.iter_mut().zip(&gradient).for_each(|(d, g)| *d = -g * scale.abs());
            slope = dot(&gradient, &direction);
        }
        let mut step = 1.0;
        let mut accepted = None;
        for _ in 0..MAX_BACKTRACKS {
            trial.iter_mut().zip(&x).zip(&direction).for_each(|((t, x), d)| *t = x + step * d);
            let trial_value = objective(&trial, &mut trial_gradient);
            let armijo = trial_value < value && trial_value <= value + ARMIJO * step * slope;
            // Hager and Zhang's approximate Wolfe conditions: near the optimum the decrease
            // drowns in the objective's rounding, the directional derivative does not.
            let trial_slope = dot(&trial_gradient, &direction);
            let approximate_wolfe = trial_value <= value + FLAT * value.abs()
                && trial_slope >= CURVATURE * slope
                && trial_slope <= (2.0 * APPROXIMATE_DECREASE - 1.0) * slope;
            if trial_value.is_finite() && (armijo || approximate_wolfe) {
                accepted = Some(trial_value);
                break;
            }
            step *= BACKTRACK;
        }
        let Some(trial_value) = accepted else {
            // No step lowers the objective: it is flat to rounding here.
            if max_abs(&gradient) <= STALLED_GRADIENT {
                return Ok(Minimum { x, value });
            }
            return Err(Error::NotConverged { metric: what, value, why: "its line search found no decrease away from the optimum" });
        };
        let s: Vec<f64> = trial.iter().zip(&x).map(|(t, x)| t - x).collect();
        let y: Vec<f64> = trial_gradient.iter().zip(&gradient).map(|(t, g)| t - g).collect();
        let sy = dot(&s, &y);
        if sy > 0.0 {
            if pairs.len() == options.memory {
                pairs.pop_front();
            }
            pairs.push_back((s, y, 1.0 / sy));
        }
        std::mem::swap(&mut x, &mut trial);
        std::mem::swap(&mut gradient, &mut trial_gradient);
        value = trial_value;
    }
    Err(Error::NotConverged { metric: what, value, why: "it reached its iteration limit" })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ill-conditioned convex quadratic with a known minimiser, and Rosenbrock's valley (not
    /// convex) from the textbook start: both end at the known optimum.
    #[test]
    fn finds_the_minimum_of_a_quadratic_and_of_rosenbrock() {
        let curvature: Vec<f64> = (0..50).map(|i| 10f64.powf(i as f64 / 49.0 * 4.0)).collect();
        let centre: Vec<f64> = (0..50).map(|i| (i as f64 * 0.37).sin()).collect();
        let quadratic = |x: &[f64], g: &mut [f64]| {
            let mut f = 0.0;
            for i in 0..x.len() {
                g[i] = curvature[i] * (x[i] - centre[i]);
                f += 0.5 * curvature[i] * (x[i] - centre[i]).powi(2);
            }
            f
        };
        let found = minimize("quadratic", quadratic, vec![0.0; 50], LbfgsOptions::default()).unwrap();
        assert!(found.x.iter().zip(&centre).all(|(x, c)| (x - c).abs() < 1e-10), "{:?}", found.x);
        let rosenbrock = |x: &[f64], g: &mut [f64]| {
            let (a, b) = (x[0], x[1]);
            g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
            g[1] = 200.0 * (b - a * a);
            (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
        };
        let found = minimize("rosenbrock", rosenbrock, vec![-1.2, 1.0], LbfgsOptions::default()).unwrap();
        assert!((found.x[0] - 1.0).abs() < 1e-9 && (found.x[1] - 1.0).abs() < 1e-9, "{:?}", found.x);
        assert!(found.value < 1e-18);
    }
}
