//! Methods for backpropagation of gradients.
use crate::op::{BinaryOp, Op, ReduceOp, UnaryOp};
use crate::{Error, Result, Tensor, TensorId};
use std::collections::{hash_map::Entry, HashMap};

// arg has been reduced to node via reduce_dims, expand it back to arg.
// This has to handle keepdims.
fn broadcast_back(arg: &Tensor, node: &Tensor, reduced_dims: &[usize]) -> Result<Tensor> {
    if arg.rank() == node.rank() {
        // keepdim = true
        node.broadcast_as(arg.shape())
    } else {
        // keepdim = false
        // first expand the reduced dims.
        node.reshape(reduced_dims)?.broadcast_as(arg.shape())
    }
}

thread_local! {
    static CANDLE_GRAD_DO_NOT_DETACH: bool = {
        match std::env::var("CANDLE_GRAD_DO_NOT_DETACH") {
            Ok(s) => {
                !s.is_empty() && s != "0"
            },
            Err(_) => false,
        }
    }
}

impl Tensor {
    /// Return all the nodes that lead to this value in a topologically sorted vec, the first
    /// elements having dependencies on the latter ones, e.g. the first element if any is the
    /// argument.
    /// This assumes that the op graph is a DAG.
    pub fn sorted_nodes(&self) -> Vec<&Tensor> {
        // The vec of sorted nodes is passed as an owned value rather than a mutable reference
        // to get around some lifetime limitations.
        fn walk<'a>(
            node: &'a Tensor,
            nodes: Vec<&'a Tensor>,
            already_seen: &mut HashMap<TensorId, bool>,
        ) -> (bool, Vec<&'a Tensor>) {
            if let Some(&tg) = already_seen.get(&node.id()) {
                return (tg, nodes);
            }
            let mut track_grad = false;
            let mut nodes = if node.is_variable() {
                // Do not call recursively on the "leaf" nodes.
                track_grad = true;
                nodes
            } else if node.dtype().is_int() {
                nodes
            } else if let Some(op) = node.op() {
                match op {
                    Op::IndexAdd(t1, t2, t3, _)
                    | Op::Scatter(t1, t2, t3, _)
                    | Op::ScatterAdd(t1, t2, t3, _)
                    | Op::CustomOp3(t1, t2, t3, _)
                    | Op::WhereCond(t1, t2, t3) => {
                        let (tg, nodes) = walk(t1, nodes, already_seen);
                        track_grad |= tg;
                        let (tg, nodes) = walk(t2, nodes, already_seen);
                        track_grad |= tg;
                        let (tg, nodes) = walk(t3, nodes, already_seen);
                        track_grad |= tg;
                        nodes
                    }
                    Op::Conv1D {
                        arg: lhs,
                        kernel: rhs,
                        ..
                    }
                    | Op::ConvTranspose1D {
                        arg: lhs,
                        kernel: rhs,
                        ..
                    }
                    | Op::Conv2D {
                        arg: lhs,
                        kernel: rhs,
                        ..
                    }
                    | Op::ConvTranspose2D {
                        arg: lhs,
                        kernel: rhs,
                        ..
                    }
                    | Op::CustomOp2(lhs, rhs, _)
                    | Op::Binary(lhs, rhs, _)
                    | Op::Gather(lhs, rhs, _)
                    | Op::IndexSelect(lhs, rhs, _)
                    | Op::Matmul(lhs, rhs)
                    | Op::SliceScatter0(lhs, rhs, _) => {
                        let (tg, nodes) = walk(lhs, nodes, already_seen);
                        track_grad |= tg;
                        let (tg, nodes) = walk(rhs, nodes, already_seen);
                        track_grad |= tg;
                        nodes
                    }
                    Op::Cat(args, _) => args.iter().fold(nodes, |nodes, arg| {
                        let (tg, nodes) = walk(arg, nodes, already_seen);
                        track_grad |= tg;
                        nodes
                    }),
                    Op::Affine { arg, mul, .. } => {
                        if *mul == 0. {
                            nodes
                        } else {
                            let (tg, nodes) = walk(arg, nodes, already_seen);
                            track_grad |= tg;
                            nodes
                        }
                    }
                    Op::Unary(_node, UnaryOp::Ceil)
                    | Op::Unary(_node, UnaryOp::Floor)
                    | Op::Unary(_node, UnaryOp::Round)
                    | Op::Unary(_node, UnaryOp::Sign) => nodes,
                    Op::Reshape(node)
                    | Op::UpsampleNearest1D { arg: node, .. }
                    | Op::UpsampleNearest2D { arg: node, .. }
                    | Op::UpsampleBilinear2D { arg: node, .. }
                    | Op::AvgPool2D { arg: node, .. }
                    | Op::MaxPool2D { arg: node, .. }
                    | Op::Copy(node)
                    | Op::Broadcast(node)
                    | Op::Cmp(node, _)
                    | Op::Reduce(node, ReduceOp::Min | ReduceOp::Sum | ReduceOp::Max, _)
                    | Op::ToDevice(node)
                    | Op::Transpose(node, _, _)
                    | Op::Permute(node, _)
                    | Op::Narrow(node, _, _, _)
                    | Op::Unary(node, _)
                    | Op::Elu(node, _)
                    | Op::Powf(node, _)
                    | Op::CustomOp1(node, _) => {
                        let (tg, nodes) = walk(node, nodes, already_seen);
                        track_grad |= tg;
                        nodes
                    }
                    Op::ToDType(node) => {
                        if node.dtype().is_float() {
                            let (tg, nodes) = walk(node, nodes, already_seen);
                            track_grad |= tg;
                            nodes
                        } else {
                            nodes
                        }
                    }
                    Op::Reduce(_, ReduceOp::ArgMin | ReduceOp::ArgMax, _) => nodes,
                }
            } else {
                nodes
            };
            already_seen.insert(node.id(), track_grad);
            if track_grad {
                nodes.push(node);
            }
            (track_grad, nodes)
        }
        let (_tg, mut nodes) = walk(self, vec![], &mut HashMap::new());
        nodes.reverse();
        nodes
    }

    pub fn backward(&self) -> Result<GradStore> {
        self.backward_with(false)
    }

    /// The same gradients as [`Tensor::backward`], freeing each intermediate's storage as soon
    /// as the backward pass has no further use for it, as PyTorch frees a node's saved tensors
    /// once the node's backward has run (`retain_graph=False`). `backward` keeps every
    /// intermediate until it returns, so its peak memory is the whole forward graph plus the
    /// gradients made on the way.
    ///
    /// An intermediate is freed once its own rule and those of every tensor sharing its storage
    /// (views) have run, and only if nothing outside the graph holds any of them: no clone (the
    /// caller's logits, features), no view outside the graph, no variable. Every rule that
    /// reads a tensor runs before it: its consumers' rules, which take it as an input, run
    /// first, and its own rule, which may take its output, runs just before it is freed. A
    /// freed tensor is left with a one-byte placeholder in place of its values, so a second
    /// backward pass over the graph, whose rules would read them, is an error that says to run
    /// the forward pass again. (A graph none of whose rules reads an intermediate, only
    /// variables, can be passed through again: it needs nothing that was freed.)
    pub fn backward_releasing(&self) -> Result<GradStore> {
        self.backward_with(true)
    }

    fn backward_with(&self, release: bool) -> Result<GradStore> {
        let sorted_nodes = self.sorted_nodes();
        if values_read_are_released(&sorted_nodes) {
            crate::bail!(
                "backward: this graph's intermediates were freed by an earlier backward_releasing; run the forward pass again"
            )
        }
        let mut release = release.then(|| ReleasePlan::new(&sorted_nodes));
        let mut grads = GradStore::new();
        grads.insert(self, self.ones_like()?.contiguous()?);
        for node in sorted_nodes.iter() {
            if node.is_variable() {
                continue;
            }
            let grad = grads
                .remove(node)
                .expect("candle internal error - grad not populated");
            // https://github.com/huggingface/candle/issues/1241
            // Ideally, we would make these operations in place where possible to ensure that we
            // do not have to allocate too often. Here we just call `.detach` to avoid computing
            // the backprop graph of the backprop itself. This would be an issue for second order
            // derivatives but these are out of scope at the moment.
            // The gradient as it was stored is dropped here, not at the end of the iteration: a
            // rule's output records the rule's inputs as its own op, and until it is dropped it
            // holds them (`backward_releasing` frees nothing that anything holds).
            let grad = detached_unless_asked(grad);
            if let Some(op) = node.op() {
                match op {
                    Op::Binary(lhs, rhs, BinaryOp::Add) => {
                        grads.accumulate(lhs, &grad)?;
                        grads.accumulate(rhs, &grad)?;
                    }
                    Op::Binary(lhs, rhs, BinaryOp::Sub) => {
                        grads.accumulate(lhs, &grad)?;
                        grads.accumulate_neg(rhs, &grad)?;
                    }
                    Op::Binary(lhs, rhs, BinaryOp::Mul) => {
                        let lhs_grad = grad.mul(rhs)?;
                        grads.accumulate(lhs, &lhs_grad)?;
                        let rhs_grad = grad.mul(lhs)?;
                        grads.accumulate(rhs, &rhs_grad)?;
                    }
                    Op::Binary(lhs, rhs, BinaryOp::Div) => {
                        let lhs_grad = grad.div(rhs)?;
                        grads.accumulate(lhs, &lhs_grad)?;
                        let rhs_grad = grad.mul(lhs)?.div(&rhs.sqr()?)?;
                        grads.accumulate_neg(rhs, &rhs_grad)?;
                    }
                    Op::Binary(lhs, rhs, BinaryOp::Minimum)
                    | Op::Binary(lhs, rhs, BinaryOp::Maximum) => {
                        let mask_lhs = node.eq(lhs)?.to_dtype(grad.dtype())?;
                        let mask_rhs = node.eq(rhs)?.to_dtype(grad.dtype())?;

                        // If both masks are 1 one the same point, we want to scale the
                        // gradient by 0.5 rather than 1.
                        let lhs_grad = mask_lhs.mul(&grad)?.div(&(&mask_rhs + 1.)?)?;
                        grads.accumulate(lhs, &lhs_grad)?;

                        let rhs_grad = mask_rhs.mul(&grad)?.div(&(&mask_lhs + 1.)?)?;
                        grads.accumulate(rhs, &rhs_grad)?;
                    }
                    Op::WhereCond(pred, t, f) => {
                        let zeros = grad.zeros_like()?;
                        let t_grad = pred.where_cond(&grad, &zeros)?;
                        grads.accumulate(t, &t_grad)?;
                        let f_grad = pred.where_cond(&zeros, &grad)?;
                        grads.accumulate(f, &f_grad)?;
                    }
                    Op::Conv1D {
                        arg,
                        kernel,
                        padding,
                        stride,
                        dilation,
                    } => {
                        // The output height for conv_transpose1d is:
                        // (l_in - 1) * stride - 2 * padding + dilation * (k_size - 1) + out_padding + 1
                        let grad_l_in = grad.dim(2)?;
                        let k_size = kernel.dim(2)?;
                        let out_size =
                            (grad_l_in - 1) * stride + dilation * (k_size - 1) + 1 - 2 * padding;
                        let out_padding = arg.dim(2)? - out_size;
                        let grad_arg = grad.conv_transpose1d(
                            kernel,
                            *padding,
                            out_padding,
                            *stride,
                            *dilation,
                            /* groups */ 1,
                        )?;
                        grads.accumulate(arg, &grad_arg)?;

                        let grad_kernel = arg
                            .transpose(0, 1)?
                            .conv1d(&grad.transpose(0, 1)?, *padding, *dilation, *stride, 1)?
                            .transpose(0, 1)?;
                        let (_, _, k0) = kernel.dims3()?;
                        let (_, _, g_k0) = grad_kernel.dims3()?;
                        let grad_kernel = if g_k0 != k0 {
                            grad_kernel.narrow(2, 0, k0)?
                        } else {
                            grad_kernel
                        };
                        grads.accumulate(kernel, &grad_kernel)?;
                    }
                    Op::Conv2D {
                        arg,
                        kernel,
                        padding,
                        stride,
                        dilation,
                    } => {
                        // The output height for conv_transpose2d is:
                        // (i_h - 1) * stride - 2 * padding + dilation * (k_h - 1) + out_padding + 1
                        let grad_h = grad.dim(2)?;
                        let k_h = kernel.dim(2)?;
                        let out_size =
                            (grad_h - 1) * stride + dilation * (k_h - 1) + 1 - 2 * padding;
                        let out_padding = arg.dim(2)? - out_size;
                        let grad_arg = grad.conv_transpose2d(
                            kernel,
                            *padding,
                            out_padding,
                            *stride,
                            *dilation,
                        )?;
                        grads.accumulate(arg, &grad_arg)?;

                        let grad_kernel = arg
                            .transpose(0, 1)?
                            .conv2d(&grad.transpose(0, 1)?, *padding, *dilation, *stride, 1)?
                            .transpose(0, 1)?;
                        let (_, _, k0, k1) = kernel.dims4()?;
                        let (_, _, g_k0, g_k1) = grad_kernel.dims4()?;
                        let grad_kernel = if g_k0 != k0 || g_k1 != k1 {
                            grad_kernel.narrow(2, 0, k0)?.narrow(3, 0, k1)?
                        } else {
                            grad_kernel
                        };
                        grads.accumulate(kernel, &grad_kernel)?;
                    }
                    Op::ConvTranspose1D { .. } => Err(Error::BackwardNotSupported {
                        op: "conv-transpose1d",
                    })?,
                    Op::ConvTranspose2D {
                        arg,
                        kernel,
                        padding,
                        stride,
                        dilation,
                        output_padding: _output_padding,
                    } => {
                        let grad_arg = grad.conv2d(kernel, *padding, *stride, *dilation, 1)?;
                        grads.accumulate(arg, &grad_arg)?;

                        let grad_kernel = grad
                            .transpose(0, 1)?
                            .conv2d(&arg.transpose(0, 1)?, *padding, *dilation, *stride, 1)?
                            .transpose(0, 1)?;
                        let (_, _, k0, k1) = kernel.dims4()?;
                        let (_, _, g_k0, g_k1) = grad_kernel.dims4()?;
                        let grad_kernel = if g_k0 != k0 || g_k1 != k1 {
                            grad_kernel.narrow(2, 0, k0)?.narrow(3, 0, k1)?
                        } else {
                            grad_kernel
                        };
                        grads.accumulate(kernel, &grad_kernel)?;
                    }
                    Op::AvgPool2D {
                        arg,
                        kernel_size,
                        stride,
                    } => {
                        if kernel_size != stride {
                            crate::bail!("backward not supported for avgpool2d if ksize {kernel_size:?} != stride {stride:?}")
                        }
                        let (_n, _c, h, w) = arg.dims4()?;
                        let grad_arg = grad.upsample_nearest2d(h, w)?;
                        let grad_arg =
                            (grad_arg * (1f64 / (kernel_size.0 * kernel_size.1) as f64))?;
                        grads.accumulate(arg, &grad_arg)?;
                    }
                    Op::MaxPool2D {
                        arg,
                        kernel_size,
                        stride,
                    } => {
                        if kernel_size != stride {
                            crate::bail!("backward not supported for maxpool2d if ksize {kernel_size:?} != stride {stride:?}")
                        }
                        let (_n, _c, h, w) = arg.dims4()?;
                        // For computing the max-pool gradient, we compute a mask where a 1 means
                        // that the element is the maximum, then we apply this mask to the
                        // upsampled gradient (taking into account that multiple max may exist so
                        // we scale the gradient for this case).
                        let node_upsampled = node.upsample_nearest2d(h, w)?;
                        let mask = arg.eq(&node_upsampled)?.to_dtype(arg.dtype())?;
                        let avg = mask.avg_pool2d_with_stride(*kernel_size, *stride)?;
                        let grad_arg = ((grad * avg)?.upsample_nearest2d(h, w)? * mask)?;
                        grads.accumulate(arg, &grad_arg)?;
                    }
                    Op::UpsampleNearest1D { arg, target_size } => {
                        let (_n, c, size) = arg.dims3()?;
                        if target_size % size != 0 {
                            crate::bail!("backward not supported for non integer upscaling factors")
                        }
                        let scale = target_size / size;

                        let kernel = Tensor::ones((c, 1, scale), arg.dtype(), arg.device())?;
                        let conv_sum = grad.conv1d(&kernel, 0, scale, 1, c)?;
                        let sum_grad = grads.or_insert(arg)?;
                        *sum_grad = conv_sum;
                    }
                    Op::UpsampleNearest2D {
                        arg,
                        target_h,
                        target_w,
                    } => {
                        let (_n, c, h, w) = arg.dims4()?;
                        if target_h % h != 0 || target_w % w != 0 {
                            crate::bail!("backward not supported for non integer upscaling factors")
                        }
                        let scale_h = target_h / h;
                        let scale_w = target_w / w;

                        if scale_h != scale_w {
                            crate::bail!("backward not supported for non uniform upscaling factors")
                        };
                        let kernel =
                            Tensor::ones((c, 1, scale_h, scale_w), arg.dtype(), arg.device())?;
                        let conv_sum = grad.conv2d(&kernel, 0, scale_h, 1, c)?;
                        let sum_grad = grads.or_insert(arg)?;
                        *sum_grad = conv_sum;
                    }
                    Op::UpsampleBilinear2D { .. } => {
                        crate::bail!("backward not supported for upsample_bilinear2d")
                    }
                    Op::SliceScatter0(lhs, rhs, start_rhs) => {
                        let rhs_sum_grad = grads.or_insert(rhs)?;
                        let rhs_grad = grad.narrow(0, *start_rhs, rhs.dim(0)?)?;
                        *rhs_sum_grad = rhs_sum_grad.add(&rhs_grad)?;

                        let lhs_sum_grad = grads.or_insert(lhs)?;
                        let lhs_grad = grad.slice_scatter0(&rhs.zeros_like()?, *start_rhs)?;
                        *lhs_sum_grad = lhs_sum_grad.add(&lhs_grad)?
                    }
                    Op::Gather(arg, indexes, dim) => {
                        let sum_grad = grads.or_insert(arg)?;
                        *sum_grad = sum_grad.scatter_add(indexes, &grad, *dim)?;
                    }
                    Op::Scatter(init, indexes, src, dim) => {
                        grads.accumulate(init, &grad)?;

                        let src_grad = grad.gather(indexes, *dim)?;
                        grads.accumulate(src, &src_grad)?;
                    }
                    Op::ScatterAdd(init, indexes, src, dim) => {
                        let init_sum_grad = grads.or_insert(init)?;
                        let mask = init.ones_like()?;
                        let mask = mask.scatter(indexes, &mask.zeros_like()?, *dim)?;
                        *init_sum_grad = init_sum_grad.add(&grad.mul(&mask)?)?;

                        let src_grad = grad.gather(indexes, *dim)?;
                        grads.accumulate(src, &src_grad)?;
                    }
                    Op::IndexAdd(init, indexes, src, dim) => {
                        grads.accumulate(init, &grad)?;

                        let src_grad = grad.index_select(indexes, *dim)?;
                        grads.accumulate(src, &src_grad)?;
                    }
                    Op::IndexSelect(arg, indexes, dim) => {
                        let sum_grad = grads.or_insert(arg)?;
                        // index_select accepts strided ids but index_add requires contiguous ones.
                        let indexes = indexes.contiguous()?;
                        *sum_grad = sum_grad.index_add(&indexes, &grad, *dim)?;
                    }
                    Op::Matmul(lhs, rhs) => {
                        // Skipping checks, the op went ok, we can skip
                        // the matmul size checks for now.

                        let lhs_grad = grad.matmul(&rhs.t()?)?;
                        grads.accumulate(lhs, &lhs_grad)?;

                        let rhs_grad = lhs.t()?.matmul(&grad)?;
                        grads.accumulate(rhs, &rhs_grad)?;
                    }
                    Op::Cat(args, dim) => {
                        let mut start_idx = 0;
                        for arg in args {
                            let len = arg.dims()[*dim];
                            let arg_grad = grad.narrow(*dim, start_idx, len)?;
                            grads.accumulate(arg, &arg_grad)?;
                            start_idx += len;
                        }
                    }
                    Op::Broadcast(arg) => {
                        let arg_dims = arg.dims();
                        let node_dims = node.dims();
                        // The number of dims that have been inserted on the left.
                        let left_dims = node_dims.len() - arg_dims.len();
                        let mut sum_dims: Vec<usize> = (0..left_dims).collect();
                        for (dim, (node_dim, arg_dim)) in node_dims[left_dims..]
                            .iter()
                            .zip(arg_dims.iter())
                            .enumerate()
                        {
                            if node_dim != arg_dim {
                                sum_dims.push(dim + left_dims)
                            }
                        }

                        let mut arg_grad = grad.sum_keepdim(sum_dims.as_slice())?;
                        for _i in 0..left_dims {
                            arg_grad = arg_grad.squeeze(0)?
                        }
                        grads.accumulate(arg, &arg_grad.broadcast_as(arg.dims())?)?;
                    }
                    Op::Reduce(arg, ReduceOp::Sum, reduced_dims) => {
                        let grad = broadcast_back(arg, &grad, reduced_dims)?;
                        grads.accumulate(arg, &grad)?;
                    }
                    Op::Reduce(arg, ReduceOp::Max, reduced_dims) => {
                        let node = broadcast_back(arg, node, reduced_dims)?;
                        let grad = broadcast_back(arg, &grad, reduced_dims)?;
                        let grad = node.eq(arg)?.to_dtype(grad.dtype())?.mul(&grad)?;
                        grads.accumulate(arg, &grad.broadcast_as(arg.dims())?)?;
                    }
                    Op::Reduce(arg, ReduceOp::Min, reduced_dims) => {
                        let node = broadcast_back(arg, node, reduced_dims)?;
                        let grad = broadcast_back(arg, &grad, reduced_dims)?;
                        let grad = node.eq(arg)?.to_dtype(grad.dtype())?.mul(&grad)?;
                        grads.accumulate(arg, &grad.broadcast_as(arg.dims())?)?;
                    }
                    Op::ToDType(arg) => grads.accumulate(arg, &grad.to_dtype(arg.dtype())?)?,
                    Op::Copy(arg) => grads.accumulate(arg, &grad)?,
                    Op::Affine { arg, mul, .. } => {
                        let arg_grad = grad.affine(*mul, 0.)?;
                        grads.accumulate(arg, &arg_grad)?
                    }
                    Op::Unary(arg, UnaryOp::Log) => grads.accumulate(arg, &(grad / arg)?)?,
                    Op::Unary(arg, UnaryOp::Sin) => grads.accumulate(arg, &(&grad * arg.cos())?)?,
                    Op::Unary(arg, UnaryOp::Cos) => {
                        grads.accumulate_neg(arg, &(&grad * arg.sin())?)?
                    }
                    Op::Unary(arg, UnaryOp::Tanh) => {
                        let minus_dtanh = (node.sqr()? - 1.)?;
                        grads.accumulate_neg(arg, &(&grad * &minus_dtanh)?)?
                    }
                    Op::Unary(arg, UnaryOp::Abs) => {
                        let ones = arg.ones_like()?;
                        let abs_grad = arg.ge(&arg.zeros_like()?)?.where_cond(&ones, &ones.neg()?);
                        grads.accumulate(arg, &(&grad * abs_grad)?)?
                    }
                    Op::Unary(arg, UnaryOp::Exp) => grads.accumulate(arg, &(&grad * *node)?)?,
                    Op::Unary(arg, UnaryOp::Neg) => grads.accumulate_neg(arg, &grad)?,
                    Op::Unary(arg, UnaryOp::Recip) => {
                        let grad = (grad / arg.sqr()?)?;
                        grads.accumulate_neg(arg, &grad)?
                    }
                    &Op::Narrow(ref arg, dim, start_idx, len) => {
                        let arg_dims = arg.dims();
                        let left_pad = if start_idx == 0 {
                            None
                        } else {
                            let mut dims = arg_dims.to_vec();
                            dims[dim] = start_idx;
                            Some(Tensor::zeros(dims, grad.dtype(), grad.device())?)
                        };
                        let right_pad = arg_dims[dim] - start_idx - len;
                        let right_pad = if right_pad == 0 {
                            None
                        } else {
                            let mut dims = arg_dims.to_vec();
                            dims[dim] = right_pad;
                            Some(Tensor::zeros(dims, grad.dtype(), grad.device())?)
                        };
                        let arg_grad = match (left_pad, right_pad) {
                            (None, None) => grad,
                            (Some(l), None) => Tensor::cat(&[&l, &grad], dim)?,
                            (None, Some(r)) => Tensor::cat(&[&grad, &r], dim)?,
                            (Some(l), Some(r)) => Tensor::cat(&[&l, &grad, &r], dim)?,
                        };
                        grads.accumulate(arg, &arg_grad)?
                    }
                    Op::Unary(_, UnaryOp::Floor)
                    | Op::Unary(_, UnaryOp::Round)
                    | Op::Reduce(_, ReduceOp::ArgMin, _)
                    | Op::Reduce(_, ReduceOp::ArgMax, _)
                    | Op::Unary(_, UnaryOp::Sign)
                    | Op::Cmp(_, _) => {}
                    Op::Reshape(arg) => {
                        let arg_grad = grad.reshape(arg.dims())?;
                        grads.accumulate(arg, &arg_grad)?
                    }
                    Op::Unary(_, UnaryOp::Ceil) => Err(Error::BackwardNotSupported { op: "ceil" })?,
                    Op::Unary(arg, UnaryOp::Gelu) => {
                        let cube = arg.powf(3.)?;
                        let tanh = (0.0356774 * &cube + (0.797885 * arg)?)?.tanh()?;
                        let gelu_grad = (((0.5 * &tanh)?
                            + (0.0535161 * cube + (0.398942 * arg)?)? * (1. - tanh.powf(2.)?))?
                            + 0.5)?;
                        grads.accumulate(arg, &(&grad * gelu_grad)?)?
                    }
                    Op::Unary(arg, UnaryOp::Erf) => {
                        // d/dx erf(x) = 2/sqrt(pi) * e^(-x^2)
                        let erf_grad =
                            (2. / std::f64::consts::PI.sqrt()) * (arg.sqr()?.neg()?).exp()?;
                        grads.accumulate(arg, &(&grad * erf_grad)?)?
                    }
                    Op::Unary(arg, UnaryOp::GeluErf) => {
                        // d/dx gelu_erf(x) = 0.5 + 0.398942 e^(-x^2/2) x + 0.5 erf(x/sqrt(2))
                        let neg_half_square = (arg.sqr()?.neg()? / 2.)?;
                        let scaled_exp_arg = (0.398942 * neg_half_square.exp()? * arg)?;
                        let arg_scaled_sqrt = (arg / 2f64.sqrt())?;
                        let erf_scaled_sqrt = (0.5 * arg_scaled_sqrt.erf()?)?;
                        let gelu_erf_grad = (0.5 + scaled_exp_arg + erf_scaled_sqrt)?;
                        grads.accumulate(arg, &(&grad * gelu_erf_grad)?)?;
                    }
                    Op::Unary(arg, UnaryOp::Relu) => {
                        let relu_grad = arg.ge(&arg.zeros_like()?)?.to_dtype(arg.dtype())?;
                        grads.accumulate(arg, &(&grad * relu_grad)?)?
                    }
                    Op::Unary(arg, UnaryOp::Silu) => {
                        // d/dx silu = sigmoid(x) * (1 + x * (1 - sigmoid(x))) = sigmoid(x) * (1 - node) + node
                        let sigmoid_arg = (arg.neg()?.exp()? + 1.)?.recip()?;
                        let silu_grad = &sigmoid_arg * (1. - *node) + *node;
                        grads.accumulate(arg, &(&grad * silu_grad)?)?
                    }
                    Op::Elu(arg, alpha) => {
                        // d/dx elu(x) = 1 for x > 0, alpha * e^x for x <= 0
                        let zeros = arg.zeros_like()?;
                        let positive_mask = arg.gt(&zeros)?.to_dtype(arg.dtype())?;
                        let negative_mask = arg.le(&zeros)?.to_dtype(arg.dtype())?;
                        // node == alpha * (e^x - 1) for x <= 0, reuse it
                        let negative_exp_mask = (negative_mask * (*node + *alpha))?;
                        let combined_mask = (positive_mask + negative_exp_mask)?;
                        grads.accumulate(arg, &(grad * combined_mask)?)?
                    }
                    Op::Powf(arg, e) => {
                        let arg_grad = (&(grad * arg.powf(e - 1.)?)? * *e)?;
                        grads.accumulate(arg, &arg_grad)?
                    }
                    Op::CustomOp1(arg, c) => {
                        if let Some(arg_grad) = c.bwd(arg, node, &grad)? {
                            grads.accumulate(arg, &arg_grad)?
                        }
                    }
                    Op::CustomOp2(arg1, arg2, c) => {
                        let (arg_grad1, arg_grad2) = c.bwd(arg1, arg2, node, &grad)?;
                        if let Some(arg_grad1) = arg_grad1 {
                            grads.accumulate(arg1, &arg_grad1)?
                        }
                        if let Some(arg_grad2) = arg_grad2 {
                            grads.accumulate(arg2, &arg_grad2)?
                        }
                    }
                    Op::CustomOp3(arg1, arg2, arg3, c) => {
                        let (arg_grad1, arg_grad2, arg_grad3) =
                            c.bwd(arg1, arg2, arg3, node, &grad)?;
                        if let Some(arg_grad1) = arg_grad1 {
                            grads.accumulate(arg1, &arg_grad1)?
                        }
                        if let Some(arg_grad2) = arg_grad2 {
                            grads.accumulate(arg2, &arg_grad2)?
                        }
                        if let Some(arg_grad3) = arg_grad3 {
                            grads.accumulate(arg3, &arg_grad3)?
                        }
                    }
                    Op::Unary(arg, UnaryOp::Sqr) => {
                        let arg_grad = arg.mul(&grad)?.affine(2., 0.)?;
                        grads.accumulate(arg, &arg_grad)?
                    }
                    Op::Unary(arg, UnaryOp::Sqrt) => {
                        let arg_grad = grad.div(node)?.affine(0.5, 0.)?;
                        grads.accumulate(arg, &arg_grad)?
                    }
                    Op::ToDevice(arg) => {
                        let arg_grad = grad.to_device(arg.device())?;
                        grads.accumulate(arg, &arg_grad)?
                    }
                    Op::Transpose(arg, dim1, dim2) => {
                        let arg_grad = grad.transpose(*dim1, *dim2)?;
                        grads.accumulate(arg, &arg_grad)?
                    }
                    Op::Permute(arg, dims) => {
                        let mut inv_dims = vec![0; dims.len()];
                        for (i, &dim_idx) in dims.iter().enumerate() {
                            inv_dims[dim_idx] = i
                        }
                        let arg_grad = grad.permute(inv_dims)?;
                        grads.accumulate(arg, &arg_grad)?
                    }
                };
            }
            if let Some(plan) = release.as_mut() {
                plan.rule_ran(node)?;
            }
        }
        Ok(grads)
    }
}

