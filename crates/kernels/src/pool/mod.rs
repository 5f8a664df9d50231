//! The 3x3/2 max pooling of the ResNet and DenseNet stems, with PyTorch's semantics.
//!
//! The stems pool a (B, 64, 112, 112) activation. Built from candle's ops (padded copies,
//! shifted views, two `maximum`s) that is about ten single-threaded passes over strided views
//! forward and as many backward, and the gradient of a tie is split between the tied inputs.
//! f32 on the CPU takes one op each way that sends each output's gradient to the input
//! PyTorch's index names (`cpu.rs`), and f32 on a CUDA device the same op as one kernel each way
//! (`cuda.rs`); other devices pool from shifted views (`composite.rs`), since candle's max
//! pooling with kernel != stride has no backward pass.

mod composite;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

use candle_core::{Result, Tensor};

use crate::kernel_input::is_f32_cpu;

/// A square window, stride and symmetric -inf padding (PyTorch's `ceil_mode=False`): the op,
/// whose CPU half is `cpu.rs`'s and CUDA half `cuda.rs`'s.
#[derive(Debug, Clone, Copy)]
struct MaxPool {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl MaxPool {
    /// Outputs along an axis of `len` inputs (at least the window's size, padding included).
    fn out_len(&self, len: usize) -> usize {
        (len + 2 * self.padding - self.kernel) / self.stride + 1
    }
}

/// Max pooling 3x3, stride 2, padding 1 (the ResNet and DenseNet stem) of x (B, C, H, W).
pub fn max_pool_3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    crate::window::check_fits("max pool", x, (3, 3), 2, 1)?;
    if is_f32_cpu(x) {
        return cpu::max_pool(x, 3, 2, 1);
    }
    #[cfg(feature = "cuda")]
    if cuda::applies(x) {
        return cpu::max_pool(x, 3, 2, 1);
    }
    composite::max_pool_3x3_s2_p1(x)
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;

    /// The shifted-view version other devices use agrees on the forward pass, and on the
    /// backward pass wherever no window holds a tie (random continuous values).
    #[test]
    fn the_device_path_agrees_without_ties() {
        let mut random = crate::test_tensors::NormalTensors::new(12);
        let x = Var::from_tensor(&random.draw(0.0, 1.0, (2, 3, 9, 8)).abs().unwrap().affine(1.0, 0.01).unwrap()).unwrap();
        let fused = max_pool_3x3_s2_p1(&x).unwrap();
        let composite = composite::max_pool_3x3_s2_p1(&x).unwrap();
        assert_eq!(fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(), composite.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let upstream = random.draw(0.0, 1.0, fused.dims());
        let gradient = |y: &Tensor| {
            (y * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
                .get(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(gradient(&fused), gradient(&composite));
    }
}
