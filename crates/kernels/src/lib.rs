//! medxfer-kernels: the differentiable ops the workspace trains with, where candle 0.11 has
//! none or a slow one.
//!
//! candle is built for inference: its CPU convolution unfolds the whole batch at once and takes
//! the input gradient from a naive loop, its depthwise convolution is one convolution per
//! channel, a train-mode BatchNorm written with its ops keeps eight copies of the input, and its
//! max pooling with kernel != stride has no backward pass. Each op here is a module with the
//! same shape inside:
//!
//! - `mod.rs`: the public function, which picks the implementation for the tensors' device and
//!   dtype (f32 on the CPU: our kernel; anything else: the composite), and the tests that hold
//!   the implementations to one truth;
//! - `cpu.rs`: the kernel for f32 on the CPU, a candle custom op with its own backward pass;
//! - `composite.rs` (where one is needed): the same maths from candle's differentiable ops, for
//!   CUDA and other dtypes where the op has no CUDA kernel of its own;
//! - `cuda.rs` (behind the `cuda` feature): the op's CUDA kernel or library call (cuDNN for the
//!   convolutions), with the backward pass beside it.
//!
//! `gpu_settings` holds the process's GPU arithmetic (TF32 or not, how cuDNN algorithms are
//! chosen), `cuda_device` the host-side set-up of a CUDA device for training, and `upload` the
//! way batches reach a GPU (page-locked buffers, the copy queued behind the device's work).
//!
//! Every op returns `candle_core::Result`: its failures are candle's (a shape, a device, a dtype),
//! and callers convert them into their own error types.
//!
//! ```
//! use candle_core::{DType, Device, Tensor, Var};
//! use medxfer_kernels::{FusedActivation, conv2d, conv_batch_norm_train};
//!
//! let x = Tensor::ones((2, 3, 8, 8), DType::F32, &Device::Cpu)?;
//! let weight = Var::ones((4, 3, 3, 3), DType::F32, &Device::Cpu)?;
//! let y = conv2d(&x, &weight, None, 1, 1)?;
//! assert_eq!(y.dims(), [2, 4, 8, 8]);
//!
//! // A convolution and the train-mode BatchNorm + ReLU after it, as one graph node.
//! let (gamma, beta) = (Var::ones(4, DType::F32, &Device::Cpu)?, Var::zeros(4, DType::F32, &Device::Cpu)?);
//! let batch_norm = medxfer_kernels::BatchNormParams { gamma: &gamma, beta: &beta, eps: 1e-5 };
//! let out = conv_batch_norm_train(&x, &weight, 2, 1, batch_norm, FusedActivation::Relu)?;
//! assert_eq!(out.y.dims(), [2, 4, 4, 4]);
//! let gradients = out.y.sum_all()?.backward()?;
//! assert!(gradients.get(&weight).is_some() && gradients.get(&gamma).is_some());
//! # Ok::<(), candle_core::Error>(())
//! ```

#![warn(missing_docs)]

mod activation;
mod attention;
mod backward_reads;
mod batchnorm;
mod channel_bias;
mod channels_last;
mod conv;
mod conv_batchnorm;
#[cfg(feature = "cuda")]
mod cuda_device;
#[cfg(feature = "cuda")]
mod cuda_input;
mod depthwise;
mod elementwise;
mod exp;
mod gate;
mod global_response_norm;
mod gpu_settings;
mod grouped;
mod kernel_input;
mod layer_norm;
mod linear;
#[cfg(feature = "cuda")]
mod nvrtc;
mod parallel_output;
mod pool;
mod product;
mod sgd;
#[cfg(test)]
mod test_tensors;
mod upload;
mod views;
mod window;

pub use activation::{FusedActivation, gelu_erf, relu, relu6, silu};
pub use attention::{attention, attention_with_bias};
pub use batchnorm::{
    BatchNormOutput, BatchNormParams, RunningStatistics, batch_norm_eval, batch_norm_train, eval_batch_norm_folds_into_conv,
    update_running_statistics,
};
pub use channel_bias::add_channel_bias;
pub use channels_last::{channels_last_residual, to_channels_first, to_channels_last};
#[cfg(feature = "cuda")]
pub use conv::cuda::largest_cudnn_workspace;
pub use conv::{conv2d, conv2d_eval};
pub use conv_batchnorm::conv_batch_norm_train;
#[cfg(feature = "cuda")]
pub use cuda_device::{cuda_memory_high_water, cuda_memory_in_use, prepare_cuda_device, reset_cuda_memory_high_water};
pub use depthwise::{depthwise_conv2d, depthwise_conv2d_eval};
pub use gate::channel_gate;
pub use global_response_norm::global_response_norm;
pub use gpu_settings::{ConvAlgorithmSearch, ConvPrecision, GpuSettings, gpu_settings, set_gpu_settings};
pub use grouped::grouped_conv2d;
pub use layer_norm::layer_norm;
pub use linear::{linear, linear_gelu, linear_residual};
pub use pool::max_pool_3x3_s2_p1;
pub use product::cpu_product_library;
pub use sgd::{SgdSettings, SgdUpdate, sgd_update};
pub use upload::Upload;
