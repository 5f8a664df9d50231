//! The GPU arithmetic options of the commands that compute on a GPU: `--precision`,
//! `--matmul-tf32`, `--conv-algorithms` and `--conv-nondeterministic`, PyTorch's four switches
//! for the same things. One definition for every binary that trains or extracts
//! (medxfer-train's, xtask's), so the options read and refuse alike everywhere.

use crate::{Error, Result};
use medxfer_kernels::{ConvAlgorithmSearch, ConvPrecision, GpuSettings};

/// How f32 convolutions may round on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// IEEE f32 everywhere: the reference's arithmetic.
    F32,
    /// TF32 tensor cores in f32 convolutions, as PyTorch does by default on Ampere and Hopper.
    Tf32,
}

/// How cuDNN's convolution algorithms are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvAlgorithms {
    /// cuDNN's heuristics: the same choice in every process (PyTorch's default).
    Heuristic,
    /// Time every candidate once per shape (PyTorch's `cudnn.benchmark = True`); two processes
    /// may choose differently and differ in the last bits.
    Benchmark,
}

/// The three options, for a command's arguments (`#[command(flatten)]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct GpuArithmetic {
    /// On a GPU: f32 (no TF32 anywhere, the reference's arithmetic; the default) or tf32 (TF32
    /// tensor cores in f32 convolutions, PyTorch's default on Ampere and Hopper).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// On a GPU: TF32 in f32 matrix products too (PyTorch's torch.backends.cuda.matmul.allow_tf32).
    #[arg(long)]
    pub matmul_tf32: bool,
    /// On a GPU: heuristic (the default) or benchmark (cuDNN times every algorithm per shape).
    #[arg(long, value_enum, default_value_t = ConvAlgorithms::Heuristic)]
    pub conv_algorithms: ConvAlgorithms,
    /// On a GPU: let cuDNN pick non-deterministic convolution algorithms too, as PyTorch does
    /// by default (torch.backends.cudnn.deterministic = False): some backward passes get faster,
    /// but two runs then differ in the last bits and a killed run no longer resumes to the bit.
    #[arg(long)]
    pub conv_nondeterministic: bool,
}

impl Default for GpuArithmetic {
    fn default() -> Self {
        GpuArithmetic {
            precision: Precision::F32,
            matmul_tf32: false,
            conv_algorithms: ConvAlgorithms::Heuristic,
            conv_nondeterministic: false,
        }
    }
}

impl GpuArithmetic {
    /// The settings medxfer-kernels computes with.
    pub fn settings(&self) -> GpuSettings {
        GpuSettings {
            conv_precision: match self.precision {
                Precision::F32 => ConvPrecision::F32,
                Precision::Tf32 => ConvPrecision::Tf32,
            },
            matmul_tf32: self.matmul_tf32,
            conv_algorithms: match self.conv_algorithms {
                ConvAlgorithms::Heuristic => ConvAlgorithmSearch::Heuristic,
                ConvAlgorithms::Benchmark => ConvAlgorithmSearch::Benchmark,
            },
            conv_nondeterministic: self.conv_nondeterministic,
        }
    }

    /// Puts the settings in force for this process; anything but the default is refused off a GPU,
    /// where it would change nothing.
    pub fn apply(&self, device: &str) -> Result<()> {
        if *self != GpuArithmetic::default() && !device.starts_with("cuda") {
            return Err(Error::Config(format!(
                "{}: GPU arithmetic options apply on a GPU only (--device cuda:N); the CPU computes in f32 with its own kernels, which they do not steer",
                self.options().join(" ")
            )));
        }
        medxfer_kernels::set_gpu_settings(self.settings());
        Ok(())
    }

    /// The options as typed, for a child process (none for the defaults).
    pub fn options(&self) -> Vec<String> {
        let mut options = Vec::new();
        if self.precision == Precision::Tf32 {
            options.extend(["--precision".into(), "tf32".into()]);
        }
        if self.matmul_tf32 {
            options.push("--matmul-tf32".into());
        }
        if self.conv_algorithms == ConvAlgorithms::Benchmark {
            options.extend(["--conv-algorithms".into(), "benchmark".into()]);
        }
        if self.conv_nondeterministic {
            options.push("--conv-nondeterministic".into());
        }
        options
    }

    /// The arithmetic as a study records it (its `precision` setting): "f32" for the default,
    /// else which parts round to TF32. The algorithm choice (timed or not, deterministic or
    /// not) is not part of it: it changes the last bits of a run, not what a run computes.
    pub fn recorded(&self) -> String {
        match (self.precision, self.matmul_tf32) {
            (Precision::F32, false) => "f32".into(),
            (Precision::Tf32, false) => "tf32".into(),
            (Precision::F32, true) => "f32, matmul tf32".into(),
            (Precision::Tf32, true) => "tf32, matmul tf32".into(),
        }
    }

    /// In words, for reports.
    pub fn describe(&self) -> String {
        format!(
            "{} convolutions, {} matrix products, {} cuDNN algorithms ({})",
            match self.precision {
                Precision::F32 => "f32",
                Precision::Tf32 => "TF32",
            },
            if self.matmul_tf32 { "TF32" } else { "f32" },
            match self.conv_algorithms {
                ConvAlgorithms::Heuristic => "heuristic",
                ConvAlgorithms::Benchmark => "benchmarked",
            },
            if self.conv_nondeterministic { "non-deterministic ones admitted" } else { "deterministic only" }
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Line {
        #[command(flatten)]
        gpu: GpuArithmetic,
    }

    /// What a child process is given parses back to the same settings, for every combination.
    #[test]
    fn options_round_trip_through_the_command_line() {
        for precision in [Precision::F32, Precision::Tf32] {
            for matmul_tf32 in [false, true] {
                for conv_algorithms in [ConvAlgorithms::Heuristic, ConvAlgorithms::Benchmark] {
                    for conv_nondeterministic in [false, true] {
                        let gpu = GpuArithmetic { precision, matmul_tf32, conv_algorithms, conv_nondeterministic };
                        let line = Line::try_parse_from(std::iter::once("x".to_string()).chain(gpu.options())).unwrap();
                        assert_eq!(line.gpu, gpu);
                        assert_eq!(gpu.settings().conv_nondeterministic, conv_nondeterministic);
                    }
                }
            }
        }
        assert!(GpuArithmetic::default().options().is_empty());
    }

    /// Reports say which cuDNN algorithms a run admitted.
    #[test]
    fn the_description_names_the_algorithms_admitted() {
        assert_eq!(
            GpuArithmetic::default().describe(),
            "f32 convolutions, f32 matrix products, heuristic cuDNN algorithms (deterministic only)"
        );
        let any = GpuArithmetic { conv_nondeterministic: true, conv_algorithms: ConvAlgorithms::Benchmark, ..GpuArithmetic::default() };
        assert_eq!(any.describe(), "f32 convolutions, f32 matrix products, benchmarked cuDNN algorithms (non-deterministic ones admitted)");
    }

    #[test]
    fn tf32_off_a_gpu_is_refused() {
        let gpu = GpuArithmetic { precision: Precision::Tf32, ..GpuArithmetic::default() };
        let error = gpu.apply("cpu").unwrap_err().to_string();
        assert!(error.contains("--precision tf32") && error.contains("cuda:N"), "{error}");
        GpuArithmetic::default().apply("cpu").unwrap();
    }
}
