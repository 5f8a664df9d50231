//! The channel gate's CUDA halves (the ops are `mod.rs`'s): the product as one elementwise
//! kernel (the CPU's single rounding per value, so the same bits), each gate's gradient one block
//! per plane summing dy·x in f64 in a fixed tree (deterministic; the CPU sums in f32 in candle's
//! order, so the two agree to f32's rounding of the sum, not to the bit).

#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{Layout, Shape, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

use crate::cuda_input::{candle_requested, driver_error, input_view};
use crate::nvrtc::NvrtcModule;

/// A CUDA tensor; `MEDXFER_CUDA_GATE=candle` keeps candle's broadcast product, to measure.
pub(super) fn applies(x: &Tensor) -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    !candle_requested(&CANDLE, "MEDXFER_CUDA_GATE") && x.device().is_cuda()
}

const SOURCE: &str = r#"
// out[i] = x[i] gate[i / plane].
extern "C" __global__ void gate_forward(const float* __restrict__ x, const float* __restrict__ gate,
                                        float* __restrict__ out, unsigned n, unsigned plane) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = __fmul_rn(x[i], gate[i / plane]);
}

// Block p: out[p] = the sum over plane p of dy x, each thread every blockDim-th value in f64,
// then a fixed tree (blockDim a power of two, at most 256).
extern "C" __global__ void gate_gradient(const float* __restrict__ dy, const float* __restrict__ x,
                                         float* __restrict__ out, unsigned plane) {
    __shared__ double partial[256];
    size_t base = (size_t)blockIdx.x * plane;
    double sum = 0.0;
    for (unsigned j = threadIdx.x; j < plane; j += blockDim.x) sum += (double)dy[base + j] * (double)x[base + j];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = (float)partial[0];
}
"#;

static KERNELS: NvrtcModule = NvrtcModule::new("medxfer_gate", SOURCE);

/// (planes, values per plane) of x, checked against the kernels' 32-bit indices.
fn sizes(layout: &Layout) -> candle_core::Result<(usize, usize)> {
    let (planes, plane) = super::planes(layout)?;
    if planes * plane > u32::MAX as usize / 2 || planes > i32::MAX as usize {
        candle_core::bail!("channel gate: {:?} is larger than the CUDA kernels index", layout.shape());
    }
    Ok((planes, plane))
}

pub(super) fn forward(
    (x, x_layout): (&CudaStorage, &Layout),
    (gate, gate_layout): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (planes, plane) = sizes(x_layout)?;
    let xv = input_view::<f32>(x, x_layout, "channel gate", "the input")?;
    let gv = input_view::<f32>(gate, gate_layout, "channel gate", "the gate")?;
    if gv.len() != planes || xv.len() != planes * plane {
        candle_core::bail!("channel gate: {} gates for an input of shape {:?}", gv.len(), x_layout.shape());
    }
    let device = x.device();
    let n = (planes * plane) as u32;
    // SAFETY: the kernel writes all n values before anything reads them.
    let mut out = unsafe { device.alloc::<f32>(n as usize) }?;
    let kernel = KERNELS.function(device, "gate_forward")?;
    let stream = device.cuda_stream();
    let mut launch = stream.launch_builder(&kernel);
    let plane32 = plane as u32;
    launch.arg(&xv).arg(&gv).arg(&mut out).arg(&n).arg(&plane32);
    let grid = LaunchConfig { grid_dim: (n.div_ceil(256).clamp(1, 65_535 * 8), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: x and out hold n f32 values and gate n / plane (checked); each thread writes its own.
    unsafe { launch.launch(grid) }.map_err(driver_error("channel gate kernel"))?;
    Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), x_layout.shape().clone()))
}

pub(super) fn gradient(
    (dy, dy_layout): (&CudaStorage, &Layout),
    (x, x_layout): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (planes, plane) = sizes(dy_layout)?;
    let dyv = input_view::<f32>(dy, dy_layout, "channel gate gradient", "the gradient")?;
    let xv = input_view::<f32>(x, x_layout, "channel gate gradient", "the input")?;
    if dyv.len() != planes * plane || xv.len() != dyv.len() {
        candle_core::bail!("channel gate gradient: {} inputs for a gradient of shape {:?}", xv.len(), dy_layout.shape());
    }
    let device = dy.device();
    // SAFETY: the kernel writes every plane's sum (one block each) before anything reads them.
    let mut out = unsafe { device.alloc::<f32>(planes) }?;
    let kernel = KERNELS.function(device, "gate_gradient")?;
    let stream = device.cuda_stream();
    let mut launch = stream.launch_builder(&kernel);
    let plane32 = plane as u32;
    launch.arg(&dyv).arg(&xv).arg(&mut out).arg(&plane32);
    let threads = plane.next_power_of_two().clamp(32, 256) as u32;
    let grid = LaunchConfig { grid_dim: (planes as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: dy and x hold planes·plane f32 values (checked), out planes; one block per plane,
    // whose power-of-two size fits the kernel's 256-entry shared array.
    unsafe { launch.launch(grid) }.map_err(driver_error("channel gate kernel"))?;
    let (batch, channels, _, _) = dy_layout.shape().dims4()?;
    Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), Shape::from((batch, channels, 1, 1))))
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{DType, Device, Tensor, Var};

    use crate::test_tensors::{NormalTensors, bits, max_abs};

    /// The product and dx to the CPU's bits, the gate's gradient within 1e-6 of f64 sums (the
    /// CPU's f32 sums are checked against candle's in `mod.rs`) and the same bits twice: an
    /// EfficientNet plane (56x56) and small ones.
    #[test]
    fn the_cuda_gate_matches_the_cpu_gate() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(43);
        for shape in [(4usize, 24usize, 56usize, 56usize), (2, 3, 5, 7), (3, 5, 1, 1)] {
            let (x, gate, upstream) =
                (random.draw(0.0, 1.0, shape), random.draw(0.5, 0.3, (shape.0, shape.1, 1, 1)), random.draw(0.0, 1.0, shape));
            let run = |device: &Device| {
                let on = |t: &Tensor| Var::from_tensor(&t.to_device(device).unwrap()).unwrap();
                let (xv, gv) = (on(&x), on(&gate));
                let y = crate::channel_gate(xv.as_tensor(), gv.as_tensor()).unwrap();
                let grads = (&y * upstream.to_device(device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let back = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
                [back(&y), back(grads.get(xv.as_tensor()).unwrap()), back(grads.get(gv.as_tensor()).unwrap())]
            };
            let (truth, ours) = (run(&Device::Cpu), run(&gpu));
            assert!(bits(&truth[0]) == bits(&ours[0]), "{shape:?}: the products differ");
            assert!(bits(&truth[1]) == bits(&ours[1]), "{shape:?}: the input gradients differ");
            let exact = (x.to_dtype(DType::F64).unwrap() * upstream.to_dtype(DType::F64).unwrap()).unwrap().sum_keepdim((2, 3)).unwrap();
            let error = max_abs((&exact - &ours[2].to_dtype(DType::F64).unwrap()).unwrap().to_dtype(DType::F32).unwrap())
                / max_abs(exact.to_dtype(DType::F32).unwrap()).max(1.0);
            assert!(error < 1e-6, "{shape:?}: gate gradient relative error {error}");
            assert!(bits(&run(&gpu)[2]) == bits(&ours[2]), "{shape:?}: two runs' gate gradients differ");
        }
    }
}