/// Which intermediates `Tensor::backward_releasing` may free, and when.
struct ReleasePlan<'a> {
    /// How many inputs of the graph's ops each tensor is (an op taking x twice counts twice):
    /// the handles to it that the graph itself holds.
    held_by_graph: HashMap<TensorId, usize>,
    /// The graph's tensors grouped by the storage they share (`Tensor::storage_key`).
    sharing: HashMap<usize, Vec<&'a Tensor>>,
    /// The tensors whose rule has run.
    done: std::collections::HashSet<TensorId>,
}

impl<'a> ReleasePlan<'a> {
    fn new(nodes: &[&'a Tensor]) -> Self {
        let mut held_by_graph: HashMap<TensorId, usize> = HashMap::new();
        let mut sharing: HashMap<usize, Vec<&'a Tensor>> = HashMap::new();
        for node in nodes {
            sharing.entry(node.storage_key()).or_default().push(node);
            if let Some(op) = node.op() {
                for input in op_inputs(op) {
                    *held_by_graph.entry(input.id()).or_default() += 1;
                }
            }
        }
        Self {
            held_by_graph,
            sharing,
            done: Default::default(),
        }
    }

    /// `node`'s rule has run: free its storage if every tensor sharing it is done and nothing
    /// outside the graph holds any of them.
    fn rule_ran(&mut self, node: &Tensor) -> Result<()> {
        self.done.insert(node.id());
        let Some(sharers) = self.sharing.get(&node.storage_key()) else {
            return Ok(());
        };
        let free = sharers.iter().all(|t| self.done.contains(&t.id()))
            && node.storage_sharers() == sharers.len()
            && sharers.iter().all(|t| {
                t.handle_count() == self.held_by_graph.get(&t.id()).copied().unwrap_or(0)
            });
        if free {
            // A device that cannot make the placeholder keeps the values: the pass then holds
            // what `backward` would, and goes on.
            // One the forward pass freed (`release_unread`) needs no second placeholder.
            let key = node.storage_key();
            if node.is_released() || node.release_storage().is_ok() {
                self.sharing.remove(&key);
            }
        }
        Ok(())
    }
}

/// Whether a value some rule of the graph reads was freed: a second backward pass after
/// `backward_releasing`. A tensor freed because no rule reads it (`release_unread`) is not.
fn values_read_are_released(nodes: &[&Tensor]) -> bool {
    let mut read = std::collections::HashSet::new();
    for node in nodes {
        if let Some(op) = node.op() {
            let (inputs, output) = values_read(op);
            if output {
                read.insert(node.id());
            }
            read.extend(inputs.iter().filter(|(_, r)| *r).map(|(t, _)| t.id()));
        }
    }
    nodes
        .iter()
        .any(|node| node.is_released() && read.contains(&node.id()))
}

/// Which of `op`'s inputs, and whether its output, its backward rule reads the values of (in
/// `op_inputs`' order). A rule not listed here reads them all: that answer frees nothing, so it
/// is the one to give an op not checked.
fn values_read(op: &Op) -> (Vec<(&Tensor, bool)>, bool) {
    fn none(inputs: Vec<&Tensor>) -> (Vec<(&Tensor, bool)>, bool) {
        (inputs.into_iter().map(|t| (t, false)).collect(), false)
    }
    match op {
        // The rules below use the inputs' shapes, dtypes and devices, never their values.
        Op::Binary(lhs, rhs, BinaryOp::Add | BinaryOp::Sub) => none(vec![lhs, rhs]),
        Op::Unary(arg, UnaryOp::Neg)
        | Op::Affine { arg, .. }
        | Op::Reshape(arg)
        | Op::Broadcast(arg)
        | Op::Transpose(arg, _, _)
        | Op::Permute(arg, _)
        | Op::Narrow(arg, _, _, _)
        | Op::Copy(arg)
        | Op::ToDType(arg)
        | Op::ToDevice(arg)
        | Op::Reduce(arg, ReduceOp::Sum, _) => none(vec![arg]),
        Op::Cat(args, _) => none(args.iter().collect()),
        // grad * rhs and grad * lhs (grad / rhs and grad * lhs / rhs^2): the inputs only.
        Op::Binary(lhs, rhs, BinaryOp::Mul | BinaryOp::Div) => {
            (vec![(lhs, true), (rhs, true)], false)
        }
        // grad * exp(x), grad / (2 sqrt(x)): the output only.
        Op::Unary(arg, UnaryOp::Exp | UnaryOp::Sqrt) => (vec![(arg, false)], true),
        Op::CustomOp1(arg, c) => {
            let reads = c.backward_reads();
            (vec![(arg, reads.inputs[0])], reads.output)
        }
        Op::CustomOp2(arg1, arg2, c) => {
            let reads = c.backward_reads();
            (
                vec![(arg1, reads.inputs[0]), (arg2, reads.inputs[1])],
                reads.output,
            )
        }
        Op::CustomOp3(arg1, arg2, arg3, c) => {
            let reads = c.backward_reads();
            (
                vec![
                    (arg1, reads.inputs[0]),
                    (arg2, reads.inputs[1]),
                    (arg3, reads.inputs[2]),
                ],
                reads.output,
            )
        }
        op => (op_inputs(op).into_iter().map(|t| (t, true)).collect(), true),
    }
}

/// Frees, while the forward pass runs, the intermediates whose values no backward rule reads
/// (see [`release_unread`]). One per thread, present while a [`ReleaseUnread`] guard lives.
struct UnreadRelease {
    /// Every float tensor some op of the graph took as an input, by id.
    inputs: HashMap<TensorId, InputRecord>,
    /// The ids of those no consumer (and not their own op) reads so far: the ones that may be
    /// freed once nothing but the graph holds them.
    unread: Vec<TensorId>,
}

struct InputRecord {
    tensor: std::sync::Weak<crate::tensor::Tensor_>,
    /// The tensors whose ops took it, once per time taken: while one lives, its op holds a
    /// handle to this tensor.
    consumers: Vec<std::sync::Weak<crate::tensor::Tensor_>>,
    /// Whether some rule reads its values: a consumer's, or its own op's (its output).
    read: bool,
    /// Whether it is in `unread` (once).
    queued: bool,
}

thread_local! {
    static UNREAD_RELEASE: std::cell::RefCell<Option<UnreadRelease>> =
        const { std::cell::RefCell::new(None) };
}

/// While the returned guard lives, this thread frees the storage of each intermediate of the
/// graph whose values no backward rule reads, as soon as nothing but the graph holds it: a
/// residual branch's output that only an add takes, the source of a permuted copy, the copy that
/// only an add takes. PyTorch's autograd never saves these; candle's ops hold their inputs until
/// the graph is dropped, so they would stay until the backward pass (and `backward` keeps them
/// until it returns). Nothing changes in the values or the gradients: no rule reads them.
///
/// A tensor is freed only when every tensor sharing its storage (its views) qualifies too, and
/// none of them is a variable or held outside the graph (a clone, a view kept by the caller).
/// Each op recorded checks the candidates, so a tensor goes at the first op after its last
/// outside handle is dropped; dropping the guard checks them a last time. Which rules read what
/// is listed in `values_read`, and custom ops say it through
/// [`crate::CustomOp1::backward_reads`]; an op not listed is taken to read everything.
pub fn release_unread() -> ReleaseUnread {
    UNREAD_RELEASE.with(|state| {
        *state.borrow_mut() = Some(UnreadRelease {
            inputs: HashMap::new(),
            unread: Vec::new(),
        })
    });
    ReleaseUnread {
        _not_send: std::marker::PhantomData,
    }
}

/// The scope of [`release_unread`] on this thread.
pub struct ReleaseUnread {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for ReleaseUnread {
    fn drop(&mut self) {
        UNREAD_RELEASE.with(|state| {
            if let Ok(mut state) = state.try_borrow_mut() {
                if let Some(release) = state.as_mut() {
                    release.sweep();
                }
                *state = None;
            }
        });
    }
}

/// A tensor with an op was made: note what its op holds, and free what has become free.
pub(crate) fn op_recorded(tensor: &Tensor) {
    if tensor.op().is_none() {
        return;
    }
    UNREAD_RELEASE.with(|state| {
        // Busy only if making a placeholder recorded an op, which it does not.
        let Ok(mut state) = state.try_borrow_mut() else {
            return;
        };
        if let Some(release) = state.as_mut() {
            release.record(tensor);
            release.sweep();
        }
    });
}

impl UnreadRelease {
    fn record(&mut self, tensor: &Tensor) {
        let Some(op) = tensor.op() else { return };
        let (inputs, _) = values_read(op);
        for (input, read) in inputs {
            let record = self.inputs.entry(input.id()).or_insert_with(|| InputRecord {
                tensor: input.downgrade(),
                consumers: Vec::new(),
                read: !may_free(input),
                queued: false,
            });
            record.consumers.push(tensor.downgrade());
            record.read |= read;
            if !record.read && !record.queued {
                record.queued = true;
                self.unread.push(input.id());
            }
        }
    }

