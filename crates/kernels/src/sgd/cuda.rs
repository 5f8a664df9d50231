//! The SGD step of an f32 CUDA parameter as one kernel (`FusedStep`'s CUDA half, which `cpu.rs` calls), where
//! candle's tensor expressions launch eight kernels and make eight tensors per parameter: a
//! ResNet-50 step updates 161 parameters. The f32 operations are the CPU kernel's, in its order,
//! each rounded on its own (`__fmul_rn` and friends are never fused into an FMA), so both give
//! the same bits.

#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{Layout, Shape};
use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::FusedStep;
use crate::cuda_input::{driver_error, input_view};
use crate::nvrtc::NvrtcModule;

const SOURCE: &str = r#"
// out[i] = the new parameter, out[n + i] = the new momentum buffer (b null: the first step).
extern "C" __global__ void sgd_step(const float* __restrict__ p, const float* __restrict__ grad,
                                    const float* __restrict__ b, float* __restrict__ out, unsigned n,
                                    float lr, float momentum, float wd, int nesterov) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        float g = wd != 0.0f ? __fadd_rn(grad[i], __fmul_rn(p[i], wd)) : grad[i];
        float buffer = b ? __fadd_rn(__fmul_rn(b[i], momentum), g) : g;
        g = nesterov ? __fadd_rn(g, __fmul_rn(buffer, momentum)) : buffer;
        out[i] = __fsub_rn(p[i], __fmul_rn(g, lr));
        out[n + i] = buffer;
    }
}
"#;

static KERNELS: NvrtcModule = NvrtcModule::new("medxfer_sgd", SOURCE);

/// (2, n): the new parameter, then the new buffer.
pub(super) fn step(
    op: &FusedStep,
    (param, param_layout): (&CudaStorage, &Layout),
    (grad, grad_layout): (&CudaStorage, &Layout),
    buffer: Option<(&CudaStorage, &Layout)>,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let device = param.device();
    let stream = device.cuda_stream();
    let p = input_view::<f32>(param, param_layout, "sgd", "the parameter")?;
    let g = input_view::<f32>(grad, grad_layout, "sgd", "the gradient")?;
    let b = buffer.map(|(s, l)| input_view::<f32>(s, l, "sgd", "the momentum buffer")).transpose()?;
    let n = p.len();
    if g.len() != n || b.as_ref().is_some_and(|b| b.len() != n) || 2 * n > u32::MAX as usize {
        candle_core::bail!("sgd: a parameter of {n} values got {} gradients", g.len());
    }
    // SAFETY: the kernel writes all 2n values before anything reads them.
    let mut out = unsafe { device.alloc::<f32>(2 * n) }?;
    let kernel = KERNELS.function(device, "sgd_step")?;
    let count = n as u32;
    let nesterov = i32::from(op.nesterov);
    let none: u64 = 0;
    let mut launch = stream.launch_builder(&kernel);
    launch.arg(&p).arg(&g);
    match &b {
        Some(b) => launch.arg(b),
        None => launch.arg(&none),
    };
    launch.arg(&mut out).arg(&count).arg(&op.learning_rate).arg(&op.momentum).arg(&op.weight_decay).arg(&nesterov);
    let grid = LaunchConfig { grid_dim: (count.div_ceil(256).clamp(1, 65_535 * 8), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the parameters match the kernel's: p, grad and (unless null) b hold n f32 values,
    // out 2n; each thread writes its own elements.
    unsafe { launch.launch(grid) }.map_err(driver_error("sgd kernel"))?;
    Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), Shape::from((2, n))))
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{Device, Tensor};

    use crate::SgdSettings;
    use crate::test_tensors::{NormalTensors, bits};

    /// Three steps (the first without a buffer) of a parameter larger than one launch's grid
    /// stride, both momentum variants, with and without weight decay: the same bits as the CPU
    /// kernel.
    #[test]
    fn the_cuda_step_is_the_cpu_step_bit_for_bit() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(51);
        let start = random.draw(0.0, 1.0, (1031, 997));
        let gradients: Vec<Tensor> = (0..3).map(|_| random.draw(0.0, 0.1, (1031, 997))).collect();
        for nesterov in [true, false] {
            for weight_decay in [0.0, 1e-4] {
                let settings = SgdSettings { learning_rate: 0.03, momentum: 0.9, weight_decay, nesterov };
                let run = |device: &Device| {
                    let mut param = start.to_device(device).unwrap();
                    let mut buffer: Option<Tensor> = None;
                    let mut seen = Vec::new();
                    for grad in &gradients {
                        let update = crate::sgd_update(&param, &grad.to_device(device).unwrap(), buffer.as_ref(), settings).unwrap();
                        seen.push((bits(&update.param), bits(update.buffer.as_ref().unwrap())));
                        (param, buffer) = (update.param, update.buffer);
                    }
                    seen
                };
                assert!(run(&Device::Cpu) == run(&gpu), "nesterov {nesterov}, weight decay {weight_decay}: the bits differ");
            }
        }
    }
}
