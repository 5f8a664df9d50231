//! `Tensor::backward_releasing` (vendor/README.md), the backward pass medxfer trains with, frees
//! each intermediate once the pass is done with it; `backward` keeps them all until it returns.
//! Observed here through this test binary's allocator, which counts live heap bytes: a probe op
//! at the start of a chain of intermediates reads the count when its backward rule runs, the
//! last rule of the pass. Also what a training forward pass of the residual branch's linear layer
//! keeps. The tests take turns (`SERIAL`), and no other test in this binary allocates meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor, Var};

#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// One test at a time: each counts the whole process's heap.
static SERIAL: Mutex<()> = Mutex::new(());

/// Live heap bytes when the probe's backward rule ran.
static LIVE_AT_PROBE: AtomicUsize = AtomicUsize::new(0);

/// The identity, whose backward rule records the live heap bytes.
struct Probe;

impl CustomOp1 for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = storage else { candle_core::bail!("probe: f32 only") };
        let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("probe: contiguous only") };
        Ok((CpuStorage::F32(values[start..end].to_vec()), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        LIVE_AT_PROBE.store(ALLOCATOR.allocated(), Ordering::SeqCst);
        Ok(Some(grad.clone()))
    }
}

const VALUES: usize = 1 << 20;
const BYTES: usize = VALUES * 4;
const CHAIN: usize = 8;

/// x -> probe -> eight intermediates of 4 MiB each (the last held by the caller when `hold`)
/// -> sum. Returns the live bytes at the probe's rule, above those before the forward pass, and
/// the gradient of x.
fn run(releasing: bool, hold: bool) -> (usize, Vec<f32>) {
    let x = Var::from_tensor(&Tensor::arange(0f32, VALUES as f32, &Device::Cpu).unwrap().affine(1e-6, 0.0).unwrap()).unwrap();
    let before = ALLOCATOR.allocated();
    let mut y = x.as_tensor().apply_op1(Probe).unwrap();
    let mut held = None;
    for step in 0..CHAIN {
        // Each rule reads its input: y * y keeps y for its backward rule.
        y = ((&y * &y).unwrap() * 0.5).unwrap().affine(1.0, step as f64 * 1e-3).unwrap();
        if hold && step == 3 {
            held = Some((y.clone(), y.to_vec1::<f32>().unwrap()));
        }
    }
    let loss = y.sum_all().unwrap();
    let grads = if releasing { loss.backward_releasing() } else { loss.backward() }.unwrap();
    if let Some((tensor, values)) = held {
        assert_eq!(tensor.to_vec1::<f32>().unwrap(), values, "a tensor the caller holds keeps its values");
    }
    let live = LIVE_AT_PROBE.load(Ordering::SeqCst) - before;
    (live, grads.get(x.as_tensor()).unwrap().to_vec1().unwrap())
}

#[test]
fn the_releasing_pass_frees_each_intermediate_once_done_with_it() {
    let _turn = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (kept, expected) = run(false, false);
    let (released, gradient) = run(true, false);
    let (released_but_held, gradient_held) = run(true, true);
    eprintln!("live at the probe: {kept} bytes keeping, {released} releasing, {released_but_held} releasing with one held");
    // Plain: every node of the chain (three per step, 4 MiB each) is still alive at the probe.
    assert!(kept >= 3 * CHAIN * BYTES, "backward keeps the graph: {kept} bytes live at the probe");
    // Releasing: the probe's output, its incoming gradient and the gradient store's few.
    assert!(released <= 4 * BYTES, "backward_releasing kept {released} bytes live at the probe ({kept} without releasing)");
    // A tensor the caller holds (and only it) stays: it, and this test's copy of its values.
    assert!(
        released_but_held >= released + 2 * BYTES && released_but_held < released + 3 * BYTES,
        "holding one intermediate: {released_but_held} bytes, {released} without"
    );
    assert_eq!(gradient, expected, "the same gradient to the bit");
    assert_eq!(gradient_held, expected, "the same gradient to the bit, holding an intermediate");
}

