//! How the GPU may round f32 work and how cuDNN's convolution algorithms are chosen: process-wide
//! settings, read by the CUDA ops when they meet a shape for the first time.
//!
//! They are process-wide because the libraries they steer are: candle's switch for TF32 in
//! cuBLAS products is a global, and PyTorch's `torch.backends.cudnn.allow_tf32`,
//! `torch.backends.cuda.matmul.allow_tf32` and `torch.backends.cudnn.benchmark`, which these
//! mirror, are globals too. The defaults are the reference's arithmetic: f32 everywhere (the
//! Turing GPUs the paper trained on have no TF32), algorithms from cuDNN's heuristics (PyTorch's
//! `benchmark = False`), which pick the same algorithm in every process, and deterministic
//! algorithms only (PyTorch's `cudnn.deterministic = True`, where its default is False), so a
//! resumed run computes what the uninterrupted one did.

use std::sync::atomic::{AtomicU8, Ordering};

/// The rounding f32 convolutions may use on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConvPrecision {
    /// IEEE f32 products and sums (cuDNN's FMA math): the reference's arithmetic.
    #[default]
    F32,
    /// TF32 tensor cores for f32 convolutions (10-bit mantissas in the products, f32 sums), as
    /// PyTorch does by default on Ampere and Hopper (`torch.backends.cudnn.allow_tf32 = True`).
    Tf32,
}

/// How cuDNN's algorithm for each convolution shape and direction is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConvAlgorithmSearch {
    /// cuDNN's heuristics (`cudnnGetConvolution*Algorithm_v7`): no timing, the same choice in
    /// every process on the same GPU and cuDNN. PyTorch's default (`cudnn.benchmark = False`).
    #[default]
    Heuristic,
    /// Every candidate timed once per shape (`cudnnFindConvolution*Algorithm`), the fastest kept:
    /// PyTorch's `cudnn.benchmark = True`. Timings vary, so two processes can choose differently
    /// and differ in the last bits.
    Benchmark,
}

/// The GPU's arithmetic and algorithm choice for the whole process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GpuSettings {
    /// Convolutions' rounding (f32 data only; f16/bf16 data always use tensor cores).
    pub conv_precision: ConvPrecision,
    /// TF32 in f32 matrix products (cuBLAS), PyTorch's `torch.backends.cuda.matmul.allow_tf32`
    /// (off by default there too).
    pub matmul_tf32: bool,
    /// How convolution algorithms are chosen.
    pub conv_algorithms: ConvAlgorithmSearch,
    /// Whether cuDNN may also pick non-deterministic algorithms (those that sum with atomics, in
    /// an order that varies between runs), as PyTorch does by default
    /// (`torch.backends.cudnn.deterministic = False`). Off by default: a run then computes the
    /// same bits every time and a killed run resumes to the bit.
    pub conv_nondeterministic: bool,
}

static SETTINGS: AtomicU8 = AtomicU8::new(0);

impl GpuSettings {
    fn encode(self) -> u8 {
        u8::from(self.conv_precision == ConvPrecision::Tf32)
            | u8::from(self.matmul_tf32) << 1
            | u8::from(self.conv_algorithms == ConvAlgorithmSearch::Benchmark) << 2
            | u8::from(self.conv_nondeterministic) << 3
    }

    fn decode(bits: u8) -> Self {
        GpuSettings {
            conv_precision: if bits & 1 != 0 { ConvPrecision::Tf32 } else { ConvPrecision::F32 },
            matmul_tf32: bits & 2 != 0,
            conv_algorithms: if bits & 4 != 0 { ConvAlgorithmSearch::Benchmark } else { ConvAlgorithmSearch::Heuristic },
            conv_nondeterministic: bits & 8 != 0,
        }
    }
}

/// Sets the process's GPU arithmetic. Convolution shapes met before keep the algorithms they
/// were given under the settings then in force only if the settings are unchanged: the ops key
/// their caches by the settings.
pub fn set_gpu_settings(settings: GpuSettings) {
    SETTINGS.store(settings.encode(), Ordering::Relaxed);
    #[cfg(feature = "cuda")]
    candle_core::cuda::set_gemm_reduced_precision_f32(settings.matmul_tf32);
}

/// The settings in force.
pub fn gpu_settings() -> GpuSettings {
    GpuSettings::decode(SETTINGS.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_combination_survives_the_round_trip() {
        for conv_precision in [ConvPrecision::F32, ConvPrecision::Tf32] {
            for matmul_tf32 in [false, true] {
                for conv_algorithms in [ConvAlgorithmSearch::Heuristic, ConvAlgorithmSearch::Benchmark] {
                    for conv_nondeterministic in [false, true] {
                        let settings = GpuSettings { conv_precision, matmul_tf32, conv_algorithms, conv_nondeterministic };
                        assert_eq!(GpuSettings::decode(settings.encode()), settings);
                    }
                }
            }
        }
        assert_eq!(GpuSettings::decode(0), GpuSettings::default());
    }
}
