//! Dense convolution (one group) of f32 on the CPU as im2col + GEMM, forward and backward.
//!
//! candle's CPU conv2d lays the unfolded input out as (B, H·W, C·k·k) for the whole batch (a
//! 231 MB copy for a 3x3 conv on 64 channels at 56 px, batch 32), multiplies, then transposes
//! the result back to NCHW; its input gradient is a naive `conv_transpose2d` loop. Here each
//! image is unfolded a tile of output rows at a time into a (C·k·k, rows·OW) block that stays
//! in L2, multiplied by the (O, C·k·k) weight straight into NCHW, and a 1x1 stride-1
//! convolution needs no unfolding at all. The backward pass is two GEMMs per tile (weight
//! gradient, and the unfolded input gradient folded back by col2im). Small images (under
//! `GROUP_BELOW` output pixels: ResNet's last stage) are multiplied several at a time, side by
//! side. Groups of images run in parallel, each GEMM single-threaded; a batch smaller
//! than the thread pool lets the GEMM use the threads instead.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::activation::{Epilogue, FusedActivation};
use crate::parallel_output::{Start, build_in_chunks};

/// Images with fewer output pixels than `GROUP_BELOW` are multiplied several at a time, about
/// `GROUP_PIXELS` columns a GEMM. One 7x7 image of ResNet's last stage gives the forward's GEMM
/// 49 columns against a 4608-deep weight, and the weight gradient's GEMM an inner dimension of
/// 49 for a 9.4 MB product read and written back per image: grouped, that stage's convolution
/// runs 8% faster. At 14x14 the copies in and out cost what the larger GEMMs save.
const GROUP_BELOW: usize = 128;
const GROUP_PIXELS: usize = 512;

