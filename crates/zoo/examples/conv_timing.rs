//! Times candle's conv2d on the convolutions that dominate ResNet-18 (batch 32, 224 px), to say
//! which op holds the zoo back on the CPU. `cargo run --release -p medxfer-zoo --example conv_timing`.

use std::time::Instant;

use candle_core::{Device, Tensor};

fn main() -> candle_core::Result<()> {
    let device = Device::Cpu;
    for (name, input, weight, stride, padding) in [
        ("stem 7x7/2 3->64 @224", (32, 3, 224, 224), (64, 3, 7, 7), 2, 3),
        ("3x3 64->64 @56", (32, 64, 56, 56), (64, 64, 3, 3), 1, 1),
        ("3x3 256->256 @14", (32, 256, 14, 14), (256, 256, 3, 3), 1, 1),
        ("1x1 256->1024 @14", (32, 256, 14, 14), (1024, 256, 1, 1), 1, 0),
    ] {
        let x = Tensor::randn(0f32, 1.0, input, &device)?;
        let w = Tensor::randn(0f32, 0.05, weight, &device)?;
        x.conv2d(&w, padding, stride, 1, 1)?;
        let start = Instant::now();
        let runs = 3;
        for _ in 0..runs {
            x.conv2d(&w, padding, stride, 1, 1)?.sum_all()?.to_scalar::<f32>()?;
        }
        let seconds = start.elapsed().as_secs_f64() / runs as f64;
        let (b, c, h, wd) = input;
        let (o, _, k, _) = weight;
        let (oh, ow) = ((h + 2 * padding - k) / stride + 1, (wd + 2 * padding - k) / stride + 1);
        let gflop = 2.0 * (b * o * oh * ow * c * k * k) as f64 / 1e9;
        println!("{name:<24} {:8.1} ms {:6.1} GFLOP/s", seconds * 1e3, gflop / seconds);
    }
    Ok(())
}
