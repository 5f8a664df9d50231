//! The training step's graph: what it keeps, and its backward pass.
//!
//! PyTorch's autograd keeps what each node's backward reads, and frees it once that backward has
//! run. candle's ops hold every input until the graph is dropped. Two of the vendored
//! candle-core's additions close the gap (vendor/README.md), with the same values and gradients
//! to the bit:
//! - the forward pass, run by [`training_forward`], frees each intermediate whose values no
//!   backward rule reads (an addend of a residual, the source of a permuted copy) once nothing
//!   but the graph holds it (`candle_core::backprop::release_unread`);
//! - [`backward`] frees each intermediate once the pass is done with it
//!   (`Tensor::backward_releasing`). candle's own `backward` keeps the whole graph until it
//!   returns, so a step's peak is the graph plus every gradient made on the way.
//!
//! `MEDXFER_BACKWARD=keep` turns both off (candle's `backward`, nothing freed in the forward
//! pass), to measure what they gain (`.ci/gpu`'s `eval_ablations` step).

use std::sync::OnceLock;

use candle_core::Tensor;
use candle_core::backprop::GradStore;

use crate::Result;

/// Whether `MEDXFER_BACKWARD=keep` asks for candle's own behaviour.
fn keep_graph() -> bool {
    static KEEP: OnceLock<bool> = OnceLock::new();
    *KEEP.get_or_init(|| std::env::var("MEDXFER_BACKWARD").is_ok_and(|value| value == "keep"))
}

/// Runs `forward`, a training step's forward pass and loss, on this thread, freeing the
/// intermediates of its graph that the backward pass will not read as soon as nothing but the
/// graph holds them. What `forward` returns, and anything the caller holds, stays.
pub fn training_forward<T>(forward: impl FnOnce() -> Result<T>) -> Result<T> {
    let _release = (!keep_graph()).then(candle_core::backprop::release_unread);
    forward()
}

/// The gradients of `loss` with respect to every variable of its graph. The graph's
/// intermediates are freed on the way, so the graph cannot be backpropagated again.
pub fn backward(loss: &Tensor) -> Result<GradStore> {
    Ok(if keep_graph() { loss.backward()? } else { loss.backward_releasing()? })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::{Device, Var};

    use super::*;

    /// d/dx sum(y * y + x), y = x * x, = 4x^3 + 1, and the intermediates are gone afterwards: a
    /// second pass, whose product rule would read y, is the error that says so.
    #[test]
    fn gives_the_gradient_and_frees_the_graph() {
        let x = Var::from_tensor(&Tensor::new(&[1f32, -2.0, 0.5], &Device::Cpu).unwrap()).unwrap();
        let loss = training_forward(|| {
            let y = (x.as_tensor() * x.as_tensor())?;
            Ok(((&y * &y)? + x.as_tensor())?.sum_all()?)
        })
        .unwrap();
        let grads = backward(&loss).unwrap();
        assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), vec![5.0, -31.0, 1.5]);
        if std::env::var("MEDXFER_BACKWARD").as_deref() != Ok("keep") {
            let error = backward(&loss).unwrap_err().to_string();
            assert!(error.contains("run the forward pass again"), "{error}");
        }
    }

    /// The forward pass frees what no rule reads (here x * x, 3 x^2 and the sum's input
    /// 3 x^2 + x; `medxfer-kernels`' memory test counts such bytes) and keeps what the caller
    /// holds: the gradient is 6x + 1 as with the graph kept, and a tensor the forward pass
    /// returns keeps its values.
    #[test]
    fn the_training_forward_pass_keeps_what_is_read_or_held() {
        let x = Var::from_tensor(&Tensor::new(&[1f32, -2.0, 0.5], &Device::Cpu).unwrap()).unwrap();
        let (loss, held) = training_forward(|| {
            let scaled = ((x.as_tensor() * x.as_tensor())? * 3.0)?;
            let held = (&scaled + 0.0)?;
            Ok(((scaled + x.as_tensor())?.sum_all()?, held))
        })
        .unwrap();
        assert_eq!(held.to_vec1::<f32>().unwrap(), vec![3.0, 12.0, 0.75]);
        let grads = backward(&loss).unwrap();
        assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), vec![7.0, -11.0, 4.0]);
        assert_eq!(held.to_vec1::<f32>().unwrap(), vec![3.0, 12.0, 0.75], "held outside the graph");
    }
}