    /// Frees each storage whose sharers are all unread and held by the graph alone.
    fn sweep(&mut self) {
        let mut ready: HashMap<usize, Vec<Tensor>> = HashMap::new();
        let inputs = &mut self.inputs;
        self.unread.retain(|id| {
            let Some(record) = inputs.get_mut(id) else {
                return false;
            };
            let tensor = match record.tensor.upgrade().map(Tensor::from_arc) {
                Some(tensor) if !record.read && !tensor.is_released() => tensor,
                _ => return false,
            };
            record.consumers.retain(|c| c.strong_count() > 0);
            // The handles: the live consumers' ops, and the one just made by `upgrade`.
            if tensor.handle_count() == record.consumers.len() + 1 {
                ready.entry(tensor.storage_key()).or_default().push(tensor);
            }
            true
        });
        for sharers in ready.into_values() {
            // Every tensor holding the storage must be one of them; a view not in the list is
            // held outside the graph or read.
            if sharers[0].storage_sharers() == sharers.len() {
                // A device that cannot make the placeholder keeps the values.
                let _ = sharers[0].release_storage();
            }
        }
    }
}

/// Whether the release may ever free `tensor`: a float intermediate made by an op whose rule
/// does not read its output, and not a variable.
fn may_free(tensor: &Tensor) -> bool {
    !tensor.is_variable()
        && tensor.dtype().is_float()
        && tensor.op().as_ref().is_some_and(|op| !values_read(op).1)
}

/// Every tensor `op` holds as an input, whether or not the backward pass follows it.
fn op_inputs(op: &Op) -> Vec<&Tensor> {
    match op {
        Op::IndexAdd(t1, t2, t3, _)
        | Op::Scatter(t1, t2, t3, _)
        | Op::ScatterAdd(t1, t2, t3, _)
        | Op::CustomOp3(t1, t2, t3, _)
        | Op::WhereCond(t1, t2, t3) => vec![t1, t2, t3],
        Op::Conv1D { arg, kernel, .. }
        | Op::ConvTranspose1D { arg, kernel, .. }
        | Op::Conv2D { arg, kernel, .. }
        | Op::ConvTranspose2D { arg, kernel, .. } => vec![arg, kernel],
        Op::CustomOp2(lhs, rhs, _)
        | Op::Binary(lhs, rhs, _)
        | Op::Gather(lhs, rhs, _)
        | Op::IndexSelect(lhs, rhs, _)
        | Op::Matmul(lhs, rhs)
        | Op::SliceScatter0(lhs, rhs, _) => vec![lhs, rhs],
        Op::Cat(args, _) => args.iter().collect(),
        Op::Affine { arg, .. }
        | Op::Reshape(arg)
        | Op::UpsampleNearest1D { arg, .. }
        | Op::UpsampleNearest2D { arg, .. }
        | Op::UpsampleBilinear2D { arg, .. }
        | Op::AvgPool2D { arg, .. }
        | Op::MaxPool2D { arg, .. }
        | Op::Copy(arg)
        | Op::Broadcast(arg)
        | Op::Cmp(arg, _)
        | Op::Reduce(arg, _, _)
        | Op::ToDevice(arg)
        | Op::Transpose(arg, _, _)
        | Op::Permute(arg, _)
        | Op::Narrow(arg, _, _, _)
        | Op::Unary(arg, _)
        | Op::Elu(arg, _)
        | Op::Powf(arg, _)
        | Op::ToDType(arg)
        | Op::CustomOp1(arg, _) => vec![arg],
    }
}

/// `grad` without the op that made it, unless `CANDLE_GRAD_DO_NOT_DETACH` asks for the backward
/// pass's own graph. A rule such as the product's (`grad * rhs`) records its inputs, graph
/// tensors among them, as the gradient's op; a gradient kept with that op would keep them alive
/// as long as it is stored.
fn detached_unless_asked(grad: Tensor) -> Tensor {
    if CANDLE_GRAD_DO_NOT_DETACH.with(|b| *b) {
        grad
    } else {
        grad.detach()
    }
}

/// The add into zeros that `GradStore::accumulate` skips checked the first gradient against its
/// tensor: a backward rule that gives a gradient of another shape, dtype or device (candle's
/// conv2d backward at an odd remainder with stride 2 gives one a column short) was an error, and
/// must stay one rather than be stored.
fn check_first_gradient(tensor: &Tensor, grad: &Tensor) -> Result<()> {
    tensor.same_shape_binary_op(grad, "add")?;
    if tensor.dtype() != grad.dtype() {
        Err(Error::DTypeMismatchBinaryOp {
            lhs: tensor.dtype(),
            rhs: grad.dtype(),
            op: "add",
        }
        .bt())?
    }
    let (lhs, rhs) = (tensor.device().location(), grad.device().location());
    if lhs != rhs {
        Err(Error::DeviceMismatchBinaryOp {
            lhs,
            rhs,
            op: "add",
        }
        .bt())?
    }
    Ok(())
}

/// A store for gradients, associating a tensor id to the corresponding gradient tensor, used for back propagation.
#[derive(Default, Debug)]
pub struct GradStore(HashMap<TensorId, Tensor>);

impl GradStore {
    /// Create a new gradient store
    fn new() -> Self {
        Self::default()
    }

