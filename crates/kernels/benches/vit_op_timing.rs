//! Times the ops of a ViT-L/16 eval forward pass one by one at its shapes (batch 8, 197 tokens,
//! width 1024, 16 heads), so that a gap to PyTorch in `bench-zoo` can be put down to an op.
//! `cargo bench -p medxfer-kernels --bench vit_op_timing` (add `--features mkl` for MKL's
//! products); `python/vit_op_timing.py` times PyTorch's ops at the same shapes, as timm calls
//! them. Each linear layer cycles through eight weights so that they come from memory, as the
//! 1.2 GB model's do. Best of five runs after a warm-up, in ms per call.

use std::time::Instant;

use candle_core::{Device, Tensor};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const IMAGES: usize = 8;
const TOKENS: usize = 197;
const WIDTH: usize = 1024;
const HEADS: usize = 16;

/// What follows a linear layer's product in a ViT block.
#[derive(Clone, Copy)]
enum Epilogue {
    None,
    /// GELU (fc1).
    Gelu,
    /// The residual branch's add (proj, fc2).
    Residual,
}

fn main() -> anyhow::Result<()> {
    medxfer_cli::keep_freed_memory();
    let device = Device::Cpu;
    println!("products: {}", medxfer_kernels::cpu_product_library());
    let rows = IMAGES * TOKENS;
    for (name, inputs, outputs, epilogue) in [
        ("qkv 1024->3072", WIDTH, 3 * WIDTH, Epilogue::None),
        ("proj 1024->1024", WIDTH, WIDTH, Epilogue::None),
        ("proj+residual", WIDTH, WIDTH, Epilogue::Residual),
        ("fc1 1024->4096", WIDTH, 4 * WIDTH, Epilogue::None),
        ("fc1+gelu 1024->4096", WIDTH, 4 * WIDTH, Epilogue::Gelu),
        ("fc2 4096->1024", 4 * WIDTH, WIDTH, Epilogue::None),
        ("fc2+residual", 4 * WIDTH, WIDTH, Epilogue::Residual),
    ] {
        let x = Tensor::randn(0f32, 1.0, (IMAGES, TOKENS, inputs), &device)?;
        let weights = (0..8).map(|_| Tensor::randn(0f32, 0.02, (outputs, inputs), &device)).collect::<candle_core::Result<Vec<_>>>()?;
        let bias = Tensor::randn(0f32, 0.02, outputs, &device)?;
        let residual = Tensor::randn(0f32, 1.0, (IMAGES, TOKENS, outputs), &device)?;
        let per_call = time(weights.len(), || {
            for w in &weights {
                drop(match epilogue {
                    Epilogue::None => medxfer_kernels::linear(&x, w, Some(&bias))?,
                    Epilogue::Gelu => medxfer_kernels::linear_gelu(&x, w, Some(&bias))?,
                    Epilogue::Residual => medxfer_kernels::linear_residual(&x, w, Some(&bias), &residual)?,
                });
            }
            Ok(())
        })?;
        let gflop = 2.0 * (rows * inputs * outputs) as f64 / 1e9;
        println!("{name:<22} {:7.2} ms {:6.1} GFLOP/s", per_call * 1e3, gflop / per_call);
    }
    let qkv = Tensor::randn(0f32, 1.0, (IMAGES, TOKENS, 3 * WIDTH), &device)?;
    let scale = ((WIDTH / HEADS) as f64).powf(-0.5);
    let attention = time(1, || Ok(medxfer_kernels::attention(&qkv, HEADS, scale)?))?;
    let gflop = 4.0 * (IMAGES * HEADS * TOKENS * TOKENS * (WIDTH / HEADS)) as f64 / 1e9;
    println!("{:<22} {:7.2} ms {:6.1} GFLOP/s", "attention 16 heads", attention * 1e3, gflop / attention);
    let x = Tensor::randn(0f32, 1.0, (IMAGES, TOKENS, WIDTH), &device)?;
    let (gamma, beta) = (Tensor::randn(1f32, 0.1, WIDTH, &device)?, Tensor::randn(0f32, 0.1, WIDTH, &device)?);
    let norm = time(1, || Ok(medxfer_kernels::layer_norm(&x, &gamma, &beta, 1e-6)?))?;
    println!("{:<22} {:7.2} ms", "layer norm", norm * 1e3);
    let other = Tensor::randn(0f32, 1.0, (IMAGES, TOKENS, WIDTH), &device)?;
    let add = time(1, || Ok((&x + &other)?))?;
    println!("{:<22} {:7.2} ms", "residual add (candle)", add * 1e3);
    let hidden = Tensor::randn(0f32, 1.0, (IMAGES, TOKENS, 4 * WIDTH), &device)?;
    let gelu = time(1, || Ok(medxfer_kernels::gelu_erf(&hidden)?))?;
    println!("{:<22} {:7.2} ms", "gelu 4096 wide", gelu * 1e3);
    Ok(())
}

/// The fastest of five runs of `run` after one warm-up, divided by the `calls` each run makes
/// (what a run returns is dropped inside the timing, as a forward pass frees it).
fn time<T>(calls: usize, run: impl Fn() -> anyhow::Result<T>) -> anyhow::Result<f64> {
    run()?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        drop(run()?);
        best = best.min(start.elapsed().as_secs_f64() / calls as f64);
    }
    Ok(best)
}
#[allow(dead_code)]
fn scratch() {}
