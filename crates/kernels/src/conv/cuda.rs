//! Convolutions of CUDA tensors (f32, f16, bf16) through cuDNN, in all three directions: the
//! forward pass, the input gradient (backward-data) and the weight gradient (backward-filter),
//! each one cuDNN call, grouped and depthwise convolutions included (the descriptor's group
//! count).
//!
//! candle 0.11 runs a CUDA convolution as im2col, a GEMM and a layout copy (with its `cudnn`
//! feature, cuDNN for the forward pass only, in cuDNN's default math, which rounds f32 to TF32),
//! and has no cuDNN backward at all; PyTorch runs the three directions through cuDNN. Here each
//! thread keeps, per CUDA stream, one cuDNN handle bound to candle's stream and the descriptors
//! and chosen algorithms of every shape it has met (keyed by shape, dtype and [`GpuSettings`]):
//! after a training step's first, no descriptor is made and no algorithm chosen.
//!
//! A call's workspace comes from candle's stream-ordered memory pool and goes back to it when the
//! call is queued, as PyTorch's caching allocator serves cuDNN's workspaces: the memory a large
//! workspace takes is then held only while its convolution runs, not for the rest of the step.
//! `MEDXFER_CUDA_WORKSPACE=persistent` keeps one workspace per thread that only grows instead
//! (no allocation per call; the largest workspace held throughout), to measure which costs less.
//!
//! Algorithms are deterministic ones only (cuDNN's perf results say which), so a run computes the
//! same bits every time, as the workspace's kill-and-resume guarantee needs, unless
//! [`GpuSettings::conv_nondeterministic`] admits the others as PyTorch's default does; f32 data
//! under [`ConvPrecision::F32`] runs in cuDNN's FMA math, never TF32.

// Every cuDNN and CUDA driver call is an FFI call; each `unsafe` block says why it is sound.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, CudaStorage, CudaStorageSlice};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use cudarc::cudnn::result::{self as cudnn, CudnnError};
use cudarc::cudnn::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut, SyncOnDrop};

use crate::cuda_input::{candle_requested, driver_error};
use crate::gpu_settings::{ConvAlgorithmSearch, ConvPrecision, GpuSettings, gpu_settings};

/// x (B, C, H, W) convolved with weight (O, C / groups, k, k) in `groups` groups at `stride`
/// with `padding` zeros on every side, both on one CUDA device in one of f32, f16 and bf16.
pub(crate) fn conv2d(x: &Tensor, weight: &Tensor, groups: usize, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    let x = dense(x)?;
    let weight = dense(weight)?;
    x.apply_op2(&weight, CudnnConv { stride, padding, groups })
}

/// Whether [`conv2d`] takes these tensors: CUDA, and a dtype cuDNN convolves. The environment
/// variable `MEDXFER_CUDA_CONV=candle` sends them to the candle compositions instead, to measure
/// what cuDNN gains (README, "GPU speed").
pub(crate) fn applies(x: &Tensor, weight: &Tensor) -> bool {
    static CANDLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let candle = candle_requested(&CANDLE, "MEDXFER_CUDA_CONV");
    !candle && x.device().is_cuda() && x.dtype() == weight.dtype() && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
}

/// Contiguous with its data at the start of its buffer.
fn dense(t: &Tensor) -> candle_core::Result<Tensor> {
    let t = t.contiguous()?;
    if t.layout().start_offset() == 0 { Ok(t) } else { t.force_contiguous() }
}

/// The convolution's sizes, which with the dtype and settings name its cuDNN plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Geometry {
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
}

impl Geometry {
    fn new(x: &Shape, w: &Shape, stride: usize, padding: usize, groups: usize) -> candle_core::Result<Self> {
        let (batch, channels, height, width) = x.dims4()?;
        let (out_channels, group_channels, kernel, kernel_w) = w.dims4()?;
        if kernel != kernel_w || groups == 0 || group_channels * groups != channels || out_channels % groups != 0 || stride == 0 {
            candle_core::bail!(
                "cuDNN convolution: input {:?}, weight {:?}, {groups} groups, stride {stride}: the shapes do not fit",
                x.dims(),
                w.dims()
            );
        }
        if height + 2 * padding < kernel || width + 2 * padding < kernel {
            candle_core::bail!("cuDNN convolution: a {kernel}x{kernel} kernel does not fit a padded {height}x{width} input");
        }
        Ok(Geometry { batch, channels, height, width, out_channels, kernel, stride, padding, groups })
    }

    fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    fn x_dims(&self) -> [usize; 4] {
        [self.batch, self.channels, self.height, self.width]
    }

