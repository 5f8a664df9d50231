//! Feature extraction for the scores: a backbone (pretrained, or a fine-tuned run's kept model)
//! over one split with the eval transform, batch 32 by default, writing the feature file
//! medxfer-scores reads: `features` (N x D f32), `probs` (N x C f32, the softmax of the model's
//! own head: ImageNet's 1000 classes before fine-tuning, the target classes after), `labels`
//! (N i64), and the images' paths as JSON in the metadata (`medxfer.ids`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use medxfer_data::{Augment, LoaderConfig, Normalization, batches};
use medxfer_zoo::Backbone;

use crate::checkpoint::write_tensors;
use crate::device_batches::DeviceBatches;
use crate::error::{Error, Result};
use crate::finetune::SplitData;

/// Metadata key of the image ids.
pub const IDS_KEY: &str = "medxfer.ids";

/// How images become features: the backbone's normalisation, the eval transform's centre crop,
/// and the batch size (the reference's 32).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExtractSettings {
    /// The backbone's mean and std (the reference's with its 0.228 typo unless fixed).
    pub normalization: Normalization,
    /// Side of the eval transform's centre crop.
    pub crop: u32,
    /// Images per forward pass (the reference's 32).
    pub batch_size: usize,
}

/// Extracts `split` (whose images are `ids`, in cache order) with `model` into `out`, calling
/// `progress(images done, images)` after each batch.
pub fn extract(
    model: &Backbone,
    split: &SplitData,
    ids: &[String],
    settings: &ExtractSettings,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    if ids.len() != split.labels.len() {
        return Err(Error::Config(format!("{} image ids for a split of {} images", ids.len(), split.labels.len())));
    }
    let ExtractSettings { normalization, crop, batch_size } = *settings;
    let config =
        LoaderConfig { batch_size, order: medxfer_data::Order::Stored, seed: 0, epoch: 0, augment: Augment::Eval { crop }, normalization };
    let device = model.params().device().clone();
    let (mut features, mut probs) = (Vec::new(), Vec::new());
    let mut done = 0;
    let mut feed = DeviceBatches::new(batches(split.cache.clone(), split.labels.clone(), config)?, &device);
    while let Some(batch) = feed.take()? {
        let (f, logits) = model.features_and_logits(&batch.images, false)?;
        let batch_probs = (logits.dim(1)? > 0).then(|| candle_nn::ops::softmax(&logits.to_dtype(DType::F32)?, D::Minus1)).transpose()?;
        feed.prefetch()?;
        done += f.dim(0)?;
        progress(done, ids.len());
        features.push(f.to_device(&Device::Cpu)?.to_dtype(DType::F32)?);
        if let Some(batch_probs) = batch_probs {
            probs.push(batch_probs.to_device(&Device::Cpu)?);
        }
    }
    let labels: Vec<i64> = split.labels.iter().map(|&l| i64::from(l)).collect();
    let mut tensors =
        HashMap::from([("features".to_string(), Tensor::cat(&features, 0)?), ("labels".to_string(), Tensor::new(labels, &Device::Cpu)?)]);
    // A backbone published without a classifier (most foundation models) has no source
    // probabilities: the scores that need them (LEEP) report that, the others run.
    if !probs.is_empty() {
        tensors.insert("probs".to_string(), Tensor::cat(&probs, 0)?);
    }
    let ids_json = serde_json::to_string(ids).map_err(|e| Error::Config(e.to_string()))?;
    write_tensors(out, &tensors, HashMap::from([(IDS_KEY.to_string(), ids_json)]))
}
