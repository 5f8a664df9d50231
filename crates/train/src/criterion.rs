//! The loss a run trains on and keeps its epoch by: the mean cross-entropy over the images (the
//! reference's), or, as a named option (`--class-weights balanced`), each image's cross-entropy
//! weighted by its class, as `torch.nn.CrossEntropyLoss(weight=w)` computes it (the weighted sum
//! divided by the sum of the batch's weights). Medical classes are rarely balanced (ISIC 2019:
//! 12,875 naevi, 239 dermatofibromas), and the plain mean lets the common classes decide what
//! the network learns while the balanced accuracy it is judged by counts every class alike.
//!
//! The weights are scikit-learn's `compute_class_weight("balanced")` over the train part:
//! n / (k * n_c) for n images of k classes, n_c of class c. The validation loss, by which the
//! reference keeps an epoch and early stopping counts, is weighted alike (one criterion for both,
//! as a PyTorch script passing its weighted loss to training and validation), over the whole
//! validation part.

use candle_core::{D, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How much each class's images weigh in the loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ClassWeights {
    /// Every image alike (the reference).
    #[default]
    None,
    /// n / (k * n_c) over the train part: each class as heavy in sum as any other.
    Balanced,
}

impl ClassWeights {
    /// The option's value as written (`none`, `balanced`), for records and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ClassWeights::None => "none",
            ClassWeights::Balanced => "balanced",
        }
    }
}

/// The loss of one run: the plain mean cross-entropy, or the class-weighted one.
#[derive(Debug, Clone)]
pub struct Criterion {
    /// Each class's weight, on the host (for averaging over batches) and on the run's device.
    weights: Option<(Vec<f64>, Tensor)>,
}

impl Criterion {
    /// The mean cross-entropy over the images.
    pub fn plain() -> Self {
        Self { weights: None }
    }

    /// The criterion `class_weights` asks for, its weights counted over `train_labels` (of
    /// `classes` classes). Balanced weights need every class among the train images (as
    /// scikit-learn's do); a class without any is refused.
    pub fn new(class_weights: ClassWeights, train_labels: &[u32], classes: usize, device: &Device) -> Result<Self> {
        match class_weights {
            ClassWeights::None => Ok(Self::plain()),
            ClassWeights::Balanced => {
                let weights = balanced_weights(train_labels, classes)?;
                let on_device = Tensor::from_iter(weights.iter().map(|&w| w as f32), device)?;
                Ok(Self { weights: Some((weights, on_device)) })
            }
        }
    }

    /// Each class's weight, where the criterion weighs them.
    pub fn weights(&self) -> Option<&[f64]> {
        self.weights.as_ref().map(|(host, _)| host.as_slice())
    }

    /// The batch's loss: the mean cross-entropy of `logits` (images x classes) against `labels`
    /// (u32), or its weighted mean.
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let Some((_, weights)) = &self.weights else {
            return Ok(candle_nn::loss::cross_entropy(logits, labels)?);
        };
        let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let picked = log_p.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
        let image_weights = weights.index_select(labels, 0)?.to_dtype(picked.dtype())?;
        let weighted = (picked * &image_weights)?.sum_all()?.neg()?;
        Ok(weighted.broadcast_div(&image_weights.sum_all()?)?)
    }

    /// How much a batch of `labels` counts when batch losses are averaged over a split: its
    /// images, or the sum of their weights (so that the average is the split's own weighted mean).
    pub fn batch_weight(&self, labels: impl IntoIterator<Item = u32>) -> f64 {
        match &self.weights {
            None => labels.into_iter().count() as f64,
            Some((weights, _)) => labels.into_iter().map(|label| weights.get(label as usize).copied().unwrap_or(0.0)).sum(),
        }
    }
}

