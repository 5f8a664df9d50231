//! SGD with momentum, Nesterov and coupled weight decay, step for step as
//! `torch.optim.SGD(params, lr, momentum, weight_decay, nesterov=True)` (dampening 0):
//!
//! ```text
//! g = grad + wd * p
//! b = g                      on the first step
//! b = momentum * b + g       afterwards
//! g = g + momentum * b       (Nesterov)
//! p = p - lr * g
//! ```
//!
//! candle-nn's own SGD has no momentum. The momentum buffers are tensors, saved and restored
//! with a checkpoint so that a resumed run continues exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{Error, Result};

/// The optimizer's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdSettings {
    pub learning_rate: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// SGD over named variables.
#[derive(Debug)]
pub struct NesterovSgd {
    vars: Vec<(String, Var)>,
    buffers: HashMap<String, Tensor>,
    pub settings: SgdSettings,
}

impl NesterovSgd {
    pub fn new(vars: Vec<(String, Var)>, settings: SgdSettings) -> Self {
        Self { vars, buffers: HashMap::new(), settings }
    }

    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        self.settings.learning_rate = learning_rate;
    }

    /// One step from the gradients of a backward pass. A variable without a gradient (unused
    /// in the forward pass) is left alone, as PyTorch skips parameters whose grad is None.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let SgdSettings { learning_rate, momentum, weight_decay, nesterov } = self.settings;
        for (name, var) in &self.vars {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let mut g = grad.clone();
            if weight_decay != 0.0 {
                g = (g + (var.as_tensor() * weight_decay)?)?;
            }
            if momentum != 0.0 {
                let buffer = match self.buffers.get(name) {
                    Some(buffer) => ((buffer * momentum)? + &g)?,
                    None => g.clone(),
                };
                g = if nesterov { (g + (&buffer * momentum)?)? } else { buffer.clone() };
                self.buffers.insert(name.clone(), buffer.detach());
            }
            var.set(&(var.as_tensor() - (g * learning_rate)?)?.detach())?;
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
