//! Attention of f32 CUDA tensors as one graph node, where candle's composition records a dozen,
//! four of them (batch, heads, tokens, tokens) score tensors kept until the backward pass and
//! each given a zero-filled gradient that is then added into: for ViT-S at batch 128 that is
//! 119 MB per score tensor, about 0.8 GB per block.
//!
//! The forward pass runs on the projection's storage, so the node holds nothing but the
//! projection: q, k and v split into head-major blocks by one kernel of our own (candle's
//! strided copy took 137 us per 39 MB block, five times the memory's time, and attention made
//! nine such copies per block and step), cuBLAS products (candle's, reading k and v transposed in
//! place), the scale and softmax as one kernel, one warp per row, and the heads merged back into
//! rows by one kernel. The backward pass recomputes the weights P (one product and one softmax,
//! as PyTorch's memory-efficient attention recomputes them) and takes
//! dS = scale P (dP - rowsum(P dP)) in one kernel, so the scale needs no pass of its own either.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

use crate::cuda_input::{candle_requested, driver_error, input_view};
use crate::nvrtc::NvrtcModule;

/// f32 on a CUDA device; `MEDXFER_CUDA_ATTENTION=candle` keeps candle's composition, to measure.
pub(super) fn applies(qkv: &Tensor) -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    !candle_requested(&CANDLE, "MEDXFER_CUDA_ATTENTION") && qkv.device().is_cuda() && qkv.dtype() == DType::F32
}

const SOURCE: &str = r#"
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Rows of parts x heads x head_dim values (batch x tokens of them) into (parts, batch, heads,
// tokens, head_dim): one block per row, each thread a value at a time (reads coalesced along
// the row, writes along each head's head_dim).
extern "C" __global__ void split_heads(const float* __restrict__ src, float* __restrict__ dst,
                                       int batch, int tokens, int parts, int heads, int head_dim) {
    int row = blockIdx.x;
    int b = row / tokens, n = row - b * tokens;
    int width = parts * heads * head_dim;
    const float* s = src + (size_t)row * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        int ph = j / head_dim, e = j - ph * head_dim;
        int p = ph / heads, h = ph - p * heads;
        dst[((((size_t)p * batch + b) * heads + h) * tokens + n) * head_dim + e] = s[j];
    }
}

// The inverse: part p of each row from source p (a, b or c), each (batch, heads, tokens, head_dim).
extern "C" __global__ void merge_heads(const float* __restrict__ a, const float* __restrict__ b,
                                       const float* __restrict__ c, float* __restrict__ dst,
                                       int batch, int tokens, int parts, int heads, int head_dim) {
    int row = blockIdx.x;
    int image = row / tokens, n = row - image * tokens;
    int width = parts * heads * head_dim;
    float* d = dst + (size_t)row * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        int ph = j / head_dim, e = j - ph * head_dim;
        int p = ph / heads, h = ph - p * heads;
        const float* source = p == 0 ? a : (p == 1 ? b : c);
        d[j] = source[(((size_t)image * heads + h) * tokens + n) * head_dim + e];
    }
}

// p = softmax(scale s) over each row, one warp per row.
extern "C" __global__ void softmax_scaled(const float* __restrict__ s, float* __restrict__ p,
                                          int rows, int width, float scale) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    int lane = threadIdx.x & 31;
    const float* sr = s + (size_t)row * width;
    float* pr = p + (size_t)row * width;
    float max = __int_as_float(0xff800000);
    for (int j = lane; j < width; j += 32) max = fmaxf(max, sr[j] * scale);
    max = warp_max(max);
    float sum = 0.0f;
    for (int j = lane; j < width; j += 32) { float e = expf(sr[j] * scale - max); pr[j] = e; sum += e; }
    float inverse = 1.0f / warp_sum(sum);
    for (int j = lane; j < width; j += 32) pr[j] *= inverse;
}

