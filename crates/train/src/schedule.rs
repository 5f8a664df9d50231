//! The learning-rate schedule: cosine annealing stepped once per epoch down to 1e-6,
//! `lr_e = eta_min + (lr - eta_min) (1 + cos(pi e / T)) / 2` for epoch e of T (PROTOCOL.md).

/// The floor of the reference's `CosineAnnealingLR(optimizer, T_max=epochs, eta_min=1e-6)`.
pub const ETA_MIN: f64 = 1e-6;

/// The learning rate of epoch `epoch` (0-based) of a `epochs`-epoch run starting at `base`.
pub fn cosine(base: f64, epoch: usize, epochs: usize) -> f64 {
    if epochs == 0 {
        return base;
    }
    ETA_MIN + (base - ETA_MIN) * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs as f64).cos()) / 2.0
}