/// Everything about one convolution's shape except batch size and channels.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    channels: usize,
    height: usize,
    width: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }
    fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }
    fn out_pixels(&self) -> usize {
        self.out_height() * self.out_width()
    }
    /// Rows of the unfolded input: C·k·k.
    fn patch_len(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }
    fn in_pixels(&self) -> usize {
        self.height * self.width
    }
    /// A 1x1 stride-1 unpadded convolution multiplies the image itself.
    fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// Output columns ox whose input column ox·stride + kx − padding lies in 0..width.
    fn valid_columns(&self, kx: usize) -> Range<usize> {
        let first = self.padding.saturating_sub(kx).div_ceil(self.stride);
        let end = (self.width + self.padding).saturating_sub(kx).div_ceil(self.stride).min(self.out_width());
        first..end.max(first)
    }

    /// Output rows oy among `rows` whose input row oy·stride + ky − padding lies in 0..height.
    fn valid_rows(&self, ky: usize, rows: Range<usize>) -> Range<usize> {
        let first = self.padding.saturating_sub(ky).div_ceil(self.stride).max(rows.start);
        let end = (self.height + self.padding).saturating_sub(ky).div_ceil(self.stride).min(rows.end);
        first..end.max(first)
    }

    /// Output rows per tile. Unfolding a whole image writes C·k·k·OH·OW floats (7 MB for a 3x3
    /// conv on 64 channels at 56 px), which leave the cache before the GEMM reads them back, and
    /// the input gradient's GEMM (inner dimension only O) writes as much for col2im to reread:
    /// memory-bound, the backward pass of ResNet's first stage ran at half the forward's rate.
    /// A tile of whole output rows keeps its unfolded block in L2 between the two; at least
    /// `MIN_TILE_PIXELS` columns keep the GEMM's panels long.
    fn tile_rows(&self) -> usize {
        const TILE_BYTES: usize = 384 * 1024;
        const MIN_TILE_PIXELS: usize = 128;
        let row_bytes = self.patch_len() * self.out_width() * size_of::<f32>();
        (TILE_BYTES / row_bytes).max(MIN_TILE_PIXELS.div_ceil(self.out_width())).clamp(1, self.out_height())
    }

    /// The output-row ranges a GEMM per tile covers: the whole image for a pointwise
    /// convolution, which multiplies the image in place.
    fn tiles(&self) -> impl Iterator<Item = Range<usize>> {
        let (rows, step) = (self.out_height(), if self.is_pointwise() { self.out_height() } else { self.tile_rows() });
        (0..rows).step_by(step).map(move |start| start..(start + step).min(rows))
    }

    /// Floats of the unfolded tile buffer (none for a pointwise convolution).
    fn tile_len(&self) -> usize {
        if self.is_pointwise() { 0 } else { self.patch_len() * self.tile_rows() * self.out_width() }
    }

    /// Contiguous ranges of images, each multiplied as one: a single image (by tiles of rows)
    /// unless it has fewer than `GROUP_BELOW` output pixels, else groups of nearly equal size,
    /// about `GROUP_PIXELS` columns each and the same number for every worker.
    fn image_groups(&self, batch: usize) -> Vec<Range<usize>> {
        let pixels = self.out_pixels().max(1);
        let per_group = if pixels < GROUP_BELOW { GROUP_PIXELS.div_ceil(pixels) } else { 1 };
        let count = if per_group == 1 {
            batch
        } else {
            let threads = rayon::current_num_threads();
            (threads * batch.div_ceil(threads).div_ceil(per_group)).min(batch)
        };
        (0..count).map(|i| i * batch / count..(i + 1) * batch / count).collect()
    }

    /// Floats of the two scratch buffers `groups` need: the unfolded columns, and the
    /// (O, g·OH·OW) product or gradient of a group of several images side by side.
    fn scratch_len(&self, groups: &[Range<usize>], out_channels: usize) -> (usize, usize) {
        match groups.iter().map(|images| images.len()).max() {
            Some(widest) if widest > 1 => {
                let columns = widest * self.out_pixels();
                (self.patch_len() * columns, out_channels * columns)
            }
            _ => (self.tile_len(), 0),
        }
    }

    /// Image `b` (C, H, W) of a batch.
    fn image<'a>(&self, input: &'a [f32], b: usize) -> &'a [f32] {
        let len = self.channels * self.in_pixels();
        &input[b * len..(b + 1) * len]
    }

    /// Calls `visit(row, c, ky, kx, oys, oxs)` for every row (c, ky, kx) of the unfolded input:
    /// `oys` the output rows among `rows` whose input row lies inside the image, `oxs` the output
    /// columns whose input column does (either may be empty). The tap-row walk below and the
    /// padding's zeros share it.
    fn for_each_tap(&self, rows: Range<usize>, mut visit: impl FnMut(usize, usize, usize, usize, Range<usize>, Range<usize>)) {
        let k = self.kernel;
        for c in 0..self.channels {
            for ky in 0..k {
                let valid_rows = self.valid_rows(ky, rows.clone());
                for kx in 0..k {
                    visit((c * k + ky) * k + kx, c, ky, kx, valid_rows.clone(), self.valid_columns(kx));
                }
            }
        }
    }

    /// Calls `visit(row, oy, iy, ox_range, first_ix)` for every row (c, ky, kx) of the unfolded
    /// input and every output row oy in `rows` whose input row iy lies inside the image (oy
    /// counted from `rows.start`); output column ox in `ox_range` reads input column first_ix +
    /// (ox − ox_range.start)·stride. im2col and col2im share this walk, so they are each other's
    /// transpose by construction.
    fn for_each_tap_row(&self, rows: Range<usize>, mut visit: impl FnMut(usize, usize, usize, Range<usize>, usize)) {
        self.for_each_tap(rows.clone(), |row, c, ky, kx, valid_rows, columns| {
            if columns.is_empty() {
                return;
            }
            for oy in valid_rows {
                let iy = oy * self.stride + ky - self.padding;
                let first_ix = columns.start * self.stride + kx - self.padding;
                visit(row, oy - rows.start, c * self.height + iy, columns.clone(), first_ix);
            }
        });
    }

    /// Unfolds output rows `rows` of one image (C, H, W) into the first rows·OW columns of
    /// `columns` (C·k·k rows `stride_rows` apart); padding stays zero.
    fn im2col(&self, image: &[f32], rows: Range<usize>, columns: &mut [f32], stride_rows: usize) {
        let (ow, width, stride) = (self.out_width(), self.width, self.stride);
        if self.padding > 0 {
            self.zero_padding(rows.clone(), columns, stride_rows);
        }
        self.for_each_tap_row(rows, |row, oy, plane_row, ox_range, first_ix| {
            let source = &image[plane_row * width..(plane_row + 1) * width];
            let target = &mut columns[row * stride_rows + oy * ow..row * stride_rows + (oy + 1) * ow];
            copy_strided(&mut target[ox_range], &source[first_ix..], stride);
        });
    }

    /// Zeros where output rows `rows` of the unfolded input read padding: what
    /// `for_each_tap_row` does not visit (rows whose input row is outside the image, and the
    /// columns before and after each visited row's run). Zeroing only these, not the whole tile
    /// before the copies, halves the writes of a padded convolution's unfolding.
    fn zero_padding(&self, rows: Range<usize>, columns: &mut [f32], stride_rows: usize) {
        let ow = self.out_width();
        self.for_each_tap(rows.clone(), |row, _, _, _, valid_rows, valid| {
            let tap = &mut columns[row * stride_rows..][..rows.len() * ow];
            for (oy, out_row) in rows.clone().zip(tap.chunks_exact_mut(ow)) {
                if valid_rows.contains(&oy) && !valid.is_empty() {
                    out_row[..valid.start].fill(0.0);
                    out_row[valid.end..].fill(0.0);
                } else {
                    out_row.fill(0.0);
                }
            }
        });
    }

    /// The (C·k·k, g·rows·OW) matrix a GEMM multiplies for output rows `rows` of images
    /// `images` of the batch `input`, side by side: one pointwise image itself (one tile of all
    /// rows), else the images' im2col in `columns`.
    fn unfold<'a>(&self, input: &'a [f32], images: Range<usize>, rows: Range<usize>, columns: &'a mut [f32]) -> MatRef<'a, f32> {
        let per_image = rows.len() * self.out_width();
        let width = images.len() * per_image;
        if self.is_pointwise() && images.len() == 1 {
            return row_major(self.image(input, images.start), self.channels, per_image);
        }
        for (j, b) in images.enumerate() {
            self.im2col(self.image(input, b), rows.clone(), &mut columns[j * per_image..], width);
        }
        row_major(&columns[..self.patch_len() * width], self.patch_len(), width)
    }

    /// Folds the unfolded gradient of output rows `rows`, the first rows·OW columns of
    /// `columns` (C·k·k rows `stride_rows` apart), back onto one image, adding.
    fn col2im(&self, columns: &[f32], rows: Range<usize>, image: &mut [f32], stride_rows: usize) {
        let (ow, width, stride) = (self.out_width(), self.width, self.stride);
        self.for_each_tap_row(rows, |row, oy, plane_row, ox_range, first_ix| {
            let target = &mut image[plane_row * width..(plane_row + 1) * width];
            let source = &columns[row * stride_rows + oy * ow..row * stride_rows + (oy + 1) * ow];
            add_strided(&mut target[first_ix..], &source[ox_range], stride);
        });
    }
}

