//! The SGD step as candle tensor expressions, for every device and dtype.

use candle_core::{Result, Tensor};

use super::{SgdSettings, SgdUpdate};

pub(super) fn sgd_update(param: &Tensor, grad: &Tensor, buffer: Option<&Tensor>, settings: SgdSettings) -> Result<SgdUpdate> {
    let SgdSettings { learning_rate, momentum, weight_decay, nesterov } = settings;
    let mut g = grad.clone();
    if weight_decay != 0.0 {
        g = (g + (param * weight_decay)?)?;
    }
    let mut new_buffer = None;
    if momentum != 0.0 {
        let buffer = match buffer {
            Some(buffer) => ((buffer * momentum)? + &g)?,
            None => g.clone(),
        };
        g = if nesterov { (g + (&buffer * momentum)?)? } else { buffer.clone() };
        new_buffer = Some(buffer.detach());
    }
    Ok(SgdUpdate { param: (param - (g * learning_rate)?)?.detach(), buffer: new_buffer })
}