/// residual + x W' + b recording a gradient is one node: the graph keeps its output (and the
/// packed parameters, tiny here), where the separate linear layer and add kept the product's
/// output too.
#[test]
fn the_residual_linear_layer_keeps_one_output_in_the_graph() {
    let _turn = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (rows, features) = (4096, 32);
    let on = |values: Vec<f32>, shape: (usize, usize)| Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap();
    let x = on((0..rows * features).map(|i| (i % 7) as f32 * 0.1).collect(), (rows, features));
    let w = on((0..features * features).map(|i| (i % 5) as f32 * 0.01).collect(), (features, features));
    let b = Var::from_tensor(&Tensor::ones(features, candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
    let r = on((0..rows * features).map(|i| (i % 3) as f32).collect(), (rows, features));
    let kept = |fused: bool| {
        let before = ALLOCATOR.allocated();
        let y = if fused {
            medxfer_kernels::linear_residual(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), r.as_tensor()).unwrap()
        } else {
            (medxfer_kernels::linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())).unwrap() + r.as_tensor()).unwrap()
        };
        let kept = ALLOCATOR.allocated() - before;
        drop(y);
        kept
    };
    // The first product on each thread reserves faer's buffers (twice the L3 cache per thread),
    // and which rayon thread runs which product varies: the least of several calls is the one
    // that reserved nothing (a CI run once counted 960 MiB of them in the single call it made).
    let least = |fused: bool| (0..4).map(|_| kept(fused)).min().unwrap_or(usize::MAX);
    let (fused, separate) = (least(true), least(false));
    let output = rows * features * 4;
    eprintln!("graph bytes: {fused} as one node, {separate} as a linear layer and an add");
    assert!(fused >= output && fused < output + output / 8, "one node keeps {fused} bytes for a {output}-byte output");
    assert!(separate >= 2 * output, "the separate ops keep {separate} bytes for a {output}-byte output");
}

/// What `release_unread` leaves of a forward pass x -> a = x * x -> its transpose, copied ->
/// d = 0.5 copy + 1 -> e = d * d -> sum, for 4 MiB tensors: the live bytes above those before
/// it, once e is made and once the loss is, and the gradient of x. `hold` keeps a clone of a
/// (or a view of it) outside the graph, and checks a's values afterwards.
fn forward_pass(release: bool, hold: Hold) -> (usize, usize, Vec<f32>) {
    let side = 1 << 10;
    let x = Var::from_tensor(
        &Tensor::arange(0f32, VALUES as f32, &Device::Cpu).unwrap().affine(1e-6, 0.0).unwrap().reshape((side, side)).unwrap(),
    )
    .unwrap();
    let before = ALLOCATOR.allocated();
    let guard = release.then(candle_core::backprop::release_unread);
    let a = (x.as_tensor() * x.as_tensor()).unwrap();
    let held = match hold {
        Hold::Nothing => None,
        Hold::Clone => Some(a.clone()),
        Hold::View => Some(a.narrow(0, 0, 4).unwrap()),
    };
    let held = held.map(|tensor| {
        let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (tensor, values)
    });
    let d = a.t().unwrap().contiguous().unwrap().affine(0.5, 1.0).unwrap();
    drop(a);
    let e = (&d * &d).unwrap();
    drop(d);
    let with_e = ALLOCATOR.allocated() - before;
    let loss = e.sum_all().unwrap();
    drop(e);
    drop(guard);
    let with_loss = ALLOCATOR.allocated() - before;
    let grads = loss.backward().unwrap();
    if let Some((tensor, values)) = held {
        assert_eq!(tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values, "a tensor held outside the graph keeps its values");
    }
    (with_e, with_loss, grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap())
}

#[derive(Clone, Copy)]
enum Hold {
    Nothing,
    Clone,
    View,
}

/// a, its transposed copy and e are read by no backward rule (the transpose, the affine map and
/// the sum read only shapes); d is, by the product's rule. Without the release the graph keeps
/// all four; with it, only d, and the others go during the forward pass, each at the first op
/// after the caller's last handle to it is dropped. What the caller holds stays, a view of a
/// included. The gradients are the same bits.
#[test]
fn the_forward_pass_frees_what_no_backward_rule_reads() {
    let _turn = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (kept_at_e, kept, expected) = forward_pass(false, Hold::Nothing);
    let (freed_at_e, freed, gradient) = forward_pass(true, Hold::Nothing);
    eprintln!("graph bytes: {kept_at_e} then {kept} keeping, {freed_at_e} then {freed} freeing what is unread");
    assert!(kept >= 4 * BYTES && kept_at_e >= 4 * BYTES, "the graph keeps a, the copy, d and e: {kept_at_e}, {kept} bytes");
    // At e: d and e (the copy went when d's op was recorded, a with it); after the loss: d.
    assert!((2 * BYTES..2 * BYTES + BYTES / 8).contains(&freed_at_e), "{freed_at_e} bytes live once e is made");
    assert!((BYTES..BYTES + BYTES / 8).contains(&freed), "{freed} bytes live after the loss");
    assert_eq!(gradient, expected, "the same gradient to the bit");
    for hold in [Hold::Clone, Hold::View] {
        let (_, held, gradient) = forward_pass(true, hold);
        // a stays (and, for the view, this test's copy of its first rows is small).
        assert!((2 * BYTES..3 * BYTES + BYTES / 8).contains(&held), "{held} bytes live holding a");
        assert_eq!(gradient, expected, "the same gradient to the bit, holding a");
    }
}