/// target[i] = source[i·stride] for every i of `target`. Stride 2 (every downsampling
/// convolution) walks pairs, which the compiler turns into vector shuffles: the element-wise
/// loop was 4% of a ResNet-18 training step, most of it in the stem's unfolding.
fn copy_strided(target: &mut [f32], source: &[f32], stride: usize) {
    match stride {
        1 => target.copy_from_slice(&source[..target.len()]),
        2 => {
            // The last element may have no partner in `source`.
            let pairs = target.len().min(source.len() / 2);
            target.iter_mut().zip(source.chunks_exact(2)).for_each(|(t, pair)| *t = pair[0]);
            if let Some(last) = target.get_mut(pairs) {
                *last = source[2 * pairs];
            }
        }
        _ => target.iter_mut().zip(source.iter().step_by(stride)).for_each(|(t, &s)| *t = s),
    }
}

/// target[i·stride] += source[i] for every i of `source`: the transpose of `copy_strided`.
fn add_strided(target: &mut [f32], source: &[f32], stride: usize) {
    match stride {
        1 => target.iter_mut().zip(source).for_each(|(t, &s)| *t += s),
        2 => {
            let pairs = source.len().min(target.len() / 2);
            target.chunks_exact_mut(2).zip(source).for_each(|(pair, &s)| pair[0] += s);
            if let Some(&last) = source.get(pairs) {
                target[2 * pairs] += last;
            }
        }
        _ => target.iter_mut().step_by(stride).zip(source).for_each(|(t, &s)| *t += s),
    }
}

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    crate::kernel_input::f32_slice(storage, layout, "conv2d", what)
}

/// Images in parallel with single-threaded GEMMs, or one image at a time with a parallel GEMM
/// when the batch is too small to keep the pool busy.
fn split(batch: usize) -> (bool, Par) {
    let threads = rayon::current_num_threads();
    if batch >= threads { (true, Par::Seq) } else { (false, Par::rayon(threads)) }
}

fn row_major(data: &[f32], rows: usize, cols: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(data, rows, cols)
}

fn row_major_mut(data: &mut [f32], rows: usize, cols: usize) -> MatMut<'_, f32> {
    MatMut::from_row_major_slice_mut(data, rows, cols)
}

/// One worker's buffers: the unfolded columns, and the product or gathered gradient of a group
/// of several images.
struct Scratch {
    columns: Vec<f32>,
    planes: Vec<f32>,
}

/// `data` cut into the consecutive parts of each group of images, `per_image` floats an image.
fn split_by_groups<'a>(mut data: &'a mut [f32], groups: &[Range<usize>], per_image: usize) -> Vec<&'a mut [f32]> {
    groups
        .iter()
        .map(|images| {
            let (part, rest) = std::mem::take(&mut data).split_at_mut(images.len() * per_image);
            data = rest;
            part
        })
        .collect()
}

/// Runs `work(group index, part, scratch)` for every group's part of the output, in parallel
/// when `parallel`, with one `Scratch` of (columns, planes) floats per worker.
fn for_each_group(
    parts: &mut [&mut [f32]],
    parallel: bool,
    (columns, planes): (usize, usize),
    work: impl Fn(usize, &mut [f32], &mut Scratch) + Sync + Send,
) {
    let scratch = || Scratch { columns: vec![0f32; columns], planes: vec![0f32; planes] };
    if parallel {
        parts.par_iter_mut().enumerate().for_each_init(scratch, |scratch, (i, part)| work(i, part, scratch));
    } else {
        let mut scratch = scratch();
        parts.iter_mut().enumerate().for_each(|(i, part)| work(i, part, &mut scratch));
    }
}

