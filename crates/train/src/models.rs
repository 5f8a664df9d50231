//! The backbones a run starts from and leaves behind: a registry entry with its pretrained
//! weights, the same with a fresh head for fine-tuning, and a run's kept model.

use std::path::Path;

use candle_core::Device;
use medxfer_zoo::{Backbone, ModelEntry};

use crate::checkpoint::{OPTIMIZER_PREFIX, STATE_KEY, read_tensors};
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

/// A run's kept model (its `best.safetensors`, or any epoch checkpoint: its optimizer state is
/// left out) with a `classes`-way head; `None` takes the checkpoint's own head size.
pub fn load_fine_tuned(entry: &ModelEntry, checkpoint: &Path, classes: Option<usize>, device: &Device) -> Result<Backbone> {
    let (mut tensors, metadata) = read_tensors(checkpoint, device)?;
    if metadata.contains_key(STATE_KEY) {
        tensors.retain(|name, _| !name.starts_with(OPTIMIZER_PREFIX));
    }
    // A run's checkpoint holds the model's own tensors; PyTorch's state dicts hold BatchNorm's
    // batch counter beside them.
    if let Some(counter) = tensors.keys().find(|name| name.ends_with("num_batches_tracked")) {
        return Err(Error::Checkpoint(format!(
            "{} holds {counter}: it is a PyTorch state dict (pretrained timm weights?), not a medxfer run's checkpoint; give pretrained weights with --weights and no --checkpoint",
            checkpoint.display()
        )));
    }
    let head = format!("{}.weight", entry.architecture.head_key());
    let Some(head_classes) = tensors.get(&head).and_then(|w| w.dims().first().copied()) else {
        return Err(Error::Checkpoint(format!(
            "{} holds no classifier {head}, so it is not a fine-tuned {}: give a run's best.safetensors",
            checkpoint.display(),
            entry.name
        )));
    };
    if let Some(classes) = classes.filter(|&c| c != head_classes) {
        return Err(Error::Checkpoint(format!(
            "{}: its head has {head_classes} classes, not {classes}: give the checkpoint of a model fine-tuned on this task",
            checkpoint.display()
        )));
    }
    // The architecture as the checkpoint's tensors complete it (a ViT's options its
    // configuration left at timm's defaults), as when the run started.
    let shapes = tensors.iter().map(|(name, tensor)| (name.clone(), tensor.dims().to_vec())).collect();
    let architecture =
        entry.architecture.fit_to_shapes(&shapes).map_err(|problem| Error::Config(format!("{}: {problem}", checkpoint.display())))?;
    let mut model = Backbone::new(&entry.name, &architecture, entry.num_classes, device)?;
    model.replace_head(head_classes, 0)?;
    restore_model(&model, &tensors, checkpoint)?;
    Ok(model)
}
