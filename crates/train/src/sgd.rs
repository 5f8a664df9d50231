//! SGD with momentum, Nesterov and coupled weight decay over a model's named variables, step for
//! step as `torch.optim.SGD(params, lr, momentum, weight_decay, nesterov=True)` (dampening 0);
//! the update of each parameter is medxfer-kernels' `sgd_update`, which says the formula.
//!
//! candle-nn's own SGD has no momentum. The momentum buffers are tensors, saved and restored
//! with a checkpoint so that a resumed run continues exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
pub use medxfer_kernels::SgdSettings;

use crate::error::{Error, Result};

/// SGD over named variables.
#[derive(Debug)]
pub struct NesterovSgd {
    vars: Vec<(String, Var)>,
    buffers: HashMap<String, Tensor>,
    /// The settings of the next step (the schedule changes the learning rate).
    pub settings: SgdSettings,
}

impl NesterovSgd {
    /// The optimizer of `vars` (name, variable), with no momentum yet.
    pub fn new(vars: Vec<(String, Var)>, settings: SgdSettings) -> Self {
        Self { vars, buffers: HashMap::new(), settings }
    }

    /// The learning rate of the next steps.
    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        self.settings.learning_rate = learning_rate;
    }

    /// One step from the gradients of a backward pass. A variable without a gradient (unused
    /// in the forward pass) is left alone, as PyTorch skips parameters whose grad is None.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (name, var) in &self.vars {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let update = medxfer_kernels::sgd_update(var.as_tensor(), grad, self.buffers.get(name), self.settings)?;
            var.set(&update.param)?;
            if let Some(buffer) = update.buffer {
                self.buffers.insert(name.clone(), buffer);
            }
        }
        Ok(())
    }

    /// The momentum buffers under their variables' names (for a checkpoint).
    pub fn state(&self) -> &HashMap<String, Tensor> {
        &self.buffers
    }

    /// Restores momentum buffers saved by [`NesterovSgd::state`]; each must belong to a known
    /// variable and have its shape.
    pub fn restore(&mut self, buffers: HashMap<String, Tensor>) -> Result<()> {
        for (name, buffer) in &buffers {
            let Some((_, var)) = self.vars.iter().find(|(n, _)| n == name) else {
                return Err(Error::Checkpoint(format!("momentum buffer {name} has no parameter")));
            };
            if buffer.dims() != var.dims() {
                return Err(Error::Checkpoint(format!(
                    "momentum buffer {name} has shape {:?}, the parameter {:?}",
                    buffer.dims(),
                    var.dims()
                )));
            }
        }
        self.buffers = buffers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::Device;

    use super::*;

    /// The optimizer's steps against the update written out by hand in f32, bit for bit: both
    /// momentum variants, with and without weight decay, over three steps (the first without
    /// a buffer, then the buffers it keeps), on values that include -0, tiny and large magnitudes.
    #[test]
    fn the_fused_step_is_the_formula_bit_for_bit() {
        let start: Vec<f32> = vec![0.5, -0.0, 3.25e-8, -1.5e6, 7.0, -2.75, 0.1, 1e-3, -0.3];
        let gradients: [Vec<f32>; 3] = [
            vec![0.1, -0.0, 1e-7, 2.0, -0.0, 0.3, -1e-9, 5.0, 0.25],
            vec![-0.2, 0.0, 3e-6, -4.0, 1.0, 0.0, 2e-9, -5.0, 0.5],
            vec![0.7, -1.0, 0.0, 8.0, -2.0, 0.6, 0.0, 1.0, -0.75],
        ];
        for nesterov in [true, false] {
            for weight_decay in [0.0, 1e-4] {
                let settings = SgdSettings { learning_rate: 0.03, momentum: 0.9, weight_decay, nesterov };
                let var = Var::from_vec(start.clone(), (3, 3), &Device::Cpu).unwrap();
                let mut optimizer = NesterovSgd::new(vec![("w".into(), var.clone())], settings);
                let (mut p, mut b): (Vec<f32>, Option<Vec<f32>>) = (start.clone(), None);
                let (lr, m, wd) = (0.03f64 as f32, 0.9f64 as f32, weight_decay as f32);
                for gradient in gradients.clone() {
                    let grad = Tensor::from_vec(gradient, (3, 3), &Device::Cpu).unwrap();
                    // A GradStore with the one gradient: backward of sum(w * grad).
                    let grads = (var.as_tensor() * &grad).unwrap().sum_all().unwrap().backward().unwrap();
                    // The stored gradient, not `gradient`: candle adds it onto zeros, so -0 arrives as +0.
                    let gradient = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    optimizer.step(&grads).unwrap();
                    let mut new_b = Vec::new();
                    for i in 0..p.len() {
                        let mut g = if wd != 0.0 { gradient[i] + p[i] * wd } else { gradient[i] };
                        let bi = match &b {
                            Some(b) => b[i] * m + g,
                            None => g,
                        };
                        g = if nesterov { g + bi * m } else { bi };
                        p[i] -= g * lr;
                        new_b.push(bi);
                    }
                    b = Some(new_b);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
                    let ours = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    assert_eq!(bits(&ours), bits(&p), "parameter, nesterov {nesterov}, wd {weight_decay}");
                    let buffer = optimizer.state()["w"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    assert_eq!(bits(&buffer), bits(b.as_ref().unwrap()), "buffer, nesterov {nesterov}, wd {weight_decay}");
                }
            }
        }
    }
}
