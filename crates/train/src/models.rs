//! The backbones a run starts from and leaves behind: a registry entry with its pretrained
//! weights, the same with a fresh head for fine-tuning, and a run's kept model.

use std::path::Path;

use candle_core::Device;
use medxfer_zoo::{Backbone, ModelEntry};

use crate::checkpoint::read_tensors;
use crate::error::{Error, Result};
use crate::finetune::restore_model;

/// `entry`'s backbone with the pretrained weights of the safetensors file `weights`, every
/// tensor checked.
pub fn load_pretrained(entry: &ModelEntry, weights: &Path, device: &Device) -> Result<Backbone> {
    Ok(Backbone::load_entry(entry, weights, device)?)
}

/// [`load_pretrained`] in `dtype` (f16 or bf16 for extracting features with large models;
/// bf16 on a GPU only): for inference, not for fine-tuning.
pub fn load_pretrained_in(entry: &ModelEntry, weights: &Path, device: &Device, dtype: candle_core::DType) -> Result<Backbone> {
    Ok(Backbone::load_in(&entry.name, &entry.architecture, entry.num_classes, weights, device, dtype)?)
}

/// The start of fine-tuning: the pretrained backbone with a fresh `classes`-way head (PyTorch's
/// default initialisation, seeded by `seed`).
pub fn start_fine_tuning(entry: &ModelEntry, weights: &Path, classes: usize, seed: u64, device: &Device) -> Result<Backbone> {
    let mut model = load_pretrained(entry, weights, device)?;
    model.replace_head(classes, seed)?;
    Ok(model)
}

/// A run's kept model (its `best.safetensors`, or any epoch checkpoint) with its
/// `classes`-way head.
pub fn load_fine_tuned(entry: &ModelEntry, checkpoint: &Path, classes: usize, device: &Device) -> Result<Backbone> {
    let (tensors, _) = read_tensors(checkpoint, device)?;
    // The architecture as the checkpoint's tensors complete it (a ViT's options its
    // configuration left at timm's defaults), as when the run started.
    let shapes = tensors.iter().map(|(name, tensor)| (name.clone(), tensor.dims().to_vec())).collect();
    let architecture =
        entry.architecture.fit_to_shapes(&shapes).map_err(|problem| Error::Config(format!("{}: {problem}", checkpoint.display())))?;
    let mut model = Backbone::new(&entry.name, &architecture, entry.num_classes, device)?;
    model.replace_head(classes, 0)?;
    restore_model(&model, &tensors, checkpoint)?;
    Ok(model)
}