/// scikit-learn's `compute_class_weight("balanced", classes=range(k), y=labels)`.
fn balanced_weights(labels: &[u32], classes: usize) -> Result<Vec<f64>> {
    let mut counts = vec![0usize; classes];
    for &label in labels {
        let count = counts.get_mut(label as usize).ok_or_else(|| {
            Error::Config(format!("a train image has label {label}, but the task has {classes} classes: the split and the task disagree"))
        })?;
        *count += 1;
    }
    let missing: Vec<String> = counts.iter().enumerate().filter(|&(_, &n)| n == 0).map(|(class, _)| class.to_string()).collect();
    if !missing.is_empty() {
        return Err(Error::Config(format!(
            "--class-weights balanced weighs each class by its train images, and class {} has none: give every class train images, or leave --class-weights out",
            missing.join(", ")
        )));
    }
    let n = labels.len() as f64;
    Ok(counts.iter().map(|&count| n / (classes as f64 * count as f64)).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::Var;

    use super::*;

    #[test]
    fn balanced_weights_are_scikit_learns() {
        // compute_class_weight("balanced", classes=[0, 1, 2], y=[0]*6 + [1]*2 + [2]): 9 / (3 * n_c).
        let labels = [0, 0, 1, 0, 2, 0, 1, 0, 0];
        assert_eq!(balanced_weights(&labels, 3).unwrap(), vec![0.5, 1.5, 3.0]);
        let error = balanced_weights(&[0, 0, 2], 3).unwrap_err().to_string();
        assert!(error.contains("class 1 has none") && error.contains("--class-weights"), "{error}");
        let error = balanced_weights(&[0, 3], 3).unwrap_err().to_string();
        assert!(error.contains("label 3") && error.contains("3 classes"), "{error}");
    }

    /// Weights of 1 and 3 on two images are the unweighted mean over the first image once and
    /// the second three times: the value and the logits' gradient.
    #[test]
    fn weighted_loss_is_the_mean_over_repeated_images() {
        let device = Device::Cpu;
        let rows = [[0.3f32, -1.2, 2.0], [1.5, 0.2, -0.7]];
        let weighted_logits = Var::from_slice(&rows.concat(), (2, 3), &device).unwrap();
        let criterion = Criterion { weights: Some((vec![1.0, 0.5, 3.0], Tensor::new(&[1.0f32, 0.5, 3.0], &device).unwrap())) };
        // Image 0 of class 0 (weight 1), image 1 of class 2 (weight 3).
        let labels = Tensor::new(&[0u32, 2], &device).unwrap();
        let weighted = criterion.loss(weighted_logits.as_tensor(), &labels).unwrap();

        let repeated = [rows[0], rows[1], rows[1], rows[1]].concat();
        let repeated_logits = Var::from_slice(&repeated, (4, 3), &device).unwrap();
        let repeated_labels = Tensor::new(&[0u32, 2, 2, 2], &device).unwrap();
        let plain = Criterion::plain().loss(repeated_logits.as_tensor(), &repeated_labels).unwrap();

        let (w, p) = (weighted.to_scalar::<f32>().unwrap(), plain.to_scalar::<f32>().unwrap());
        assert!((w - p).abs() < 1e-6, "weighted {w}, repeated {p}");
        let w_grad = weighted.backward().unwrap().get(weighted_logits.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let p_grad = plain.backward().unwrap().get(repeated_logits.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let summed: Vec<f32> = (0..3).map(|j| p_grad[1][j] + p_grad[2][j] + p_grad[3][j]).collect();
        for j in 0..3 {
            assert!((w_grad[0][j] - p_grad[0][j]).abs() < 1e-6, "{w_grad:?} {p_grad:?}");
            assert!((w_grad[1][j] - summed[j]).abs() < 1e-6, "{w_grad:?} {p_grad:?}");
        }
        // Averaged over batches, a batch counts its weights.
        assert_eq!(criterion.batch_weight([0, 2]), 4.0);
        assert_eq!(Criterion::plain().batch_weight([0, 2, 2]), 3.0);
    }

    /// PyTorch's CrossEntropyLoss with `weight` (its documented mean: sum_i w_{y_i} l_i over
    /// sum_i w_{y_i}, l_i = logsumexp(x_i) - x_{i,y_i}), by hand: l = 1.90167, 2.52450, 0.88010
    /// for the three rows, weighted (0.5, 3.0, 1.5) 1.96890, unweighted 1.76876.
    #[test]
    fn weighted_loss_is_pytorchs_by_hand() {
        let device = Device::Cpu;
        let logits = Tensor::new(&[[0.3f32, -1.2, 2.0], [1.5, 0.2, -0.7], [0.0, 0.4, 0.1]], &device).unwrap();
        let labels = Tensor::new(&[0u32, 2, 1], &device).unwrap();
        let criterion = Criterion::new(ClassWeights::Balanced, &[0, 0, 1, 0, 2, 0, 1, 0, 0], 3, &device).unwrap();
        assert_eq!(criterion.weights().unwrap(), &[0.5, 1.5, 3.0]);
        let loss = criterion.loss(&logits, &labels).unwrap().to_scalar::<f32>().unwrap();
        assert!((loss - HAND_WEIGHTED).abs() < 1e-5, "{loss}");
        let plain = Criterion::new(ClassWeights::None, &[0], 3, &device).unwrap();
        assert!(plain.weights().is_none());
        let loss = plain.loss(&logits, &labels).unwrap().to_scalar::<f32>().unwrap();
        assert!((loss - HAND_PLAIN).abs() < 1e-5, "{loss}");
    }

    const HAND_WEIGHTED: f32 = 1.968_895_1;
    const HAND_PLAIN: f32 = 1.768_755_8;
}