    /// Get the gradient tensor corresponding to the given tensor id
    pub fn get_id(&self, id: TensorId) -> Option<&Tensor> {
        self.0.get(&id)
    }

    /// Get the gradient tensor associated with the given tensor
    pub fn get(&self, tensor: &Tensor) -> Option<&Tensor> {
        self.0.get(&tensor.id())
    }

    /// Remove the gradient tensor associated with the given tensor, returning it if it exists
    pub fn remove(&mut self, tensor: &Tensor) -> Option<Tensor> {
        self.0.remove(&tensor.id())
    }

    /// Insert a gradient tensor associated with the given tensor, returning the previous gradient tensor if it existed
    pub fn insert(&mut self, tensor: &Tensor, grad: Tensor) -> Option<Tensor> {
        self.0.insert(tensor.id(), grad)
    }

    /// Insert a gradient tensor associated with the given tensor id, returning the previous gradient tensor if it existed
    pub fn insert_id(&mut self, id: TensorId, grad: Tensor) -> Option<Tensor> {
        self.0.insert(id, grad)
    }

    /// Get the gradient tensor associated with the given tensor, or, if it does not exist,
    /// insert a tensor of zeroes, with the same shape and type as the given tensors and return it
    fn or_insert(&mut self, tensor: &Tensor) -> Result<&mut Tensor> {
        let grad = match self.0.entry(tensor.id()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let grad = tensor.zeros_like()?;
                entry.insert(grad)
            }
        };
        Ok(grad)
    }

