//! `cargo xtask export`: a model `rank --finetune-top` fine-tuned, as a PyTorch state dict in
//! safetensors. Its tensors keep timm's names (the zoo's names are timm's), BatchNorm's batch
//! counter `num_batches_tracked`, which medxfer does not keep, is added (0: timm's BatchNorm uses
//! a momentum, so the count is never read), and the card's classes and preprocessing go into the
//! file's metadata: `model.load_state_dict(load_file(path))` then loads it with strict checking.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Args;

use crate::predict::FineTunedModel;

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: FineTunedModel,
    /// The safetensors file to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// What `export` wrote.
#[derive(Debug)]
pub struct Exported {
    pub backbone: String,
    pub file: PathBuf,
    pub tensors: usize,
    /// The timm model to create for it, where its weights came from timm's hub: `timm/<id>`'s id.
    pub timm_model: Option<String>,
    pub classes: usize,
}

/// The metadata keys, read back by a user's loader.
pub const CLASSES_KEY: &str = "medxfer.classes";
pub const PREPROCESSING_KEY: &str = "medxfer.preprocessing";

pub fn run(args: &ExportArgs) -> Result<Exported> {
    let card = args.model.card()?;
    // Loaded into its architecture first: what is written is what the model holds, checked.
    let (entry, model) = args.model.load(&card, &Device::Cpu)?;
    let mut tensors = medxfer_train::model_tensors(&model)?;
    add_batch_counters(&mut tensors)?;
    let metadata = HashMap::from([
        ("medxfer.backbone".to_string(), card.backbone.clone()),
        (CLASSES_KEY.to_string(), serde_json::to_string(&card.classes)?),
        (
            PREPROCESSING_KEY.to_string(),
            serde_json::json!({
                "resize": card.resize,
                "crop": card.crop,
                "mean": card.mean,
                "std": card.std,
                "temperature": card.temperature,
                // The frame rank read of each DICOM file of several: the pipeline's to read too
                // ("all" or "every:K": each frame kept predicted, the file's probabilities their
                // mean, as predict does).
                "dicom_frame": card.dicom_frame,
                // The display window grayscale images were read through (DICOM's LINEAR function on
                // the rescaled values, other formats' on the stored ones; three joined by +, one a
                // colour channel: red, green, blue), null where each file's own.
                "window": card.window,
                // The axes NIfTI volumes were read along: "stored", or "canonical" (nibabel's
                // as_closest_canonical, RAS+).
                "reorient": card.reorient,
                // Of each 4-D NIfTI file, the volume read (counted from 1; "1+3+4": three, the red,
                // green and blue channels); null: such files refused.
                "volume": card.volume,
                // Each frame 2.5-D: the frame before as red, itself green, the one after blue.
                "adjacent_slices": card.adjacent_slices,
                // The conditions on their DICOM header the images met (FIELD=PATTERN or
                // FIELD!=PATTERN, * and ? in any case): which files the pipeline should classify.
                "dicom_where": card.dicom_where,
            })
            .to_string(),
        ),
        ("format".to_string(), "pt".to_string()),
    ]);
    medxfer_train::write_tensors(&args.out, &tensors, metadata)?;
    Ok(Exported {
        backbone: card.backbone,
        file: args.out.clone(),
        tensors: tensors.len(),
        timm_model: entry.hub.strip_prefix("timm/").map(str::to_string),
        classes: card.classes.len(),
    })
}

/// PyTorch's BatchNorm keeps `num_batches_tracked` (an int64 scalar) beside its running
/// statistics; a state dict without it fails `load_state_dict`'s strict check.
fn add_batch_counters(tensors: &mut HashMap<String, Tensor>) -> Result<()> {
    let layers: Vec<String> = tensors.keys().filter_map(|name| name.strip_suffix(".running_mean")).map(str::to_string).collect();
    for layer in layers {
        tensors.entry(format!("{layer}.num_batches_tracked")).or_insert(Tensor::new(0i64, &Device::Cpu)?);
    }
    Ok(())
}

/// How to load `exported` in Python, for the command's output.
pub fn python_hint(exported: &Exported, path: &Path) -> String {
    let create = match &exported.timm_model {
        Some(name) => format!("timm.create_model(\"{name}\", num_classes={})", exported.classes),
        None => format!("<the timm model of {}'s configuration, num_classes={}>", exported.backbone, exported.classes),
    };
    format!(
        "import json, timm\nfrom safetensors import safe_open\nfrom safetensors.torch import load_file\nmodel = {create}\nmodel.load_state_dict(load_file(\"{0}\"))\nclasses = json.loads(safe_open(\"{0}\", \"pt\").metadata()[\"{CLASSES_KEY}\"])",
        path.display()
    )
}