/// Copies the (O, OH·OW) planes of images `images` of `grad` side by side into `gathered`:
/// the (O, g·OH·OW) matrix of a group's GEMM.
fn gather_planes<'a>(grad: &[f32], images: Range<usize>, out_channels: usize, pixels: usize, gathered: &'a mut [f32]) -> MatRef<'a, f32> {
    let width = images.len() * pixels;
    for (j, b) in images.enumerate() {
        let planes = grad[b * out_channels * pixels..(b + 1) * out_channels * pixels].chunks(pixels);
        for (row, plane) in gathered.chunks_mut(width).zip(planes) {
            row[j * pixels..(j + 1) * pixels].copy_from_slice(plane);
        }
    }
    row_major(&gathered[..out_channels * width], out_channels, width)
}

/// out[b] (O, OH·OW) = weight (O, C·k·k) · im2col(x[b]) (+ bias per output channel, written
/// before the GEMM accumulates onto it: no separate pass over the output).
pub(crate) struct Forward {
    pub(crate) stride: usize,
    pub(crate) padding: usize,
}

impl Forward {
    /// The batch, the output channels and the geometry of input `l1` and weight `l2`.
    fn geometry(&self, l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, Geometry)> {
        let (batch, channels, height, width) = l1.shape().dims4()?;
        let (out_channels, _, kernel, _) = l2.shape().dims4()?;
        Ok((batch, out_channels, Geometry { channels, height, width, kernel, stride: self.stride, padding: self.padding }))
    }

    pub(crate) fn run(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        bias: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run_then(s1, l1, s2, l2, bias, |_, _| {})
    }

    /// [`Self::run`], then `then(first value, part)` on each group of images' part of the output
    /// (`first value` its offset in the output), in the group's task once its products are done.
    pub(crate) fn run_then(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        bias: Option<&[f32]>,
        then: impl Fn(usize, &mut [f32]) + Sync + Send,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, out_channels, g) = self.geometry(l1, l2)?;
        let input = f32_slice(s1, l1, "the input")?;
        let weight = row_major(f32_slice(s2, l2, "the weight")?, out_channels, g.patch_len());
        let (pixels, ow) = (g.out_pixels(), g.out_width());
        if bias.is_some_and(|bias| bias.len() != out_channels) {
            candle_core::bail!("conv2d: a bias of {} values for {out_channels} output channels", bias.map_or(0, <[f32]>::len));
        }
        // Started an image per task: `vec![0f32; n]` zeroed the whole output on one thread, 10%
        // of a ResNet-50 extraction. With a bias, each plane starts as its channel's bias, which
        // a single image's products accumulate onto (zeroing first, then filling, was two
        // passes); several images' products side by side overwrite every value.
        let start = match bias {
            Some(bias) => Start::Planes { values: bias, plane: pixels },
            None => Start::Zeros,
        };
        let mut out = build_in_chunks(batch * out_channels * pixels, out_channels * pixels, start, |_, _| {})?;
        let groups = g.image_groups(batch);
        let mut parts = split_by_groups(&mut out, &groups, out_channels * pixels);
        let (parallel, par) = split(groups.len());
        for_each_group(&mut parts, parallel, g.scratch_len(&groups, out_channels), |i, out, scratch| {
            let images = groups[i].clone();
            let first = images.start * out_channels * pixels;
            if images.len() > 1 {
                // The group's product side by side, then each image's planes (+ bias) in place.
                let width = images.len() * pixels;
                let unfolded = g.unfold(input, images, 0..g.out_height(), &mut scratch.columns);
                let product = &mut scratch.planes[..out_channels * width];
                crate::product::matmul(row_major_mut(product, out_channels, width), Accum::Replace, weight, unfolded, 1.0, par);
                for (j, image) in out.chunks_mut(out_channels * pixels).enumerate() {
                    for (o, (plane, row)) in image.chunks_mut(pixels).zip(product.chunks(width)).enumerate() {
                        let row = &row[j * pixels..(j + 1) * pixels];
                        match bias {
                            Some(bias) => plane.iter_mut().zip(row).for_each(|(y, &p)| *y = p + bias[o]),
                            None => plane.copy_from_slice(row),
                        }
                    }
                }
                return then(first, out);
            }
            // The planes start as the bias (above), or are overwritten.
            let accumulate = if bias.is_some() { Accum::Add } else { Accum::Replace };
            for rows in g.tiles() {
                let (first, count) = (rows.start * ow, rows.len() * ow);
                let unfolded = g.unfold(input, images.clone(), rows, &mut scratch.columns);
                let dst = row_major_mut(out, out_channels, pixels).subcols_mut(first, count);
                crate::product::matmul(dst, accumulate, weight, unfolded, 1.0, par);
            }
            then(first, out);
        });
        Ok((CpuStorage::F32(out), Shape::from((batch, out_channels, g.out_height(), g.out_width()))))
    }

    /// The input's gradient is None where the input needs none (the images entering the stem:
    /// there it would be a full GEMM and col2im per image, 6% of a ResNet-18 step).
    pub(crate) fn gradients(
        &self,
        input: &Tensor,
        weight: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Tensor, Tensor)> {
        let grad = grad.contiguous()?;
        let (_, _, height, width) = input.dims4()?;
        let grad_input = if input.track_op() {
            Some(grad.apply_op2_no_bwd(&weight.contiguous()?, &GradInput { stride: self.stride, padding: self.padding, height, width })?)
        } else {
            None
        };
        let grad_weight = input
            .contiguous()?
            .apply_op2_no_bwd(&grad, &GradWeight { stride: self.stride, padding: self.padding, kernel: weight.dim(2)? })?;
        Ok((grad_input, grad_weight, grad))
    }
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::OPERANDS
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, None)
    }

    fn bwd(&self, input: &Tensor, weight: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (grad_input, grad_weight, _) = self.gradients(input, weight, grad)?;
        Ok((grad_input, Some(grad_weight)))
    }
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "conv2d-gemm-bias"
    }

    fn backward_reads(&self) -> candle_core::BackwardReads {
        crate::backward_reads::OPERANDS
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, Some(f32_slice(s3, l3, "the bias")?))
    }

    fn bwd(
        &self,
        input: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad_input, grad_weight, grad) = self.gradients(input, weight, grad)?;
        let grad_bias = crate::channel_bias::channel_sums(&grad)?;
        Ok((grad_input, Some(grad_weight), Some(grad_bias)))
    }
}