// p = softmax(scale s + bias) over each row, one warp per row, for Swin's windows: the rows are
// (entry, head, token) of square scores, and entry e's head h adds row (h, token) of bias block
// e % groups, each block heads x width x width values.
extern "C" __global__ void softmax_scaled_biased(const float* __restrict__ s, const float* __restrict__ bias,
                                                 float* __restrict__ p, int rows, int width, float scale,
                                                 int heads, int groups) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    int lane = threadIdx.x & 31;
    int entry_rows = heads * width;
    int entry = row / entry_rows, within = row - entry * entry_rows;
    const float* sr = s + (size_t)row * width;
    const float* br = bias + ((size_t)(entry % groups) * entry_rows + within) * width;
    float* pr = p + (size_t)row * width;
    float max = __int_as_float(0xff800000);
    for (int j = lane; j < width; j += 32) max = fmaxf(max, sr[j] * scale + br[j]);
    max = warp_max(max);
    float sum = 0.0f;
    for (int j = lane; j < width; j += 32) { float e = expf(sr[j] * scale + br[j] - max); pr[j] = e; sum += e; }
    float inverse = 1.0f / warp_sum(sum);
    for (int j = lane; j < width; j += 32) pr[j] *= inverse;
}

// The bias's gradient from ds = scale dS (entries x block values, block = heads x tokens x
// tokens): each of the groups x block values the sum over its group's entries (g, g + groups,
// ...) of dS, in entry order, in f64; a thread per value, reading along the block.
extern "C" __global__ void bias_gradient(const float* __restrict__ ds, float* __restrict__ out,
                                         int images, int groups, int block, double inverse_scale) {
    size_t n = (size_t)groups * block;
    for (size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x; o < n; o += (size_t)gridDim.x * blockDim.x) {
        size_t group = o / block, rest = o - group * block;
        double sum = 0.0;
        for (int image = 0; image < images; ++image) sum += (double)ds[((size_t)image * groups + group) * block + rest];
        out[o] = (float)(sum * inverse_scale);
    }
}

// ds = scale p (dp - sum_j p_j dp_j) over each row, one warp per row.
extern "C" __global__ void softmax_scaled_backward(const float* __restrict__ p, const float* __restrict__ dp,
                                                   float* __restrict__ ds, int rows, int width, float scale) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    int lane = threadIdx.x & 31;
    size_t start = (size_t)row * width;
    float dot = 0.0f;
    for (int j = lane; j < width; j += 32) dot += p[start + j] * dp[start + j];
    dot = warp_sum(dot);
    for (int j = lane; j < width; j += 32) ds[start + j] = scale * p[start + j] * (dp[start + j] - dot);
}
"#;

static KERNELS: NvrtcModule = NvrtcModule::new("medxfer_attention", SOURCE);

/// Rows per block of the row kernels: one warp each.
const WARPS: u32 = 8;

/// Attention over an f32 CUDA projection (checked by the caller), one graph node; the same
/// op, recording nothing, where the projection tracks no gradient (extraction, validation).
pub(super) fn attention(qkv: &Tensor, num_heads: usize, scale: f64) -> candle_core::Result<Tensor> {
    let qkv = qkv.contiguous()?;
    let op = Attention { num_heads, scale };
    if qkv.track_op() { qkv.apply_op1(op) } else { qkv.apply_op1_no_bwd(&op) }
}

/// Attention with an f32 CUDA bias (groups, heads, tokens, tokens) on the scaled scores, shapes
/// checked by the caller (`super::attention_with_bias`): one graph node of the projection and
/// the bias, as [`attention`]. candle's composition kept four (entries, heads, tokens, tokens)
/// tensors per block until the backward pass: for Swin-T at batch 128, 236 MB each in every one
/// of its twelve blocks.
pub(super) fn attention_with_bias(qkv: &Tensor, num_heads: usize, scale: f64, bias: &Tensor) -> candle_core::Result<Tensor> {
    let (qkv, bias) = (qkv.contiguous()?, bias.contiguous()?);
    let op = Attention { num_heads, scale };
    if qkv.track_op() || bias.track_op() { qkv.apply_op2(&bias, op) } else { qkv.apply_op2_no_bwd(&bias, &op) }
}

/// The attention node, of the projection alone ([`CustomOp1`]) or of the projection and a bias
/// on the scores ([`CustomOp2`]): the forward pass on the projection's storage, so the node
/// holds its operands and nothing else (before, the attention was computed as tensors and the
/// node held that result beside its own copy of it until the backward pass: one (batch, tokens,
/// dim) tensor per block, 39 MB at ViT-S's batch of 128).
struct Attention {
    num_heads: usize,
    scale: f64,
}

