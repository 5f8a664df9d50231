//! candle's backward pass as medxfer trains through it. The workspace builds candle-core with its
//! gradient accumulation patched (vendor/README.md): the first gradient to reach a node is stored
//! as it is instead of being added into fresh zeros. Two things must then hold, and are checked
//! here on the CPU:
//! - the accumulation rules still give the hand-derived gradients, where a node is reached once,
//!   several times, first through a subtraction, or first through a view;
//! - no op hands back a gradient that views a larger buffer, since a stored gradient keeps
//!   alive all the storage it views, until the optimiser's step for a parameter's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::{CpuStorage, DType, Device, Storage, Tensor, Var};
use medxfer_kernels::{BatchNormParams, FusedActivation};

fn var(values: &[f32], shape: &[usize]) -> Var {
    Var::from_tensor(&Tensor::from_slice(values, shape, &Device::Cpu).unwrap()).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn gradient(grads: &candle_core::backprop::GradStore, v: &Var) -> Vec<f32> {
    values(grads.get(v.as_tensor()).expect("a gradient for every variable"))
}

#[test]
fn a_node_reached_several_times_sums_its_gradients() {
    // y = sum(x * x + x): the product's two operands are both x, then the sum adds x again.
    let x = var(&[1.0, 2.0, -3.0], &[3]);
    let y = ((x.as_tensor() * x.as_tensor()).unwrap() + x.as_tensor()).unwrap().sum_all().unwrap();
    let grads = y.backward().unwrap();
    assert_eq!(gradient(&grads, &x), vec![3.0, 5.0, -5.0], "2x + 1");
}

#[test]
fn subtraction_division_and_negation_give_negative_gradients() {
    let a = var(&[2.0, -4.0], &[2]);
    let b = var(&[1.0, 2.0], &[2]);
    // y = sum((a - b) - 2b + a / b - (-a)): dy/da = 1 + 1/b + 1, dy/db = -1 - 2 - a/b^2.
    let (at, bt) = (a.as_tensor(), b.as_tensor());
    let y = ((((at - bt).unwrap() - (bt * 2.0).unwrap()).unwrap() + (at / bt).unwrap()).unwrap() - at.neg().unwrap()).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(gradient(&grads, &a), vec![3.0, 2.5]);
    assert_eq!(gradient(&grads, &b), vec![-5.0, -2.0]);
    // A node whose only gradient arrives through the subtrahend.
    let y = (Tensor::new(&[10f32, 10.0], &Device::Cpu).unwrap() - bt).unwrap().sum_all().unwrap();
    assert_eq!(gradient(&y.backward().unwrap(), &b), vec![-1.0, -1.0]);
}

#[test]
fn gradients_reaching_a_node_through_views_are_summed_in_its_shape() {
    // x (2, 3): through a transpose (a non-contiguous gradient arrives first), a broadcast over
    // rows, a mean over columns and a narrow of the flattened values.
    let x = var(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let w = Tensor::from_slice(&[1f32, 2.0, 3.0, 4.0, 5.0, 6.0], (3, 2), &Device::Cpu).unwrap();
    let xt = x.as_tensor();
    let through_transpose = (xt.t().unwrap() * &w).unwrap().sum_all().unwrap();
    let through_mean = xt.mean(1).unwrap().sum_all().unwrap();
    let through_narrow = xt.flatten_all().unwrap().narrow(0, 1, 3).unwrap().sum_all().unwrap();
    let y = ((through_transpose + through_mean).unwrap() + through_narrow).unwrap();
    let grads = y.backward().unwrap();
    // w' = [[1, 3, 5], [2, 4, 6]], + 1/3 everywhere, + 1 at flat positions 1, 2, 3.
    let expected = [1.0, 4.0, 6.0, 3.0, 4.0, 6.0].map(|v: f32| v + 1.0 / 3.0);
    let got = gradient(&grads, &x);
    assert!(got.iter().zip(expected).all(|(g, e)| (g - e).abs() < 1e-6), "{got:?} against {expected:?}");

    // A bias broadcast over the rows of a batch gathers one gradient per row.
    let b = var(&[0.5, -0.5, 1.0], &[3]);
    let y = Tensor::ones((4, 3), DType::F32, &Device::Cpu).unwrap().broadcast_add(b.as_tensor()).unwrap().sqr().unwrap().sum_all().unwrap();
    assert_eq!(gradient(&y.backward().unwrap(), &b), vec![12.0, 4.0, 16.0], "2 (1 + b) per row, 4 rows");
}

#[test]
fn where_cond_routes_each_gradient_to_the_branch_taken() {
    let x = var(&[1.0, 2.0, 3.0], &[3]);
    let z = var(&[4.0, 5.0, 6.0], &[3]);
    let mask = Tensor::new(&[1u8, 0, 1], &Device::Cpu).unwrap();
    let y = mask.where_cond(x.as_tensor(), z.as_tensor()).unwrap().sqr().unwrap().sum_all().unwrap();
    let grads = y.backward().unwrap();
    assert_eq!(gradient(&grads, &x), vec![2.0, 0.0, 6.0]);
    assert_eq!(gradient(&grads, &z), vec![0.0, 10.0, 0.0]);
}

/// An op whose backward rule is wrong: it hands back a gradient one value short.
struct ShortGradient;

impl candle_core::CustomOp1 for ShortGradient {
    fn name(&self) -> &'static str {
        "short-gradient"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &candle_core::Layout) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
        Ok((storage.clone(), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.narrow(0, 0, arg.dim(0)? - 1)?))
    }
}

