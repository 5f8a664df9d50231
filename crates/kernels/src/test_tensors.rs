//! Seeded random tensors for the unit tests: candle cannot seed its CPU generator, and a test
//! that draws fresh inputs every run can pass on one machine and fail on the next.

use candle_core::{Device, Shape, Tensor};
use rand::{Rng, SeedableRng};

/// A stream of normally distributed f32 tensors, the same for the same seed.
pub(crate) struct NormalTensors(rand_chacha::ChaCha8Rng);

impl NormalTensors {
    pub(crate) fn new(seed: u64) -> Self {
        Self(rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }

    /// Normal(mean, std), drawn by Box-Muller, on the CPU.
    pub(crate) fn draw<S: Into<Shape>>(&mut self, mean: f32, std: f32, shape: S) -> Tensor {
        let shape = shape.into();
        let values: Vec<f32> = (0..shape.elem_count())
            .map(|_| {
                // 1 - u lies in (0, 1], so the logarithm is finite.
                let (u1, u2) = (1.0 - self.0.random::<f64>(), self.0.random::<f64>());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                mean + std * z as f32
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap_or_else(|error| panic!("test tensor: {error}"))
    }
}

/// The largest absolute entry of a tensor (of a difference, in the tests), on any device, in f32;
/// infinite where an entry is NaN, which candle's `max` would pass over (so a NaN in one side of
/// a comparison fails it).
pub(crate) fn max_abs(t: Tensor) -> f32 {
    let wide = t.to_device(&Device::Cpu).and_then(|t| t.to_dtype(candle_core::DType::F32));
    let values = wide.and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>());
    let values = values.unwrap_or_else(|error| panic!("max_abs: {error}"));
    values.iter().fold(0f32, |m, v| if v.is_nan() { f32::INFINITY } else { m.max(v.abs()) })
}

/// The bits of an f32 tensor's values, on any device: for the tests that hold two paths to the
/// same bits.
pub(crate) fn bits(t: &Tensor) -> Vec<u32> {
    let values = t.to_device(&Device::Cpu).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>());
    values.unwrap_or_else(|error| panic!("bits: {error}")).iter().map(|x| x.to_bits()).collect()
}

/// The GPU the CUDA halves' tests run on; `.ci/gpu` lends one to a `cuda` build's tests.
#[cfg(feature = "cuda")]
#[allow(clippy::expect_used)]
pub(crate) fn gpu() -> Device {
    Device::new_cuda(0).expect("medxfer-kernels' tests in a `cuda` build need a GPU (.ci/gpu runs them on one)")
}

/// The largest |a - b| over the entries ([`max_abs`]: a NaN makes it infinite).
pub(crate) fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    max_abs((a - b).unwrap_or_else(|error| panic!("max_difference: {error}")))
}