impl Attention {
    /// softmax(q k' scale [+ bias]) v per head: q, k and v split into head-major blocks,
    /// cuBLAS products with the layouts candle's `Tensor::matmul` passes for `q.matmul(&k.t())`
    /// and `p.matmul(&v)` (the same calls, so the same bits), the heads merged back into rows.
    fn forward(
        &self,
        qkv: &CudaStorage,
        layout: &Layout,
        bias: Option<(&CudaStorage, &Layout)>,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (heads, shape) = SplitHeads { num_heads: self.num_heads, parts: 3 }.cuda_fwd(qkv, layout)?;
        let (_, batch, num_heads, tokens, head_dim) = shape.dims5()?;
        let block = (batch, num_heads, tokens, head_dim);
        let part = batch * num_heads * tokens * head_dim;
        let q = Layout::contiguous(block);
        let k_t = Layout::contiguous_with_offset(block, part).transpose(2, 3)?;
        let v = Layout::contiguous_with_offset(block, 2 * part);
        let rows = Layout::contiguous((batch, num_heads, tokens, tokens));
        let scores = heads.matmul(&heads, (batch * num_heads, tokens, tokens, head_dim), &q, &k_t)?;
        let softmax = ScaledSoftmax { scale: self.scale };
        let (weights, _) = match bias {
            None => CustomOp1::cuda_fwd(&softmax, &scores, &rows)?,
            Some((bias, bias_layout)) => CustomOp2::cuda_fwd(&softmax, &scores, &rows, bias, bias_layout)?,
        };
        drop(scores);
        let attended = weights.matmul(&heads, (batch * num_heads, tokens, head_dim, tokens), &rows, &v)?;
        MergeHeads.merge(&[(&attended, &Layout::contiguous(block))])
    }

    /// With P the weights and dO the output's gradient per head: dV = P' dO, dP = dO V',
    /// dS = scale P (dP - rowsum(P dP)), dQ = dS K, dK = dS' Q; and with a bias, its gradient:
    /// each group's dS / scale summed over the entries it applies to ([`BiasGradient`]).
    fn gradients(&self, qkv: &Tensor, bias: Option<&Tensor>, grad: &Tensor) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let heads = qkv.detach().apply_op1_no_bwd(&SplitHeads { num_heads: self.num_heads, parts: 3 })?;
        let (q, k, v) = (heads.get(0)?, heads.get(1)?, heads.get(2)?);
        let scores = q.matmul(&k.t()?)?;
        let softmax = ScaledSoftmax { scale: self.scale };
        let p = match bias {
            None => scores.apply_op1_no_bwd(&softmax)?,
            Some(bias) => scores.apply_op2_no_bwd(&bias.detach(), &softmax)?,
        };
        let d_out = grad.contiguous()?.apply_op1_no_bwd(&SplitHeads { num_heads: self.num_heads, parts: 1 })?.get(0)?;
        let dv = p.t()?.matmul(&d_out)?;
        let dp = d_out.matmul(&v.t()?)?;
        let ds = p.apply_op2_no_bwd(&dp, &ScaledSoftmaxBackward { scale: self.scale })?;
        let dq = ds.matmul(&k)?;
        let dk = ds.t()?.matmul(&q)?;
        let d_bias = bias.map(|bias| ds.apply_op1_no_bwd(&BiasGradient { groups: bias.dim(0)?, scale: self.scale })).transpose()?;
        Ok((dq.apply_op3_no_bwd(&dk, &dv, &MergeHeads)?, d_bias))
    }
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "attention-cuda"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::FIRST_OPERAND
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("attention-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, qkv: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.forward(qkv, layout, None)
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.gradients(qkv, None, grad)?.0))
    }
}

impl CustomOp2 for Attention {
    fn name(&self) -> &'static str {
        "attention-with-bias-cuda"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::OPERANDS
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("attention-with-bias-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        qkv: &CudaStorage,
        layout: &Layout,
        bias: &CudaStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.forward(qkv, layout, Some((bias, bias_layout)))
    }

    fn bwd(&self, qkv: &Tensor, bias: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (d_qkv, d_bias) = self.gradients(qkv, Some(bias), grad)?;
        Ok((Some(d_qkv), d_bias))
    }
}

