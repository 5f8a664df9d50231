//! How far this crate's f32 convolution and candle's f32 conv2d each lie from the same
//! convolution in f64 (forward, input gradient, weight gradient), as max|error| / max|exact|.
//! `cargo bench -p medxfer-kernels --bench conv_accuracy`.

use candle_core::{DType, Device, Tensor, Var};

fn relative_error(approximate: &Tensor, exact: &Tensor) -> anyhow::Result<f64> {
    let error = (approximate.to_dtype(DType::F64)? - exact)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    Ok(error / exact.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
}

fn main() -> anyhow::Result<()> {
    let device = Device::Cpu;
    // (batch, channels, out channels, kernel, stride, padding, size)
    for (batch, channels, out, kernel, stride, padding, size) in
        [(4, 3, 16, 3, 2, 1, 32), (4, 16, 32, 1, 1, 0, 16), (4, 64, 64, 3, 1, 1, 14), (8, 32, 8, 1, 1, 0, 1)]
    {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (batch, channels, size, size), &device)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (out, channels, kernel, kernel), &device)?)?;
        let (x64, w64) = (Var::from_tensor(&x.to_dtype(DType::F64)?)?, Var::from_tensor(&w.to_dtype(DType::F64)?)?);
        let exact = x64.conv2d(&w64, padding, stride, 1, 1)?;
        let upstream = Tensor::randn(0f32, 1.0, exact.dims(), &device)?;
        let exact_grads = (&exact * upstream.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
        let ours = medxfer_kernels::conv2d(&x, &w, None, stride, padding)?;
        let our_grads = (&ours * &upstream)?.sum_all()?.backward()?;
        let theirs = x.conv2d(&w, padding, stride, 1, 1)?;
        let their_grads = (&theirs * &upstream)?.sum_all()?.backward()?;
        let grad =
            |grads: &candle_core::backprop::GradStore, var: &Var| grads.get(var).cloned().ok_or_else(|| anyhow::anyhow!("no gradient"));
        println!(
            "k{kernel} s{stride} {channels}->{out} @{size}: forward ours {:.1e} candle {:.1e}; input grad ours {:.1e} candle {:.1e}; weight grad ours {:.1e} candle {:.1e}",
            relative_error(&ours, &exact)?,
            relative_error(&theirs, &exact)?,
            relative_error(&grad(&our_grads, &x)?, &grad(&exact_grads, &x64)?)?,
            relative_error(&grad(&their_grads, &x)?, &grad(&exact_grads, &x64)?)?,
            relative_error(&grad(&our_grads, &w)?, &grad(&exact_grads, &w64)?)?,
            relative_error(&grad(&their_grads, &w)?, &grad(&exact_grads, &w64)?)?,
        );
    }
    Ok(())
}