/// d loss / d x[b] = col2im(weightᵀ · grad[b]).
struct GradInput {
    stride: usize,
    padding: usize,
    height: usize,
    width: usize,
}

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "conv2d-gemm-grad-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, out_channels, _, _) = l1.shape().dims4()?;
        let (_, channels, kernel, _) = l2.shape().dims4()?;
        let g = Geometry { channels, height: self.height, width: self.width, kernel, stride: self.stride, padding: self.padding };
        let grad = f32_slice(s1, l1, "the gradient")?;
        let weight_t = row_major(f32_slice(s2, l2, "the weight")?, out_channels, g.patch_len()).transpose();
        let (pixels, ow) = (g.out_pixels(), g.out_width());
        // Zeroed an image per task (the folds accumulate into it).
        let mut out = build_in_chunks(batch * channels * g.in_pixels(), channels * g.in_pixels(), Start::Zeros, |_, _| {})?;
        let groups = g.image_groups(batch);
        let mut parts = split_by_groups(&mut out, &groups, channels * g.in_pixels());
        let (parallel, par) = split(groups.len());
        for_each_group(&mut parts, parallel, g.scratch_len(&groups, out_channels), |i, out, scratch| {
            let images = groups[i].clone();
            if images.len() > 1 {
                // The group's gradient side by side, one GEMM, then each image folded back.
                let width = images.len() * pixels;
                let grad = gather_planes(grad, images, out_channels, pixels, &mut scratch.planes);
                let unfolded = &mut scratch.columns[..g.patch_len() * width];
                crate::product::matmul(row_major_mut(unfolded, g.patch_len(), width), Accum::Replace, weight_t, grad, 1.0, par);
                for (j, image) in out.chunks_mut(channels * g.in_pixels()).enumerate() {
                    g.col2im(&unfolded[j * pixels..], 0..g.out_height(), image, width);
                }
                return;
            }
            let b = images.start;
            let grad = row_major(&grad[b * out_channels * pixels..(b + 1) * out_channels * pixels], out_channels, pixels);
            if g.is_pointwise() {
                crate::product::matmul(row_major_mut(out, channels, pixels), Accum::Replace, weight_t, grad, 1.0, par);
                return;
            }
            for rows in g.tiles() {
                let (first, count) = (rows.start * ow, rows.len() * ow);
                let tile = &mut scratch.columns[..g.patch_len() * count];
                let dst = row_major_mut(tile, g.patch_len(), count);
                crate::product::matmul(dst, Accum::Replace, weight_t, grad.subcols(first, count), 1.0, par);
                g.col2im(tile, rows, out, count);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((batch, channels, self.height, self.width))))
    }
}

/// d loss / d weight = Σ_b grad[b] · im2col(x[b])ᵀ, one partial sum per worker.
struct GradWeight {
    stride: usize,
    padding: usize,
    kernel: usize,
}