    fn y_dims(&self) -> [usize; 4] {
        [self.batch, self.out_channels, self.out_height(), self.out_width()]
    }

    fn w_dims(&self) -> [usize; 4] {
        [self.out_channels, self.channels / self.groups, self.kernel, self.kernel]
    }
}

/// The forward op; its backward pass runs the two gradient ops below.
#[derive(Debug, Clone, Copy)]
struct CudnnConv {
    stride: usize,
    padding: usize,
    groups: usize,
}

impl CustomOp2 for CudnnConv {
    fn name(&self) -> &'static str {
        "conv2d-cudnn"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::OPERANDS
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("conv2d-cudnn runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_layout: &Layout,
        w: &CudaStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let geometry = Geometry::new(x_layout.shape(), w_layout.shape(), self.stride, self.padding, self.groups)?;
        let y = run(Direction::Forward, geometry, x.device(), [(x, x_layout), (w, w_layout)], x.dtype())?;
        Ok((y, Shape::from(geometry.y_dims().to_vec())))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = dense(grad)?;
        let geometry = Geometry::new(x.shape(), w.shape(), self.stride, self.padding, self.groups)?;
        // An input that needs no gradient (the images into a stem) costs nothing.
        let grad_x =
            if x.track_op() { Some(grad.apply_op2_no_bwd(&dense(w)?, &CudnnConvGradient { geometry, of: Operand::Input })?) } else { None };
        let grad_w = dense(x)?.apply_op2_no_bwd(&grad, &CudnnConvGradient { geometry, of: Operand::Weight })?;
        Ok((grad_x, Some(grad_w)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operand {
    Input,
    Weight,
}

/// One of the convolution's gradients, as a graph leaf (nothing differentiates it again):
/// backward-data on (grad, weight), backward-filter on (input, grad).
#[derive(Debug, Clone, Copy)]
struct CudnnConvGradient {
    geometry: Geometry,
    of: Operand,
}

impl CustomOp2 for CudnnConvGradient {
    fn name(&self) -> &'static str {
        match self.of {
            Operand::Input => "conv2d-cudnn-backward-data",
            Operand::Weight => "conv2d-cudnn-backward-filter",
        }
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("{} runs on CUDA tensors only", self.name())
    }

    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        a_layout: &Layout,
        b: &CudaStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let g = self.geometry;
        let (direction, dims) = match self.of {
            Operand::Input => (Direction::BackwardData, g.x_dims()),
            Operand::Weight => (Direction::BackwardFilter, g.w_dims()),
        };
        let out = run(direction, g, a.device(), [(a, a_layout), (b, b_layout)], a.dtype())?;
        Ok((out, Shape::from(dims.to_vec())))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Direction {
    /// (x, w) -> y
    Forward,
    /// (dy, w) -> dx
    BackwardData,
    /// (x, dy) -> dw
    BackwardFilter,
}

/// A cuDNN algorithm of one of the three directions.
#[derive(Debug, Clone, Copy)]
enum Algorithm {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    BackwardData(sys::cudnnConvolutionBwdDataAlgo_t),
    BackwardFilter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// A chosen algorithm, the math it runs in and the workspace it needs.
#[derive(Debug, Clone, Copy)]
struct Choice {
    algorithm: Algorithm,
    math: sys::cudnnMathType_t,
    workspace: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    geometry: Geometry,
    dtype: DType,
    settings: GpuSettings,
}

/// The largest workspace any chosen algorithm has needed in this process, in bytes.
static LARGEST_WORKSPACE: AtomicUsize = AtomicUsize::new(0);

/// The largest workspace, in bytes, that a cuDNN algorithm chosen in this process needs (0 before
/// the first convolution): what a step's peak memory holds for cuDNN at most, all of it
/// throughout under `MEDXFER_CUDA_WORKSPACE=persistent`.
pub fn largest_cudnn_workspace() -> usize {
    LARGEST_WORKSPACE.load(Ordering::Relaxed)
}

/// `MEDXFER_CUDA_WORKSPACE=persistent`, read once.
fn persistent_workspace() -> bool {
    static PERSISTENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PERSISTENT.get_or_init(|| std::env::var("MEDXFER_CUDA_WORKSPACE").is_ok_and(|v| v == "persistent"))
}

/// A shape's descriptors and, once met, each direction's algorithm.
struct Plan {
    x: TensorDescriptor,
    y: TensorDescriptor,
    w: FilterDescriptor,
    conv: ConvDescriptor,
    choices: HashMap<Direction, Choice>,
}

/// One thread's cuDNN state on one stream.
struct Context {
    handle: Handle,
    stream: Arc<CudaStream>,
    plans: HashMap<PlanKey, Plan>,
    /// The workspace under `MEDXFER_CUDA_WORKSPACE=persistent`.
    workspace: Option<CudaSlice<u8>>,
}

thread_local! {
    /// cuDNN handles may not be shared between threads (cuDNN's thread-safety rules), so each
    /// thread keeps its own, one per stream it has convolved on.
    static CONTEXTS: RefCell<Vec<Context>> = const { RefCell::new(Vec::new()) };
}

/// Runs one direction of the convolution on the two operands and returns its new output.
fn run(
    direction: Direction,
    geometry: Geometry,
    device: &CudaDevice,
    operands: [(&CudaStorage, &Layout); 2],
    dtype: DType,
) -> candle_core::Result<CudaStorage> {
    if operands[1].0.dtype() != dtype {
        candle_core::bail!("cuDNN convolution: operands of {dtype:?} and {:?}", operands[1].0.dtype());
    }
    let key = PlanKey { geometry, dtype, settings: gpu_settings() };
    let stream = device.cuda_stream();
    CONTEXTS.with(|contexts| {
        let mut contexts = contexts.borrow_mut();
        let index = match contexts.iter().position(|c| Arc::ptr_eq(&c.stream, &stream)) {
            Some(index) => index,
            None => {
                contexts.push(Context::new(stream.clone())?);
                contexts.len() - 1
            }
        };
        contexts[index].run(direction, key, device, operands)
    })
}

impl Context {
    fn new(stream: Arc<CudaStream>) -> candle_core::Result<Self> {
        stream.context().bind_to_thread().map_err(driver_error("cuDNN convolution"))?;
        let handle = Handle(cudnn::create_handle().map_err(cudnn_error)?);
        // SAFETY: the handle was just created; the stream is candle's, alive as long as this
        // context holds its Arc.
        unsafe { cudnn::set_stream(handle.0, stream.cu_stream() as sys::cudaStream_t) }.map_err(cudnn_error)?;
        Ok(Context { handle, stream, plans: HashMap::new(), workspace: None })
    }

    fn run(
        &mut self,
        direction: Direction,
        key: PlanKey,
        device: &CudaDevice,
        [(a, a_layout), (b, b_layout)]: [(&CudaStorage, &Layout); 2],
    ) -> candle_core::Result<CudaStorage> {
        if let std::collections::hash_map::Entry::Vacant(entry) = self.plans.entry(key) {
            entry.insert(Plan::new(&key)?);
        }
        let choice = self.choose(direction, &key)?;
        LARGEST_WORKSPACE.fetch_max(choice.workspace, Ordering::Relaxed);
        // This call's own workspace, freed in stream order when it drops at the end of the call,
        // after the convolution queued on it (cudarc frees a slice on its stream).
        let mut call_workspace = None;
        if choice.workspace > 0 && !persistent_workspace() {
            // SAFETY: cuDNN writes a workspace before it reads it; the bytes are never read here.
            call_workspace = Some(unsafe { self.stream.alloc::<u8>(choice.workspace) }.map_err(driver_error("cuDNN convolution"))?);
        } else if choice.workspace > self.workspace.as_ref().map_or(0, |w| w.len()) {
            // The old workspace is freed in stream order, after the work queued on it.
            self.workspace = None;
            // SAFETY: cuDNN writes a workspace before it reads it; the bytes are never read here.
            self.workspace = Some(unsafe { self.stream.alloc::<u8>(choice.workspace) }.map_err(driver_error("cuDNN convolution"))?);
        }
        let out_len = match direction {
            Direction::Forward => key.geometry.y_dims(),
            Direction::BackwardData => key.geometry.x_dims(),
            Direction::BackwardFilter => key.geometry.w_dims(),
        }
        .iter()
        .product();
        let mut out = allocate(&self.stream, device, key.dtype, out_len)?;
        let Context { handle, stream, plans, workspace } = self;
        let stream: &CudaStream = stream;
        let plan = &plans[&key];
        let (a_ptr, _a_sync) = read_pointer(a, a_layout, stream)?;
        let (b_ptr, _b_sync) = read_pointer(b, b_layout, stream)?;
        let (out_ptr, _out_sync) = write_pointer(&mut out, stream)?;
        let (workspace_ptr, _workspace_sync) = match call_workspace.as_mut().or(workspace.as_mut()) {
            Some(w) if choice.workspace > 0 => {
                let (ptr, sync) = w.device_ptr_mut(stream);
                (ptr as *mut std::ffi::c_void, Some(sync))
            }
            _ => (std::ptr::null_mut(), None),
        };
        // cuDNN takes f32 scaling factors for f32, f16 and bf16 data alike.
        let (alpha, beta) = (1f32, 0f32);
        let (alpha, beta) = (&alpha as *const f32 as *const std::ffi::c_void, &beta as *const f32 as *const std::ffi::c_void);
        let (a_ptr, b_ptr, out_ptr) =
            (a_ptr as *const std::ffi::c_void, b_ptr as *const std::ffi::c_void, out_ptr as *mut std::ffi::c_void);
        // `read_pointer` checked that each operand is contiguous and as long as its shape, `out`
        // was allocated for the output's shape, and all three hold `key.dtype`. The workspace is
        // at least `choice.workspace` bytes, which cuDNN reported for this algorithm and math.
        // SAFETY: so the descriptors describe these buffers exactly, and the handle runs on
        // `stream`, the stream every buffer here was made and is used on.
        unsafe {
            cudnn::set_convolution_math_type(plan.conv.0, choice.math).map_err(cudnn_error)?;
            match choice.algorithm {
                Algorithm::Forward(algorithm) => cudnn::convolution_forward(
                    handle.0,
                    alpha,
                    plan.x.0,
                    a_ptr,
                    plan.w.0,
                    b_ptr,
                    plan.conv.0,
                    algorithm,
                    workspace_ptr,
                    choice.workspace,
                    beta,
                    plan.y.0,
                    out_ptr,
                ),
                Algorithm::BackwardData(algorithm) => cudnn::convolution_backward_data(
                    handle.0,
                    alpha,
                    plan.w.0,
                    b_ptr,
                    plan.y.0,
                    a_ptr,
                    plan.conv.0,
                    algorithm,
                    workspace_ptr,
                    choice.workspace,
                    beta,
                    plan.x.0,
                    out_ptr,
                ),
                Algorithm::BackwardFilter(algorithm) => cudnn::convolution_backward_filter(
                    handle.0,
                    alpha,
                    plan.x.0,
                    a_ptr,
                    plan.y.0,
                    b_ptr,
                    plan.conv.0,
                    algorithm,
                    workspace_ptr,
                    choice.workspace,
                    beta,
                    plan.w.0,
                    out_ptr,
                ),
            }
            .map_err(|e| candle_core::Error::Msg(format!("cuDNN convolution {direction:?} of {:?}: {e:?}", key.geometry)))?;
        }
        drop((_a_sync, _b_sync, _out_sync, _workspace_sync));
        Ok(out)
    }

    /// The direction's algorithm for the plan, chosen the first time the shape meets it.
    fn choose(&mut self, direction: Direction, key: &PlanKey) -> candle_core::Result<Choice> {
        let plan = self.plans.get_mut(key).ok_or_else(|| candle_core::Error::Msg("cuDNN convolution: no plan".into()))?;
        if let Some(choice) = plan.choices.get(&direction) {
            return Ok(*choice);
        }
        let strict = key.dtype == DType::F32 && key.settings.conv_precision == ConvPrecision::F32;
        // FMA math admits no TF32; tensor-op math lets f32 round to TF32 and lets f16/bf16 use
        // tensor cores, as PyTorch's `allow_tf32` does.
        let requested = if strict { sys::cudnnMathType_t::CUDNN_FMA_MATH } else { sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH };
        // SAFETY: the descriptor is alive (owned by the plan).
        unsafe { cudnn::set_convolution_math_type(plan.conv.0, requested) }.map_err(cudnn_error)?;
        let search = key.settings.conv_algorithms;
        let candidates = candidates(self.handle.0, plan, direction, search)?;
        let usable = |c: &Candidate| {
            c.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
                && (key.settings.conv_nondeterministic || c.determinism == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC)
                && !(strict
                    && matches!(
                        c.math,
                        sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH | sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
                    ))
        };
        let Some(best) = candidates.iter().find(|c| usable(c)) else {
            candle_core::bail!(
                "cuDNN offers no {}{direction:?} algorithm for {:?} in {:?} ({} candidates)",
                if key.settings.conv_nondeterministic { "" } else { "deterministic " },
                key.geometry,
                key.dtype,
                candidates.len()
            );
        };
        let math = if strict { sys::cudnnMathType_t::CUDNN_FMA_MATH } else { best.math };
        // SAFETY: the descriptor is alive (owned by the plan).
        unsafe { cudnn::set_convolution_math_type(plan.conv.0, math) }.map_err(cudnn_error)?;
        let workspace = workspace_size(self.handle.0, plan, best.algorithm)?;
        let choice = Choice { algorithm: best.algorithm, math, workspace };
        plan.choices.insert(direction, choice);
        Ok(choice)
    }
}

/// One entry of cuDNN's ranked list of algorithms for a direction.
#[derive(Debug)]
struct Candidate {
    algorithm: Algorithm,
    status: sys::cudnnStatus_t,
    determinism: sys::cudnnDeterminism_t,
    math: sys::cudnnMathType_t,
}

/// cuDNN's list of `count` perf results as `fill` writes it, in cuDNN's order (best first).
fn ranked<P: Copy>(
    count: usize,
    fill: impl FnOnce(&mut std::ffi::c_int, *mut P) -> sys::cudnnStatus_t,
    candidate: impl Fn(&P) -> Candidate,
) -> candle_core::Result<Vec<Candidate>> {
    let mut returned: std::ffi::c_int = 0;
    // SAFETY: cuDNN's perf structs are plain data (enums whose zero is a variant, numbers and
    // an int array), for which all-zero bytes are a valid value; cuDNN overwrites the entries
    // it returns, and only those are read.
    let mut perf: Vec<P> = vec![unsafe { std::mem::zeroed() }; count];
    fill(&mut returned, perf.as_mut_ptr()).result().map_err(cudnn_error)?;
    perf.truncate(usize::try_from(returned).unwrap_or(0).min(count));
    Ok(perf.iter().map(candidate).collect())
}

/// cuDNN's candidates for the direction, best first: ranked by its heuristics, or timed.
fn candidates(
    handle: sys::cudnnHandle_t,
    plan: &Plan,
    direction: Direction,
    search: ConvAlgorithmSearch,
) -> candle_core::Result<Vec<Candidate>> {
    let (x, y, w, conv) = (plan.x.0, plan.y.0, plan.w.0, plan.conv.0);
    let timed = search == ConvAlgorithmSearch::Benchmark;
    match direction {
        Direction::Forward => {
            let count = sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as usize;
            let n = count as std::ffi::c_int;
            ranked(
                count,
                |returned, perf| {
                    // SAFETY: the handle and descriptors are alive, `perf` holds `n` entries. The
                    // timed search allocates its own buffers and synchronises the handle's stream.
                    unsafe {
                        if timed {
                            sys::cudnnFindConvolutionForwardAlgorithm(handle, x, w, conv, y, n, returned, perf)
                        } else {
                            sys::cudnnGetConvolutionForwardAlgorithm_v7(handle, x, w, conv, y, n, returned, perf)
                        }
                    }
                },
                |p: &sys::cudnnConvolutionFwdAlgoPerf_t| Candidate {
                    algorithm: Algorithm::Forward(p.algo),
                    status: p.status,
                    determinism: p.determinism,
                    math: p.mathType,
                },
            )
        }
        Direction::BackwardData => {
            let count = sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT as usize;
            let n = count as std::ffi::c_int;
            ranked(
                count,
                |returned, perf| {
                    // SAFETY: as for the forward direction.
                    unsafe {
                        if timed {
                            sys::cudnnFindConvolutionBackwardDataAlgorithm(handle, w, y, conv, x, n, returned, perf)
                        } else {
                            sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(handle, w, y, conv, x, n, returned, perf)
                        }
                    }
                },
                |p: &sys::cudnnConvolutionBwdDataAlgoPerf_t| Candidate {
                    algorithm: Algorithm::BackwardData(p.algo),
                    status: p.status,
                    determinism: p.determinism,
                    math: p.mathType,
                },
            )
        }
        Direction::BackwardFilter => {
            let count = sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT as usize;
            let n = count as std::ffi::c_int;
            ranked(
                count,
                |returned, perf| {
                    // SAFETY: as for the forward direction.
                    unsafe {
                        if timed {
                            sys::cudnnFindConvolutionBackwardFilterAlgorithm(handle, x, y, conv, w, n, returned, perf)
                        } else {
                            sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(handle, x, y, conv, w, n, returned, perf)
                        }
                    }
                },
                |p: &sys::cudnnConvolutionBwdFilterAlgoPerf_t| Candidate {
                    algorithm: Algorithm::BackwardFilter(p.algo),
                    status: p.status,
                    determinism: p.determinism,
                    math: p.mathType,
                },
            )
        }
    }
}

/// The workspace the algorithm needs under the descriptor's current math type.
fn workspace_size(handle: sys::cudnnHandle_t, plan: &Plan, algorithm: Algorithm) -> candle_core::Result<usize> {
    let (x, y, w, conv) = (plan.x.0, plan.y.0, plan.w.0, plan.conv.0);
    // SAFETY: the handle and descriptors are alive; the algorithm came from cuDNN's own list for
    // this direction and these descriptors.
    let size = unsafe {
        match algorithm {
            Algorithm::Forward(a) => cudnn::get_convolution_forward_workspace_size(handle, x, w, conv, y, a),
            Algorithm::BackwardData(a) => cudnn::get_convolution_backward_data_workspace_size(handle, w, y, conv, x, a),
            Algorithm::BackwardFilter(a) => cudnn::get_convolution_backward_filter_workspace_size(handle, x, y, conv, w, a),
        }
    };
    size.map_err(cudnn_error)
}

impl Plan {
    fn new(key: &PlanKey) -> candle_core::Result<Self> {
        let data = data_type(key.dtype)?;
        let g = key.geometry;
        let int = |dims: [usize; 4]| -> candle_core::Result<[std::ffi::c_int; 4]> {
            let mut out = [0; 4];
            for (o, d) in out.iter_mut().zip(dims) {
                *o = std::ffi::c_int::try_from(d)
                    .map_err(|_| candle_core::Error::Msg(format!("cuDNN convolution: {d} exceeds cuDNN's int")))?;
            }
            Ok(out)
        };
        let conv = ConvDescriptor(cudnn::create_convolution_descriptor().map_err(cudnn_error)?);
        let [padding, stride, groups] = [g.padding, g.stride, g.groups].map(|v| v as std::ffi::c_int);
        // SAFETY: the descriptor was just created. f16/bf16 data accumulate in f32, as PyTorch's
        // cuDNN convolutions do.
        unsafe {
            cudnn::set_convolution2d_descriptor(
                conv.0,
                padding,
                padding,
                stride,
                stride,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )
            .map_err(cudnn_error)?;
            cudnn::set_convolution_group_count(conv.0, groups).map_err(cudnn_error)?;
        }
        Ok(Plan {
            x: TensorDescriptor::new(data, int(g.x_dims())?)?,
            y: TensorDescriptor::new(data, int(g.y_dims())?)?,
            w: FilterDescriptor::new(data, int(g.w_dims())?)?,
            conv,
            choices: HashMap::new(),
        })
    }
}

fn data_type(dtype: DType) -> candle_core::Result<sys::cudnnDataType_t> {
    Ok(match dtype {
        DType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        DType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
        DType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        other => candle_core::bail!("cuDNN convolution: {other:?} is not convolved here (f32, f16 and bf16 are)"),
    })
}

struct Handle(sys::cudnnHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by `create_handle` and destroyed only here. An error while a thread
        // exits has nowhere to go.
        let _ = unsafe { cudnn::destroy_handle(self.0) };
    }
}

struct TensorDescriptor(sys::cudnnTensorDescriptor_t);

impl TensorDescriptor {
    fn new(data: sys::cudnnDataType_t, dims: [std::ffi::c_int; 4]) -> candle_core::Result<Self> {
        let descriptor = TensorDescriptor(cudnn::create_tensor_descriptor().map_err(cudnn_error)?);
        // SAFETY: the descriptor was just created.
        unsafe { cudnn::set_tensor4d_descriptor(descriptor.0, sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, data, dims) }
            .map_err(cudnn_error)?;
        Ok(descriptor)
    }
}

impl Drop for TensorDescriptor {
    fn drop(&mut self) {
        // SAFETY: created by `create_tensor_descriptor` and destroyed only here.
        let _ = unsafe { cudnn::destroy_tensor_descriptor(self.0) };
    }
}

struct FilterDescriptor(sys::cudnnFilterDescriptor_t);

impl FilterDescriptor {
    fn new(data: sys::cudnnDataType_t, dims: [std::ffi::c_int; 4]) -> candle_core::Result<Self> {
        let descriptor = FilterDescriptor(cudnn::create_filter_descriptor().map_err(cudnn_error)?);
        // SAFETY: the descriptor was just created.
        unsafe { cudnn::set_filter4d_descriptor(descriptor.0, data, sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, dims) }
            .map_err(cudnn_error)?;
        Ok(descriptor)
    }
}

impl Drop for FilterDescriptor {
    fn drop(&mut self) {
        // SAFETY: created by `create_filter_descriptor` and destroyed only here.
        let _ = unsafe { cudnn::destroy_filter_descriptor(self.0) };
    }
}

struct ConvDescriptor(sys::cudnnConvolutionDescriptor_t);

impl Drop for ConvDescriptor {
    fn drop(&mut self) {
        // SAFETY: created by `create_convolution_descriptor` and destroyed only here.
        let _ = unsafe { cudnn::destroy_convolution_descriptor(self.0) };
    }
}

/// A fresh, uninitialised output of `len` elements of `dtype` (cuDNN writes every element:
/// beta is 0).
fn allocate(stream: &Arc<CudaStream>, device: &CudaDevice, dtype: DType, len: usize) -> candle_core::Result<CudaStorage> {
    // SAFETY: the convolution that follows writes all `len` elements before anything reads them.
    let storage = unsafe {
        match dtype {
            DType::F32 => {
                CudaStorage::wrap_cuda_slice(stream.alloc::<f32>(len).map_err(driver_error("cuDNN convolution"))?, device.clone())
            }
            DType::F16 => {
                CudaStorage::wrap_cuda_slice(stream.alloc::<half::f16>(len).map_err(driver_error("cuDNN convolution"))?, device.clone())
            }
            DType::BF16 => {
                CudaStorage::wrap_cuda_slice(stream.alloc::<half::bf16>(len).map_err(driver_error("cuDNN convolution"))?, device.clone())
            }
            other => candle_core::bail!("cuDNN convolution: {other:?} is not convolved here"),
        }
    };
    Ok(storage)
}

/// The operand's device address, checked contiguous and as long as its shape.
fn read_pointer<'a>(storage: &'a CudaStorage, layout: &Layout, stream: &'a CudaStream) -> candle_core::Result<(u64, SyncOnDrop<'a>)> {
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("cuDNN convolution: an operand is not contiguous") };
    Ok(match &storage.slice {
        CudaStorageSlice::F32(s) => s.slice(start..end).view_ptr(stream),
        CudaStorageSlice::F16(s) => s.slice(start..end).view_ptr(stream),
        CudaStorageSlice::BF16(s) => s.slice(start..end).view_ptr(stream),
        _ => candle_core::bail!("cuDNN convolution: an operand of {:?}", storage.dtype()),
    })
}

fn write_pointer<'a>(storage: &'a mut CudaStorage, stream: &'a CudaStream) -> candle_core::Result<(u64, SyncOnDrop<'a>)> {
    Ok(match &mut storage.slice {
        CudaStorageSlice::F32(s) => s.device_ptr_mut(stream),
        CudaStorageSlice::F16(s) => s.device_ptr_mut(stream),
        CudaStorageSlice::BF16(s) => s.device_ptr_mut(stream),
        _ => candle_core::bail!("cuDNN convolution: an output of another dtype"),
    })
}

fn cudnn_error(error: CudnnError) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuDNN: {error:?}"))
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them (a CUDA build's tests need one).
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use candle_core::{Device, Var};

    use super::*;
    use crate::gpu_settings::set_gpu_settings;
    use crate::test_tensors::{NormalTensors, gpu, max_abs};

    /// (groups, 0 for depthwise; batch, channels, out channels, kernel, stride, padding, height,
    /// width): a stem whose height and width leave different remainders, 1x1 convolutions with
    /// and without stride, 3x3 ones, grouped and depthwise ones, and a ViT patch embedding.
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize, usize);