/// (batch, tokens, parts x heads x head_dim) rows into (parts, batch, heads, tokens, head_dim).
struct SplitHeads {
    num_heads: usize,
    parts: usize,
}

impl CustomOp1 for SplitHeads {
    fn name(&self) -> &'static str {
        "split-heads-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("split-heads-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (batch, tokens, width) = layout.shape().dims3()?;
        let head_dim = width / (self.parts * self.num_heads).max(1);
        if head_dim * self.parts * self.num_heads != width {
            candle_core::bail!("attention: rows of {width} do not split into {} parts of {} heads", self.parts, self.num_heads);
        }
        let src = input_view::<f32>(storage, layout, "attention", "the rows")?;
        let shape = Shape::from((self.parts, batch, self.num_heads, tokens, head_dim));
        heads_kernel(
            "split_heads",
            &[&src],
            width * batch * tokens,
            storage.device(),
            shape,
            [batch, tokens, self.parts, self.num_heads, head_dim],
        )
    }
}

/// The inverse of [`SplitHeads`]: one (batch, heads, tokens, head_dim) operand per part, into
/// (batch, tokens, parts x heads x head_dim) rows.
struct MergeHeads;

impl MergeHeads {
    fn merge(&self, parts: &[(&CudaStorage, &Layout)]) -> candle_core::Result<(CudaStorage, Shape)> {
        let (storage, layout) = parts[0];
        let (batch, heads, tokens, head_dim) = layout.shape().dims4()?;
        if parts.iter().any(|(_, l)| l.shape() != layout.shape()) {
            candle_core::bail!("attention: heads to merge differ in shape");
        }
        let views =
            parts.iter().map(|(s, l)| input_view::<f32>(s, l, "attention", "the heads")).collect::<candle_core::Result<Vec<_>>>()?;
        let sources: Vec<_> = (0..3).map(|p| &views[p.min(views.len() - 1)]).collect();
        let shape = Shape::from((batch, tokens, parts.len() * heads * head_dim));
        heads_kernel(
            "merge_heads",
            &sources,
            layout.shape().elem_count(),
            storage.device(),
            shape,
            [batch, tokens, parts.len(), heads, head_dim],
        )
    }
}

impl CustomOp1 for MergeHeads {
    fn name(&self) -> &'static str {
        "merge-heads-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("merge-heads-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.merge(&[(storage, layout)])
    }
}

impl CustomOp3 for MergeHeads {
    fn name(&self) -> &'static str {
        "merge-heads-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("merge-heads-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.merge(&[(s1, l1), (s2, l2), (s3, l3)])
    }
}

/// Launches `split_heads` or `merge_heads` (`sources`: its one or three inputs, `source_len`
/// values each) into a new output of `shape`, one block per (image, token) row; `dims` is
/// (batch, tokens, parts, heads, head_dim).
fn heads_kernel(
    function: &str,
    sources: &[&cudarc::driver::CudaView<'_, f32>],
    source_len: usize,
    device: &CudaDevice,
    shape: Shape,
    dims: [usize; 5],
) -> candle_core::Result<(CudaStorage, Shape)> {
    let stream = device.cuda_stream();
    let count = shape.elem_count();
    let [batch, tokens, parts, heads, head_dim] = dims;
    if sources.iter().any(|s| s.len() != source_len)
        || count != parts * batch * tokens * heads * head_dim
        || batch * tokens > i32::MAX as usize
        || parts * heads * head_dim > i32::MAX as usize
    {
        candle_core::bail!("attention: {function} of {:?} values into {shape:?}", sources.iter().map(|s| s.len()).collect::<Vec<_>>());
    }
    // SAFETY: the kernel writes every element (each row's every value) before anything reads it.
    let mut out = unsafe { device.alloc::<f32>(count) }?;
    let kernel = KERNELS.function(device, function)?;
    let [b, n, p, h, e] = dims.map(|d| d as i32);
    let mut launch = stream.launch_builder(&kernel);
    for source in sources {
        launch.arg(*source);
    }
    launch.arg(&mut out).arg(&b).arg(&n).arg(&p).arg(&h).arg(&e);
    let grid = LaunchConfig { grid_dim: ((batch * tokens).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the parameters match the kernel's (its sources, the output, the five sizes); the
    // sources hold batch·tokens·heads·head_dim values each (split: parts times that), the
    // output parts·batch·tokens·heads·head_dim; each thread writes its own values.
    unsafe { launch.launch(grid) }.map_err(driver_error("attention kernel"))?;
    Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), shape))
}