    /// Adds `grad` to the gradient stored for `tensor`; the first gradient to reach a tensor is
    /// stored as it is (made contiguous) instead of added into fresh zeros: in a network
    /// nearly every node has one consumer, and the zero fill and the add were a full pass and
    /// an allocation each for every edge of the graph (medxfer's patch, as candle PR #3822).
    fn accumulate(&mut self, tensor: &Tensor, grad: &Tensor) -> Result<()> {
        match self.0.entry(tensor.id()) {
            Entry::Occupied(mut entry) => {
                let sum_grad = entry.get_mut();
                *sum_grad = detached_unless_asked(sum_grad.add(grad)?);
            }
            Entry::Vacant(entry) => {
                check_first_gradient(tensor, grad)?;
                entry.insert(detached_unless_asked(grad.contiguous()?));
            }
        }
        Ok(())
    }

    /// As `accumulate`, subtracting: the first gradient is stored negated.
    fn accumulate_neg(&mut self, tensor: &Tensor, grad: &Tensor) -> Result<()> {
        match self.0.entry(tensor.id()) {
            Entry::Occupied(mut entry) => {
                let sum_grad = entry.get_mut();
                *sum_grad = detached_unless_asked(sum_grad.sub(grad)?);
            }
            Entry::Vacant(entry) => {
                check_first_gradient(tensor, grad)?;
                entry.insert(detached_unless_asked(grad.neg()?));
            }
        }
        Ok(())
    }

    /// Extend this gradient store with the contents of another.
    /// If an entry is already occupied, updates and ensures new tensor follows correct detach semantics.
    /// Otherwise simply inserts.
    pub fn extend(&mut self, other: Self) -> Result<()> {
        for (id, grad) in other.0 {
            match self.0.entry(id) {
                Entry::Occupied(mut entry) => {
                    let new_grad = entry.get().add(&grad)?;

                    let do_not_detach = CANDLE_GRAD_DO_NOT_DETACH.with(|b| *b);
                    let new_grad = if do_not_detach {
                        new_grad
                    } else {
                        new_grad.detach()
                    };

                    *entry.get_mut() = new_grad;
                }
                Entry::Vacant(entry) => {
                    entry.insert(grad);
                }
            }
        }
        Ok(())
    }

    /// Get the tensor ids of the stored gradient tensors
    pub fn get_ids(&self) -> impl Iterator<Item = &TensorId> {
        self.0.keys()
    }
}