    const SHAPES: [Case; 10] = [
        (1, 2, 3, 8, 7, 2, 3, 13, 10),
        (1, 3, 16, 8, 1, 1, 0, 9, 9),
        (1, 2, 8, 16, 1, 2, 0, 9, 8),
        (1, 2, 8, 8, 3, 1, 1, 11, 7),
        (1, 2, 8, 12, 3, 2, 1, 10, 9),
        (4, 2, 8, 12, 3, 1, 1, 9, 10),
        (3, 2, 6, 6, 3, 2, 1, 7, 7),
        (0, 2, 8, 8, 3, 1, 1, 9, 7),
        (0, 2, 6, 6, 5, 2, 2, 11, 10),
        (1, 2, 3, 6, 16, 16, 0, 32, 32),
    ];

    fn convolve(groups: usize, x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Tensor {
        match groups {
            0 => crate::depthwise_conv2d(x, w, stride, padding),
            1 => crate::conv2d(x, w, None, stride, padding),
            g => crate::grouped_conv2d(x, w, g, stride, padding),
        }
        .unwrap()
    }

    /// The forward pass and both gradients (of sum(y * upstream)) on `device`, back on the CPU.
    fn outcome(device: &Device, shape: Case, seed: u64, dtype: DType) -> [Tensor; 3] {
        let (groups, batch, channels, out, kernel, stride, padding, height, width) = shape;
        let mut random = NormalTensors::new(seed);
        let group_channels = channels.checked_div(groups).unwrap_or(1);
        let x = random.draw(0.0, 1.0, (batch, channels, height, width));
        let w = random.draw(0.0, 0.5, (out, group_channels, kernel, kernel));
        let x = Var::from_tensor(&x.to_dtype(dtype).unwrap().to_device(device).unwrap()).unwrap();
        let w = Var::from_tensor(&w.to_dtype(dtype).unwrap().to_device(device).unwrap()).unwrap();
        let y = convolve(groups, x.as_tensor(), w.as_tensor(), stride, padding);
        let upstream = random.draw(0.0, 1.0, y.dims()).to_dtype(dtype).unwrap().to_device(device).unwrap();
        let grads = (&y * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let back = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
        let gradient = |v: &Var, what: &str| back(grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no {what} gradient")));
        [back(&y), gradient(&x, "input"), gradient(&w, "weight")]
    }

    fn relative_error(expected: &Tensor, actual: &Tensor) -> f32 {
        assert_eq!(expected.dims(), actual.dims());
        max_abs((expected - actual).unwrap()) / max_abs(expected.clone()).max(1.0)
    }

    /// Forward pass, input and weight gradients on the GPU against the CPU kernels (im2col + GEMM,
    /// the direct depthwise kernel: another construction of the same sums), in each setting: f32
    /// with heuristic and with timed algorithm choice to the CPU's tolerance, with
    /// non-deterministic algorithms admitted too, TF32 to the one measured here; the default
    /// f32 path twice, to the bit.
    #[test]
    fn cudnn_convolutions_match_the_cpu_kernels_in_every_setting() {
        let gpu = gpu();
        let settings = [
            (GpuSettings::default(), 1e-5),
            (GpuSettings { conv_algorithms: ConvAlgorithmSearch::Benchmark, ..GpuSettings::default() }, 1e-5),
            (GpuSettings { conv_nondeterministic: true, ..GpuSettings::default() }, 1e-5),
            (GpuSettings { conv_precision: ConvPrecision::Tf32, ..GpuSettings::default() }, 5e-3),
        ];
        for (index, shape) in SHAPES.into_iter().enumerate() {
            let truth = outcome(&Device::Cpu, shape, index as u64, DType::F32);
            for (setting, tolerance) in settings {
                set_gpu_settings(setting);
                let ours = outcome(&gpu, shape, index as u64, DType::F32);
                for (what, expected, actual) in
                    [("forward", &truth[0], &ours[0]), ("input gradient", &truth[1], &ours[1]), ("weight gradient", &truth[2], &ours[2])]
                {
                    let error = relative_error(expected, actual);
                    eprintln!("{shape:?} {setting:?} {what}: relative error {error:.2e}");
                    assert!(error < tolerance, "{shape:?} {setting:?} {what}: {error} (tolerance {tolerance})");
                }
            }
            set_gpu_settings(GpuSettings::default());
            let [a, b] = [0, 1].map(|_| outcome(&gpu, shape, index as u64, DType::F32));
            for (first, second) in a.iter().zip(&b) {
                assert_eq!(max_abs((first - second).unwrap()), 0.0, "{shape:?}: two runs differ");
            }
        }
    }

    /// f16 and bf16 data (extraction with `--dtype`) within their rounding of the f32 truth.
    #[test]
    fn half_precision_convolutions_stay_within_their_rounding() {
        let gpu = gpu();
        for (index, shape) in SHAPES.into_iter().enumerate() {
            let truth = outcome(&Device::Cpu, shape, index as u64, DType::F32);
            for (dtype, tolerance) in [(DType::F16, 1e-2), (DType::BF16, 5e-2)] {
                let ours = outcome(&gpu, shape, index as u64, dtype);
                let error = relative_error(&truth[0], &ours[0]);
                eprintln!("{shape:?} {dtype:?} forward: relative error {error:.2e}");
                assert!(error < tolerance, "{shape:?} {dtype:?}: {error}");
            }
        }
    }

    #[test]
    fn the_memory_high_water_mark_counts_what_tensors_hold() {
        let gpu = gpu();
        crate::prepare_cuda_device(&gpu).unwrap();
        crate::reset_cuda_memory_high_water(&gpu).unwrap();
        let bytes = 64 << 20;
        let t = Tensor::zeros(bytes / 4, DType::F32, &gpu).unwrap();
        gpu.synchronize().unwrap();
        let high = crate::cuda_memory_high_water(&gpu).unwrap().unwrap();
        assert!(high >= bytes as u64, "{high} bytes after a {bytes}-byte tensor");
        drop(t);
        assert_eq!(crate::cuda_memory_high_water(&Device::Cpu).unwrap(), None);
    }
}