impl CustomOp2 for GradWeight {
    fn name(&self) -> &'static str {
        "conv2d-gemm-grad-weight"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, channels, height, width) = l1.shape().dims4()?;
        let (_, out_channels, _, _) = l2.shape().dims4()?;
        let g = Geometry { channels, height, width, kernel: self.kernel, stride: self.stride, padding: self.padding };
        let input = f32_slice(s1, l1, "the input")?;
        let grad = f32_slice(s2, l2, "the gradient")?;
        let (pixels, patch, ow) = (g.out_pixels(), g.patch_len(), g.out_width());
        let accumulate = |images: Range<usize>, sum: &mut [f32], scratch: &mut Scratch, par: Par| {
            if images.len() > 1 {
                // One GEMM whose inner dimension runs over the whole group.
                let grad = gather_planes(grad, images.clone(), out_channels, pixels, &mut scratch.planes);
                let unfolded = g.unfold(input, images, 0..g.out_height(), &mut scratch.columns);
                crate::product::matmul(row_major_mut(sum, out_channels, patch), Accum::Add, grad, unfolded.transpose(), 1.0, par);
                return;
            }
            let b = images.start;
            let grad = row_major(&grad[b * out_channels * pixels..(b + 1) * out_channels * pixels], out_channels, pixels);
            for rows in g.tiles() {
                let (first, count) = (rows.start * ow, rows.len() * ow);
                let unfolded = g.unfold(input, images.clone(), rows, &mut scratch.columns);
                let dst = row_major_mut(sum, out_channels, patch);
                crate::product::matmul(dst, Accum::Add, grad.subcols(first, count), unfolded.transpose(), 1.0, par);
            }
        };
        let groups = g.image_groups(batch);
        let (columns, planes) = g.scratch_len(&groups, out_channels);
        let scratch = || Scratch { columns: vec![0f32; columns], planes: vec![0f32; planes] };
        let (parallel, par) = split(groups.len());
        // Fixed chunks of groups, summed in order: the result does not depend on thread timing.
        let out = if parallel {
            let chunk = groups.len().div_ceil(rayon::current_num_threads());
            let partials: Vec<Vec<f32>> = groups
                .par_chunks(chunk)
                .map(|chunk| {
                    let (mut sum, mut scratch) = (vec![0f32; out_channels * patch], scratch());
                    for images in chunk {
                        accumulate(images.clone(), &mut sum, &mut scratch, Par::Seq);
                    }
                    sum
                })
                .collect();
            let mut total = vec![0f32; out_channels * patch];
            for partial in partials {
                total.iter_mut().zip(partial).for_each(|(t, p)| *t += p);
            }
            total
        } else {
            let (mut sum, mut scratch) = (vec![0f32; out_channels * patch], scratch());
            for images in &groups {
                accumulate(images.clone(), &mut sum, &mut scratch, par);
            }
            sum
        };
        Ok((CpuStorage::F32(out), Shape::from((out_channels, channels, self.kernel, self.kernel))))
    }
}

/// `activation(conv2d(x, weight, bias) + residual)` with no backward pass (its inputs are outside
/// any graph): the residual add and the activation run on each group of images' output in the
/// task that has just computed it, where the separate ops were two more passes over the whole
/// output, each into an output of its own. Their operations in their order, so their bits.
struct ForwardThen {
    forward: Forward,
    epilogue: Epilogue,
}

impl ForwardThen {
    fn run(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        bias: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, out_channels, g) = self.forward.geometry(l1, l2)?;
        self.epilogue.with_residual("conv2d", batch * out_channels * g.out_pixels(), |residual| {
            self.forward.run_then(s1, l1, s2, l2, bias, |first, part| self.epilogue.apply(residual, first, part))
        })
    }
}

impl CustomOp2 for ForwardThen {
    fn name(&self) -> &'static str {
        "conv2d-gemm-then"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, None)
    }
}

impl CustomOp3 for ForwardThen {
    fn name(&self) -> &'static str {
        "conv2d-gemm-bias-then"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, Some(f32_slice(s3, l3, "the bias")?))
    }
}

/// [`ForwardThen`]'s convolution, for f32 CPU tensors outside any graph.
pub(super) fn conv2d_then(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    (stride, padding): (usize, usize),
    residual: Option<&Tensor>,
    activation: FusedActivation,
) -> candle_core::Result<Tensor> {
    let op = ForwardThen { forward: Forward { stride, padding }, epilogue: Epilogue::new(residual, activation)? };
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        Some(bias) => x.apply_op3_no_bwd(&weight, &bias.contiguous()?, &op),
        None => x.apply_op2_no_bwd(&weight, &op),
    }
}

