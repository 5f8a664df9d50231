//! The 75 (learning rate, weight decay) points of the reference search: the unscrambled 2-d
//! Halton sequence in bases 2 and 3 from index 0 (scipy's `qmc.Halton(d=2, scramble=False)`,
//! whose first point is (0, 0)), mapped to lr = 10^(-4 + 3 u1), wd = 10^(-6 + 2 u2).

/// One trial's hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrialPoint {
    /// The point's index in the sequence (0..).
    pub index: usize,
    /// 10^(-4 + 3u), u the first Halton coordinate.
    pub learning_rate: f64,
    /// 10^(-6 + 2v), v the second.
    pub weight_decay: f64,
}

/// The reference's number of trials per (backbone, task).
pub const TRIALS: usize = 75;

/// The unit-square Halton point `index` (scipy's indexing: index 0 is (0, 0)). The halton
/// crate's `number(base, i)` is the i-th radical inverse, 0 for i = 0, which is scipy's i-th.
pub fn unit_point(index: usize) -> (f64, f64) {
    (halton::number(2, index), halton::number(3, index))
}

/// The first `n` trial points.
pub fn halton_points(n: usize) -> Vec<TrialPoint> {
    (0..n)
        .map(|index| {
            let (u1, u2) = unit_point(index);
            TrialPoint { index, learning_rate: 10f64.powf(-4.0 + 3.0 * u1), weight_decay: 10f64.powf(-6.0 + 2.0 * u2) }
        })
        .collect()
}