#[test]
fn a_gradient_of_the_wrong_shape_is_an_error_not_a_stored_gradient() {
    // candle's add into zeros caught this; the patched accumulation checks it itself.
    let x = var(&[1.0, 2.0, 3.0], &[3]);
    let y = x.as_tensor().apply_op1(ShortGradient).unwrap().sum_all().unwrap();
    let error = y.backward().expect_err("a gradient of 2 values for a tensor of 3").to_string();
    assert!(error.contains("shape mismatch"), "{error}");
}

/// The f32 values a CPU tensor's storage holds, whatever part of it the tensor views.
fn storage_len(t: &Tensor) -> usize {
    let (storage, _) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => v.len(),
        other => panic!("an f32 CPU gradient, not {:?}", other.dtype()),
    }
}

fn random(shape: &[usize], seed: u64) -> Var {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let count = shape.iter().product();
    var(&(0..count).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), shape)
}

/// Backpropagates a random weighting of `op`'s output and checks every gradient's storage:
/// an input's may share a buffer with the parameters' gradients (freed with it, at once), a
/// parameter's may hold no more than the parameters' gradients together.
fn check_storages(name: &str, inputs: &[&Var], params: &[&Var], op: impl Fn() -> Tensor) {
    let y = op();
    let weights = random(y.dims(), 99);
    let grads = (y * weights.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    let param_values: usize = params.iter().map(|p| p.elem_count()).sum();
    for (i, input) in inputs.iter().enumerate() {
        let g = grads.get(input.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient for input {i}"));
        let held = storage_len(g);
        assert!(held <= input.elem_count() + param_values, "{name}: input {i}'s gradient holds {held} values");
    }
    for (i, param) in params.iter().enumerate() {
        let g = grads.get(param.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient for parameter {i}"));
        let held = storage_len(g);
        assert!(
            held <= param_values,
            "{name}: parameter {i}'s gradient ({} values) holds a storage of {held}: it keeps a larger buffer alive",
            param.elem_count()
        );
    }
}

#[test]
fn no_gradient_keeps_a_larger_buffer_alive() {
    // Many rows and few features, so that the input's gradient dwarfs the parameters'.
    let x = random(&[4, 16, 8], 1);
    let w = random(&[6, 8], 2);
    let b = random(&[6], 3);
    check_storages("linear", &[&x], &[&w, &b], || medxfer_kernels::linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())).unwrap());
    check_storages("linear without bias", &[&x], &[&w], || medxfer_kernels::linear(x.as_tensor(), w.as_tensor(), None).unwrap());
    let (gamma, beta) = (random(&[8], 4), random(&[8], 5));
    check_storages("layer norm", &[&x], &[&gamma, &beta], || {
        medxfer_kernels::layer_norm(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-6).unwrap()
    });
    let qkv = random(&[2, 5, 3 * 8], 6);
    check_storages("attention", &[&qkv], &[], || medxfer_kernels::attention(qkv.as_tensor(), 2, 0.5).unwrap());

    let image = random(&[2, 4, 9, 9], 7);
    let (gamma, beta) = (random(&[4], 8), random(&[4], 9));
    let params = || BatchNormParams { gamma: gamma.as_tensor(), beta: beta.as_tensor(), eps: 1e-5 };
    check_storages("batch norm", &[&image], &[&gamma, &beta], || {
        medxfer_kernels::batch_norm_train(image.as_tensor(), params(), None, FusedActivation::Relu).unwrap().y
    });
    let kernel = random(&[4, 4, 3, 3], 10);
    check_storages("convolution + batch norm", &[&image], &[&kernel, &gamma, &beta], || {
        medxfer_kernels::conv_batch_norm_train(image.as_tensor(), kernel.as_tensor(), 1, 1, params(), FusedActivation::Relu).unwrap().y
    });
    let bias = random(&[4], 11);
    check_storages("convolution", &[&image], &[&kernel, &bias], || {
        medxfer_kernels::conv2d(image.as_tensor(), kernel.as_tensor(), Some(bias.as_tensor()), 2, 1).unwrap()
    });
    let depthwise = random(&[4, 1, 3, 3], 12);
    check_storages("depthwise convolution", &[&image], &[&depthwise], || {
        medxfer_kernels::depthwise_conv2d(image.as_tensor(), depthwise.as_tensor(), 1, 1).unwrap()
    });
    let grouped = random(&[4, 2, 3, 3], 13);
    check_storages("grouped convolution", &[&image], &[&grouped], || {
        medxfer_kernels::grouped_conv2d(image.as_tensor(), grouped.as_tensor(), 2, 1, 1).unwrap()
    });
    check_storages("max pooling", &[&image], &[], || medxfer_kernels::max_pool_3x3_s2_p1(image.as_tensor()).unwrap());
    check_storages("GELU", &[&x], &[], || medxfer_kernels::gelu_erf(x.as_tensor()).unwrap());
    let gate = random(&[2, 4, 1, 1], 14);
    check_storages("channel gate", &[&image], &[&gate], || medxfer_kernels::channel_gate(image.as_tensor(), gate.as_tensor()).unwrap());
}

/// `backward_releasing`, the pass medxfer trains with, frees intermediates as it goes, and
/// `release_unread` frees during the forward pass those no backward rule reads; each must give
/// `backward`'s gradients to the bit. A small network through the workspace's ops: the fused
/// convolution + BatchNorm (whose op keeps the convolution's output), a BatchNorm with a
/// residual that is another branch's output (read by nothing), views that share storage
/// (reshape, transpose, narrow, a permutation of a tensor that is read), a copy only an affine
/// map takes, a node used twice, the squeeze-excitation gate, a linear layer with a residual
/// from another (read by nothing) and cross-entropy. The graph is built anew for each pass. A
/// second pass over a released graph is an error that says to run the forward pass again; a
/// first pass over a graph whose unread tensors were freed is not.
#[test]
fn the_releasing_pass_gives_the_same_gradients_to_the_bit() {
    let image = random(&[3, 4, 9, 9], 21);
    let kernel = random(&[6, 4, 3, 3], 22);
    let kernel2 = random(&[6, 6, 3, 3], 23);
    let (gamma, beta) = (random(&[6], 24), random(&[6], 25));
    let (gamma2, beta2) = (random(&[6], 26), random(&[6], 27));
    let gate = random(&[3, 6, 1, 1], 28);
    let w = random(&[5, 6 * 9], 29);
    let b = random(&[5], 30);
    let shortcut = random(&[6, 6, 1, 1], 31);
    let (gamma3, beta3) = (random(&[6], 32), random(&[6], 33));
    let w2 = random(&[5, 6 * 9], 34);
    let vars = [&image, &kernel, &kernel2, &gamma, &beta, &gamma2, &beta2, &gate, &w, &b, &shortcut, &gamma3, &beta3, &w2];
    let loss = || {
        let params = BatchNormParams { gamma: gamma.as_tensor(), beta: beta.as_tensor(), eps: 1e-5 };
        let params2 = BatchNormParams { gamma: gamma2.as_tensor(), beta: beta2.as_tensor(), eps: 1e-5 };
        let params3 = BatchNormParams { gamma: gamma3.as_tensor(), beta: beta3.as_tensor(), eps: 1e-5 };
        let a =
            medxfer_kernels::conv_batch_norm_train(image.as_tensor(), kernel.as_tensor(), 2, 1, params, FusedActivation::Relu).unwrap().y;
        let c = medxfer_kernels::conv2d(&a, kernel2.as_tensor(), None, 1, 1).unwrap();
        let down = medxfer_kernels::conv_batch_norm_train(&a, shortcut.as_tensor(), 1, 0, params3, FusedActivation::Identity).unwrap().y;
        let r = medxfer_kernels::batch_norm_train(&c, params2, Some(&down), FusedActivation::Relu6).unwrap().y;
        let g =
            medxfer_kernels::channel_gate(&r, &(&r * 1.0).unwrap().mean_keepdim((2, 3)).unwrap().broadcast_add(gate.as_tensor()).unwrap())
                .unwrap();
        let moved = (g.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap() * 0.5).unwrap().permute((0, 3, 1, 2)).unwrap();
        let twice = (&moved * &g).unwrap();
        let viewed = twice.transpose(2, 3).unwrap().reshape((3, 6, 25)).unwrap().narrow(2, 0, 9).unwrap().reshape((3, 54)).unwrap();
        let residual = medxfer_kernels::linear(&viewed, w2.as_tensor(), None).unwrap();
        let logits = medxfer_kernels::linear_residual(&viewed, w.as_tensor(), Some(b.as_tensor()), &residual).unwrap();
        candle_nn::loss::cross_entropy(&logits, &Tensor::new(&[0u32, 3, 4], &Device::Cpu).unwrap()).unwrap()
    };
    let unread_freed = || {
        let _release = candle_core::backprop::release_unread();
        loss()
    };
    let kept = loss().backward().unwrap();
    let passes = [
        ("backward_releasing", loss().backward_releasing().unwrap()),
        ("release_unread, backward", unread_freed().backward().unwrap()),
        ("release_unread, backward_releasing", unread_freed().backward_releasing().unwrap()),
    ];
    for (pass, released) in &passes {
        for (index, v) in vars.iter().enumerate() {
            let (a, b) = (gradient(&kept, v), gradient(released, v));
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{pass}: variable {index}"
            );
        }
    }
    let once = unread_freed();
    once.backward_releasing().unwrap();
    let error = once.backward_releasing().unwrap_err().to_string();
    assert!(error.contains("freed by an earlier backward_releasing; run the forward pass again"), "{error}");
}