/// Rows and width of a contiguous f32 operand, checked against the kernels' 32-bit indices.
fn rows_and_width(layout: &Layout) -> candle_core::Result<(usize, usize)> {
    let width = layout.dims().last().copied().unwrap_or(1);
    let rows = layout.shape().elem_count() / width.max(1);
    if width == 0 || rows > i32::MAX as usize || width > i32::MAX as usize {
        candle_core::bail!("attention: scores of shape {:?}", layout.shape());
    }
    Ok((rows, width))
}

/// Launches the row kernel `function` over `inputs` (each rows x width f32 values) into a new
/// output of the same shape.
fn rows_kernel(function: &str, inputs: &[(&CudaStorage, &Layout, &str)], scale: f64) -> candle_core::Result<(CudaStorage, Shape)> {
    let (storage, layout, _) = inputs[0];
    let device = storage.device();
    let stream = device.cuda_stream();
    let (rows, width) = rows_and_width(layout)?;
    let views = inputs.iter().map(|(s, l, what)| input_view::<f32>(s, l, "attention", what)).collect::<candle_core::Result<Vec<_>>>()?;
    if views.iter().any(|v| v.len() != rows * width) {
        candle_core::bail!(
            "attention: operands of {:?} values for scores of shape {:?}",
            views.iter().map(|v| v.len()).collect::<Vec<_>>(),
            layout.shape()
        );
    }
    // SAFETY: the kernel writes every element before anything reads it.
    let mut out = unsafe { device.alloc::<f32>(rows * width) }?;
    let kernel = KERNELS.function(device, function)?;
    let (r, c, s) = (rows as i32, width as i32, scale as f32);
    let mut launch = stream.launch_builder(&kernel);
    for view in &views {
        launch.arg(view);
    }
    launch.arg(&mut out).arg(&r).arg(&c).arg(&s);
    let grid = LaunchConfig { grid_dim: ((rows as u32).div_ceil(WARPS), 1, 1), block_dim: (32 * WARPS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the parameters match the kernel's (its inputs, the output, rows, width, scale),
    // each operand rows·width f32 values; each warp reads and writes its own row.
    unsafe { launch.launch(grid) }.map_err(driver_error("attention kernel"))?;
    Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), layout.shape().clone()))
}

/// softmax(scale s) over the last dimension.
struct ScaledSoftmax {
    scale: f64,
}

impl CustomOp1 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "scaled-softmax-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("scaled-softmax-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, scores: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        rows_kernel("softmax_scaled", &[(scores, layout, "the scores")], self.scale)
    }
}

/// softmax(scale s + bias) over the last dimension of (entries, heads, tokens, tokens) scores,
/// with a (groups, heads, tokens, tokens) bias whose group g applies to entries g, g + groups, ...
impl CustomOp2 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "scaled-softmax-biased-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("scaled-softmax-biased-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        scores: &CudaStorage,
        layout: &Layout,
        bias: &CudaStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (entries, heads, tokens, width) = layout.shape().dims4()?;
        let (groups, bias_heads, bias_rows, bias_width) = bias_layout.shape().dims4()?;
        let (rows, _) = rows_and_width(layout)?;
        if (bias_heads, bias_rows, bias_width) != (heads, tokens, width) || tokens != width || groups == 0 || entries % groups != 0 {
            candle_core::bail!("attention: a bias of shape {:?} for scores of shape {:?}", bias_layout.shape(), layout.shape());
        }
        let device = scores.device();
        let s = input_view::<f32>(scores, layout, "attention", "the scores")?;
        let b = input_view::<f32>(bias, bias_layout, "attention", "the bias")?;
        // SAFETY: the kernel writes every element before anything reads it.
        let mut out = unsafe { device.alloc::<f32>(rows * width) }?;
        let kernel = KERNELS.function(device, "softmax_scaled_biased")?;
        let (r, c, scale, h, g) = (rows as i32, width as i32, self.scale as f32, heads as i32, groups as i32);
        let stream = device.cuda_stream();
        let mut launch = stream.launch_builder(&kernel);
        launch.arg(&s).arg(&b).arg(&mut out).arg(&r).arg(&c).arg(&scale).arg(&h).arg(&g);
        let grid = LaunchConfig { grid_dim: ((rows as u32).div_ceil(WARPS), 1, 1), block_dim: (32 * WARPS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the parameters match the kernel's; the scores and the output hold rows·width
        // values, the bias groups·heads·width² (checked above, entries a multiple of groups);
        // each warp reads its row and its bias row and writes its own output row.
        unsafe { launch.launch(grid) }.map_err(driver_error("attention kernel"))?;
        Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), layout.shape().clone()))
    }
}

