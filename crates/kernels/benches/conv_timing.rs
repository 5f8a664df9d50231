//! Times candle's conv2d and this crate's im2col + GEMM convolution (forward, and forward +
//! backward) on the convolutions that dominate ResNet (batch 32, 224 px), to say which op holds
//! training back on the CPU. `cargo bench -p medxfer-kernels --bench conv_timing [-- --ours]`
//! (`--ours` skips candle's, which takes most of the time).

use std::time::Instant;

use candle_core::{Device, Tensor, Var};

/// The binaries' allocator: with the system allocator every backward pass returned its buffers
/// to the OS and faulted them in again, and the kernel's page clearing and TLB shootdowns made
/// the backward timings three times too slow.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    medxfer_cli::keep_freed_memory();
    let device = Device::Cpu;
    let ours_only = std::env::args().any(|arg| arg == "--ours");
    for (name, input, weight, stride, padding) in [
        ("stem 7x7/2 3->64 @224", (32, 3, 224, 224), (64, 3, 7, 7), 2, 3),
        ("3x3 64->64 @56", (32, 64, 56, 56), (64, 64, 3, 3), 1, 1),
        ("3x3/2 64->128 @56", (32, 64, 56, 56), (128, 64, 3, 3), 2, 1),
        ("3x3 128->128 @28", (32, 128, 28, 28), (128, 128, 3, 3), 1, 1),
        ("3x3 256->256 @14", (32, 256, 14, 14), (256, 256, 3, 3), 1, 1),
        ("3x3 512->512 @7", (32, 512, 7, 7), (512, 512, 3, 3), 1, 1),
        ("1x1 256->1024 @14", (32, 256, 14, 14), (1024, 256, 1, 1), 1, 0),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, input, &device)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.05, weight, &device)?)?;
        let (b, c, h, wd) = input;
        let (o, _, k, _) = weight;
        let (oh, ow) = ((h + 2 * padding - k) / stride + 1, (wd + 2 * padding - k) / stride + 1);
        let gflop = 2.0 * (b * o * oh * ow * c * k * k) as f64 / 1e9;
        let candle = || Ok(x.as_tensor().conv2d(&w, padding, stride, 1, 1)?);
        let ours = || Ok(medxfer_kernels::conv2d(&x, &w, None, stride, padding)?);
        let convs = [("candle", &candle as &dyn Fn() -> anyhow::Result<Tensor>), ("im2col+gemm", &ours)];
        for (which, conv) in convs.into_iter().skip(usize::from(ours_only)) {
            let forward = time(|| Ok(conv()?.detach().sum_all()?.to_scalar::<f32>()?))?;
            // The backward pass costs twice the forward's FLOPs (input and weight gradients).
            let both = time(|| Ok(conv()?.sum_all()?.backward().map(|_| 0.0)?))?;
            println!(
                "{name:<24} {which:<12} forward {:7.1} ms {:6.1} GFLOP/s   forward+backward {:7.1} ms {:6.1} GFLOP/s",
                forward * 1e3,
                gflop / forward,
                both * 1e3,
                3.0 * gflop / both
            );
        }
    }
    Ok(())
}

/// The fastest of five runs after one warm-up: on a shared machine the slower runs measure the
/// neighbours (the mean of three moved by 10% between identical runs).
fn time(run: impl Fn() -> anyhow::Result<f32>) -> anyhow::Result<f64> {
    run()?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        run()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}