/// A one-group convolution of f32 CPU tensors: x (B, C, H, W), weight (O, C, k, k), an optional
/// bias (O).
pub(super) fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    let (x, weight, op) = (x.contiguous()?, weight.contiguous()?, Forward { stride, padding });
    match bias {
        Some(bias) => x.apply_op3(&weight, &bias.contiguous()?, op),
        None => x.apply_op2(&weight, op),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::Var;

    use super::*;
    use crate::conv::conv2d;
    use crate::test_tensors::max_difference;

    /// (batch, channels, out channels, kernel, stride, padding, height, width): odd and even
    /// sizes, unequal height/width remainders at stride 2, every stride/padding the backbones
    /// use, batches above and below the pool size. Shared with the composite's test.
    pub(crate) type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize);
    pub(crate) const SHAPES: [ConvCase; 10] = [
        (3, 4, 5, 3, 1, 1, 9, 7),
        (3, 3, 6, 7, 2, 3, 13, 10),
        (1, 4, 5, 3, 2, 1, 8, 9),
        (4, 6, 3, 1, 1, 0, 5, 6),
        (1, 6, 3, 1, 1, 0, 5, 6),
        (2, 5, 4, 1, 2, 0, 7, 8),
        (2, 3, 4, 16, 16, 0, 32, 48),
        (5, 2, 3, 5, 1, 2, 6, 6),
        // Images large enough for several output-row tiles (`MULTI_TILE`), stride 1 and 2.
        (1, 24, 4, 3, 1, 1, 70, 41),
        (2, 16, 3, 3, 2, 1, 91, 64),
    ];

    /// The cases of `SHAPES` whose unfolded image is split into several tiles.
    const MULTI_TILE: [usize; 2] = [8, 9];

    #[test]
    fn large_images_are_unfolded_in_several_tiles() {
        for index in MULTI_TILE {
            let (_, channels, _, kernel, stride, padding, height, width) = SHAPES[index];
            let g = Geometry { channels, height, width, kernel, stride, padding };
            let tiles: Vec<_> = g.tiles().collect();
            assert!(tiles.len() >= 3, "case {index}: {tiles:?}");
            // Consecutive, covering every output row once.
            assert_eq!(tiles.first().map(|t| t.start), Some(0));
            assert_eq!(tiles.last().map(|t| t.end), Some(g.out_height()));
            assert!(tiles.windows(2).all(|pair| pair[0].end == pair[1].start));
        }
    }

    /// The strided copy and add against the index formula, with and without a partner for
    /// the last pair.
    #[test]
    fn strided_copy_and_add_are_transposes() {
        for stride in 1..=3 {
            for len in 0..6usize {
                for spare in 0..stride {
                    let source: Vec<f32> = (0..(len * stride).saturating_sub(spare)).map(|i| i as f32 + 1.0).collect();
                    let len = source.len().div_ceil(stride);
                    let mut copied = vec![0.0; len];
                    copy_strided(&mut copied, &source, stride);
                    assert!(copied.iter().enumerate().all(|(i, &v)| v == source[i * stride]), "copy s{stride} {source:?}");
                    let mut added = source.clone();
                    add_strided(&mut added, &copied, stride);
                    let expected: Vec<f32> = source.iter().enumerate().map(|(i, &v)| if i % stride == 0 { 2.0 * v } else { v }).collect();
                    assert_eq!(added, expected, "add s{stride}");
                }
            }
        }
    }

    /// The cases of `SHAPES` whose images are multiplied several at a time: their groups cover
    /// the batch once, in order, and at least one holds several images.
    #[test]
    fn small_images_are_multiplied_several_at_a_time() {
        let mut grouped = 0;
        for (batch, channels, _, kernel, stride, padding, height, width) in SHAPES {
            let g = Geometry { channels, height, width, kernel, stride, padding };
            let groups = g.image_groups(batch);
            assert_eq!(groups.first().map(|images| images.start), Some(0));
            assert_eq!(groups.last().map(|images| images.end), Some(batch));
            assert!(groups.windows(2).all(|pair| pair[0].end == pair[1].start && !pair[0].is_empty()));
            if g.out_pixels() >= GROUP_BELOW {
                assert_eq!(groups.len(), batch);
            }
            grouped += usize::from(groups.iter().any(|images| images.len() > 1));
        }
        // Stride 1 and 2, pointwise and padded.
        assert!(grouped >= 4, "{grouped} cases grouped");
    }

    /// candle's own conv2d and its autograd are the reference: slow, but independent of this
    /// module's unfolding and GEMMs.
    #[test]
    fn matches_candle_conv2d_and_its_gradients() {
        let mut random = crate::test_tensors::NormalTensors::new(6);
        let (mut compared_elementwise, mut case_index) = (0, 0);
        for (batch, channels, out, kernel, stride, padding, height, width) in SHAPES {
            let case = format!("b{batch} c{channels} o{out} k{kernel} s{stride} p{padding} {height}x{width}");
            let x = Var::from_tensor(&random.draw(0.0, 1.0, (batch, channels, height, width))).unwrap();
            let w = Var::from_tensor(&random.draw(0.0, 1.0, (out, channels, kernel, kernel))).unwrap();
            // Every other case with a bias, which the GEMM accumulates onto.
            let bias = Var::from_tensor(&random.draw(0.0, 1.0, out)).unwrap();
            case_index += 1;
            let with_bias = case_index % 2 == 0;
            let ours = conv2d(x.as_tensor(), w.as_tensor(), with_bias.then_some(bias.as_tensor()), stride, padding).unwrap();
            let mut reference = x.as_tensor().conv2d(w.as_tensor(), padding, stride, 1, 1).unwrap();
            if with_bias {
                reference = reference.broadcast_add(&bias.reshape((1, out, 1, 1)).unwrap()).unwrap();
            }
            assert_eq!(ours.dims(), reference.dims(), "{case}");
            assert!(max_difference(&ours, &reference) < 1e-4, "forward {case}");
            let upstream = random.draw(0.0, 1.0, ours.dims());
            let our_grads = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let (grad_x, grad_w) = (our_grads.get(x.as_tensor()).unwrap(), our_grads.get(w.as_tensor()).unwrap());
            // The convolution is linear in each argument, so its gradients are its adjoints:
            // <grad_x, v> = <conv(v, w), upstream> for any v, and likewise for the weight. This
            // holds where candle's own backward fails (an odd remainder at stride 2, as in
            // ResNet's stem at 224 px).
            let inner = |a: &Tensor, b: &Tensor| (a * b).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            if with_bias {
                // d/d bias of <out, upstream> is the upstream summed per output channel.
                let expected = upstream.sum((0, 2, 3)).unwrap();
                assert!(max_difference(our_grads.get(bias.as_tensor()).unwrap(), &expected) < 1e-4, "bias gradient {case}");
            }
            // The tolerance scales with the sum of the products' magnitudes, not with the inner
            // product itself, which cancellation can bring near zero; a wrong gradient misses
            // by about that sum over the square root of the element count (1/17 here at least).
            let agrees = |grad: &Tensor, v: &Tensor, expected: f32| {
                (inner(grad, v) - expected).abs() <= 1e-5 * inner(&grad.abs().unwrap(), &v.abs().unwrap()).max(1.0)
            };
            for _ in 0..3 {
                let v = random.draw(0.0, 1.0, x.dims());
                let expected = inner(&v.conv2d(w.as_tensor(), padding, stride, 1, 1).unwrap(), &upstream);
                assert!(agrees(grad_x, &v, expected), "input adjoint {case}");
                let v = random.draw(0.0, 1.0, w.dims());
                let expected = inner(&x.as_tensor().conv2d(&v, padding, stride, 1, 1).unwrap(), &upstream);
                assert!(agrees(grad_w, &v, expected), "weight adjoint {case}");
            }
            // Element by element against candle's autograd where it works.
            if let Ok(reference_grads) = (&reference * &upstream).unwrap().sum_all().unwrap().backward() {
                for (name, var, ours) in [("input", &x, grad_x), ("weight", &w, grad_w)] {
                    let expected = reference_grads.get(var.as_tensor()).unwrap();
                    let scale = expected.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
                    let difference = max_difference(ours, expected);
                    assert!(difference < 1e-4 * scale, "{name} gradient {case}: {difference}");
                }
                compared_elementwise += 1;
            }
        }
        assert!(compared_elementwise >= 5, "candle's backward ran on only {compared_elementwise} cases");
    }

    /// The images entering a network need no gradient: none is computed or stored for them.
    /// The residual add and the activation on each group's output give the bits of the separate
    /// convolution, add and activation ops: every shape (small images grouped several at a time,
    /// several tiles), each activation, with and without a bias and a residual. An input that
    /// tracks a gradient takes the separate ops and gets its gradient; a residual of the wrong
    /// size is an error.
    #[test]
    fn the_eval_epilogue_equals_the_separate_ops_to_the_bit() {
        let mut random = crate::test_tensors::NormalTensors::new(23);
        let activations = [FusedActivation::Identity, FusedActivation::Relu, FusedActivation::Relu6, FusedActivation::Silu];
        for (case, &(batch, channels, out, kernel, stride, padding, height, width)) in SHAPES.iter().enumerate() {
            let x = random.draw(0.5, 2.0, (batch, channels, height, width));
            let w = random.draw(0.0, 0.5, (out, channels, kernel, kernel));
            let bias = random.draw(1.0, 1.0, out);
            let separate = conv2d(&x, &w, Some(&bias), stride, padding).unwrap();
            let residual = random.draw(0.0, 3.0, separate.dims());
            for (index, activation) in activations.into_iter().enumerate() {
                // Alternate which of the bias and the residual each case has.
                let with_bias = (case + index) % 2 == 0;
                let with_residual = (case + index) % 3 != 0;
                let name = format!("case {case} {activation:?} bias {with_bias} residual {with_residual}");
                let (b, r) = (with_bias.then_some(&bias), with_residual.then_some(&residual));
                let ours = crate::conv::conv2d_eval(&x, &w, b, stride, padding, r, activation).unwrap();
                let theirs = activation.after_residual(conv2d(&x, &w, b, stride, padding).unwrap(), r).unwrap();
                assert!(crate::test_tensors::bits(&ours) == crate::test_tensors::bits(&theirs), "{name}");
            }
        }
        let (x, w) = (Var::from_tensor(&random.draw(0.0, 1.0, (2, 3, 6, 6))).unwrap(), random.draw(0.0, 1.0, (4, 3, 3, 3)));
        let y = crate::conv::conv2d_eval(&x, &w, None, 1, 1, None, FusedActivation::Relu).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_some_and(|g| g.dims() == [2, 3, 6, 6]), "a tracked input gets its gradient");
        let wrong = Tensor::zeros((2, 4, 6, 5), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let error = crate::conv::conv2d_eval(&x.detach(), &w, None, 1, 1, Some(&wrong), FusedActivation::Relu).unwrap_err();
        assert!(error.to_string().contains("a residual of 240 values for an output of 288"), "{error}");
    }

    #[test]
    fn an_input_without_gradient_gets_none() {
        let mut random = crate::test_tensors::NormalTensors::new(2);
        let x = random.draw(0.0, 1.0, (2, 3, 9, 9));
        let w = Var::from_tensor(&random.draw(0.0, 1.0, (4, 3, 3, 3))).unwrap();
        let grads = conv2d(&x, w.as_tensor(), None, 2, 1).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(w.as_tensor()).is_some());
    }
}
