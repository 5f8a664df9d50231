//! The training step's backward pass.
//!
//! It frees each intermediate of the graph once the pass is done with it
//! (`Tensor::backward_releasing`, vendor/README.md), as PyTorch does. candle's own `backward`
//! keeps the whole graph until it returns, so a step's peak is the graph plus every gradient
//! made on the way. The gradients are the same to the bit. `MEDXFER_BACKWARD=keep` takes
//! candle's `backward`, to measure what the release gains (`.ci/gpu`'s `eval_ablations` step).

use std::sync::OnceLock;

use candle_core::Tensor;
use candle_core::backprop::GradStore;

use crate::Result;

/// The gradients of `loss` with respect to every variable of its graph. The graph's
/// intermediates are freed on the way, so the graph cannot be backpropagated again.
pub fn backward(loss: &Tensor) -> Result<GradStore> {
    static KEEP: OnceLock<bool> = OnceLock::new();
    let keep = *KEEP.get_or_init(|| std::env::var("MEDXFER_BACKWARD").is_ok_and(|value| value == "keep"));
    Ok(if keep { loss.backward()? } else { loss.backward_releasing()? })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::{Device, Var};

    use super::*;

    /// d/dx sum((x * x) * 3 + x) = 6x + 1, and the intermediates are gone afterwards: a second
    /// pass is the error that says so.
    #[test]
    fn gives_the_gradient_and_frees_the_graph() {
        let x = Var::from_tensor(&Tensor::new(&[1f32, -2.0, 0.5], &Device::Cpu).unwrap()).unwrap();
        let loss = (((x.as_tensor() * x.as_tensor()).unwrap() * 3.0).unwrap() + x.as_tensor()).unwrap().sum_all().unwrap();
        let grads = backward(&loss).unwrap();
        assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), vec![7.0, -11.0, 4.0]);
        if std::env::var("MEDXFER_BACKWARD").as_deref() != Ok("keep") {
            let error = backward(&loss).unwrap_err().to_string();
            assert!(error.contains("run the forward pass again"), "{error}");
        }
    }
}
