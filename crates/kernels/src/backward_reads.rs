//! What the ops' backward passes read, as candle's `BackwardReads` says it to
//! `candle_core::backprop::release_unread` (vendor/README.md): an operand whose values no
//! backward pass reads can be freed during the forward pass once nothing but the graph holds it,
//! as PyTorch's autograd never saves it.

use candle_core::BackwardReads;

use crate::activation::FusedActivation;

/// A product's or a convolution's: the input and the weight (attention with a bias: the
/// projection and the bias). Not the output; not a third operand (a bias, whose gradient is a
/// sum of the output's gradient, or a residual added to the output, whose gradient is the
/// output's gradient).
pub(crate) const OPERANDS: BackwardReads = BackwardReads { inputs: [true, true, false], output: false };

/// An op's whose backward pass reads its (first) input alone, not its output: attention's, which
/// recomputes its weights from the projection.
pub(crate) const FIRST_OPERAND: BackwardReads = BackwardReads { inputs: [true, false, false], output: false };

/// Train-mode BatchNorm's (the input, the weight and bias; a residual as a third operand is not
/// read): the output only where an activation follows a residual add. Without a residual the
/// activation's mask is recomputed from the input (`batchnorm/cpu.rs`, `InputMask`).
pub(crate) fn batch_norm(activation: FusedActivation, residual: bool) -> BackwardReads {
    BackwardReads { inputs: [true, true, false], output: residual && activation.high().is_some() }
}