/// The bias's gradient (groups, heads, tokens, tokens) from ds = scale dS of shape (entries,
/// heads, tokens, tokens): each group's dS summed over its entries, in f64.
struct BiasGradient {
    groups: usize,
    scale: f64,
}

impl CustomOp1 for BiasGradient {
    fn name(&self) -> &'static str {
        "attention-bias-gradient-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("attention-bias-gradient-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, ds: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (entries, heads, tokens, width) = layout.shape().dims4()?;
        let block = heads * tokens * width;
        let count = self.groups * block;
        if self.groups == 0 || entries % self.groups != 0 || entries > i32::MAX as usize || count > i32::MAX as usize {
            candle_core::bail!("attention: a bias gradient of {} groups for scores of shape {:?}", self.groups, layout.shape());
        }
        let device = ds.device();
        let source = input_view::<f32>(ds, layout, "attention", "the scores' gradient")?;
        // SAFETY: the kernel writes every element before anything reads it.
        let mut out = unsafe { device.alloc::<f32>(count) }?;
        let kernel = KERNELS.function(device, "bias_gradient")?;
        let (images, groups, block_len, inverse_scale) =
            ((entries / self.groups) as i32, self.groups as i32, block as i32, 1.0 / self.scale);
        let stream = device.cuda_stream();
        let mut launch = stream.launch_builder(&kernel);
        launch.arg(&source).arg(&mut out).arg(&images).arg(&groups).arg(&block_len).arg(&inverse_scale);
        let grid =
            LaunchConfig { grid_dim: ((count as u32).div_ceil(256).clamp(1, 65_535), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the parameters match the kernel's; ds holds entries·block values (entries =
        // images·groups), the output groups·block; each thread writes its own values.
        unsafe { launch.launch(grid) }.map_err(driver_error("attention kernel"))?;
        Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), Shape::from((self.groups, heads, tokens, width))))
    }
}

/// The scores' gradient from the weights P and their gradient dP.
struct ScaledSoftmaxBackward {
    scale: f64,
}

impl CustomOp2 for ScaledSoftmaxBackward {
    fn name(&self) -> &'static str {
        "scaled-softmax-backward-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("scaled-softmax-backward-cuda runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, p: &CudaStorage, pl: &Layout, dp: &CudaStorage, dpl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        rows_kernel("softmax_scaled_backward", &[(p, pl, "the weights"), (dp, dpl, "their gradient")], self.scale)
    }
}

/// These run in CUDA builds only, on the GPU `.ci/gpu` lends them.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use candle_core::{Device, Var};

    use crate::test_tensors::{NormalTensors, max_abs};

    /// Output and the projection's gradient against the CPU kernel, at ViT-S's shape and small
    /// odd ones (one token, one head); twice, to the bit; and without a gradient to record.
    #[test]
    fn the_cuda_op_matches_the_cpu_kernel() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(31);
        for (batch, tokens, heads, head_dim) in [(2usize, 197usize, 6usize, 64usize), (3, 13, 1, 6), (1, 1, 2, 8), (2, 50, 4, 16)] {
            let dim = heads * head_dim;
            let qkv = random.draw(0.0, 1.5, (batch, tokens, 3 * dim));
            let upstream = random.draw(0.0, 1.0, (batch, tokens, dim));
            let scale = (head_dim as f64).powf(-0.5);
            let run = |device: &Device| {
                let x = Var::from_tensor(&qkv.to_device(device).unwrap()).unwrap();
                let y = crate::attention(x.as_tensor(), heads, scale).unwrap();
                let grads = (&y * upstream.to_device(device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let cpu = |t: &candle_core::Tensor| t.to_device(&Device::Cpu).unwrap();
                [cpu(&y), cpu(grads.get(x.as_tensor()).unwrap())]
            };
            let (truth, ours, again) = (run(&Device::Cpu), run(&gpu), run(&gpu));
            let case = format!("batch {batch}, tokens {tokens}, heads {heads}");
            for (what, (expected, actual)) in ["output", "qkv gradient"].iter().zip(truth.iter().zip(&ours)) {
                let error = max_abs((expected - actual).unwrap()) / max_abs(expected.clone()).max(1.0);
                eprintln!("{case} {what}: relative error {error:.2e}");
                assert!(error < 1e-5, "{case} {what}: {error}");
            }
            for (a, b) in ours.iter().zip(&again) {
                assert_eq!(max_abs((a - b).unwrap()), 0.0, "{case}: two runs differ");
            }
            let untracked = crate::attention(&qkv.to_device(&gpu).unwrap(), heads, scale).unwrap().to_device(&Device::Cpu).unwrap();
            assert_eq!(max_abs((untracked - &ours[0]).unwrap()), 0.0, "{case}: the untracked forward pass differs");
        }
    }

    /// With a bias on the scores (Swin's windows): the output and the gradients of the projection
    /// and the bias against the CPU kernel, for one group (the bias alone) and several (a shift
    /// mask's windows), at Swin-T's first stage's windows and a small odd shape; twice, to the
    /// bit; and without a gradient to record.
    #[test]
    fn the_cuda_op_with_a_bias_matches_the_cpu_kernel() {
        let gpu = crate::test_tensors::gpu();
        let mut random = NormalTensors::new(37);
        for (groups, images, tokens, heads, head_dim) in [(4usize, 2usize, 49usize, 3usize, 32usize), (1, 3, 49, 3, 32), (3, 2, 5, 2, 3)] {
            let (batch, dim) = (groups * images, heads * head_dim);
            let qkv = random.draw(0.0, 1.5, (batch, tokens, 3 * dim));
            let bias = random.draw(0.0, 2.0, (groups, heads, tokens, tokens));
            let upstream = random.draw(0.0, 1.0, (batch, tokens, dim));
            let scale = (head_dim as f64).powf(-0.5);
            let run = |device: &Device| {
                let x = Var::from_tensor(&qkv.to_device(device).unwrap()).unwrap();
                let b = Var::from_tensor(&bias.to_device(device).unwrap()).unwrap();
                let y = crate::attention_with_bias(x.as_tensor(), heads, scale, b.as_tensor()).unwrap();
                let grads = (&y * upstream.to_device(device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let cpu = |t: &candle_core::Tensor| t.to_device(&Device::Cpu).unwrap();
                [cpu(&y), cpu(grads.get(x.as_tensor()).unwrap()), cpu(grads.get(b.as_tensor()).unwrap())]
            };
            let (truth, ours, again) = (run(&Device::Cpu), run(&gpu), run(&gpu));
            let case = format!("{groups} groups of {images} images, tokens {tokens}, heads {heads}");
            for (what, (expected, actual)) in ["output", "qkv gradient", "bias gradient"].iter().zip(truth.iter().zip(&ours)) {
                assert_eq!(expected.dims(), actual.dims(), "{case} {what}");
                let error = max_abs((expected - actual).unwrap()) / max_abs(expected.clone()).max(1.0);
                eprintln!("{case} {what}: relative error {error:.2e}");
                assert!(error < 1e-5, "{case} {what}: {error}");
            }
            for (a, b) in ours.iter().zip(&again) {
                assert_eq!(max_abs((a - b).unwrap()), 0.0, "{case}: two runs differ");
            }
            let untracked = crate::attention_with_bias(&qkv.to_device(&gpu).unwrap(), heads, scale, &bias.to_device(&gpu).unwrap())
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap();
            assert_eq!(max_abs((untracked - &ours[0]).unwrap()), 0.0, "{case}: the untracked forward pass differs");
        }
    }
}
