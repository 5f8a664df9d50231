//! A backbone the registry does not list, from a Hugging Face transformers repo: its
//! `config.json` (`model_type` vit, dinov2, dinov2_with_registers) gives the ViT, its
//! `preprocessor_config.json` (when the repo has one) the preprocessing.

use serde_json::Value;

use crate::entry::{Architecture, ModelEntry, Preprocessing};
use crate::error::{Error, Result};
use crate::vit::vit_from_transformers_config;

/// Whether a `config.json` is a transformers model's (it names a `model_type`; timm's name an
/// `architecture`).
pub fn is_transformers_config(config_json: &str) -> bool {
    serde_json::from_str::<Value>(config_json).is_ok_and(|c| c.get("model_type").is_some() && c.get("architecture").is_none())
}

/// The preprocessing of a transformers image processor's settings; ImageNet's statistics at
/// 224 px when the repo has none.
fn preprocessing(repo_id: &str, processor: Option<&str>, img_size: usize) -> Result<Preprocessing> {
    let bad = |problem: String| Error::Config { source_name: format!("{repo_id}/preprocessor_config.json"), problem };
    let processor: Value = match processor {
        Some(text) => serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?,
        None => Value::Null,
    };
    let triple = |key: &str, default: [f64; 3]| -> [f64; 3] {
        processor[key].as_array().and_then(|a| Some([a.first()?.as_f64()?, a.get(1)?.as_f64()?, a.get(2)?.as_f64()?])).unwrap_or(default)
    };
    let side = |value: &Value| -> Option<usize> {
        let side = value.as_u64().or_else(|| value["shortest_edge"].as_u64()).or_else(|| value["height"].as_u64())?;
        usize::try_from(side).ok()
    };
    let resize = side(&processor["size"]).unwrap_or(img_size);
    let crop = if processor["do_center_crop"].as_bool() == Some(true) { side(&processor["crop_size"]).unwrap_or(resize) } else { resize };
    // PIL's resampling codes: 2 bilinear, 3 bicubic.
    let interpolation = match processor["resample"].as_u64() {
        Some(2) => "bilinear",
        _ => "bicubic",
    };
    let preprocessing = Preprocessing {
        mean: triple("image_mean", [0.485, 0.456, 0.406]),
        std: triple("image_std", [0.229, 0.224, 0.225]),
        resize,
        crop,
        interpolation: interpolation.to_string(),
    };
    preprocessing.check().map_err(bad)?;
    Ok(preprocessing)
}

/// A registry entry for the transformers repo `repo_id` from its `config.json` and, when it
/// has one, its `preprocessor_config.json`. Its features are the class token after the final
/// LayerNorm; it has no pretrained head.
pub fn entry_from_transformers_config(repo_id: &str, config_json: &str, processor_json: Option<&str>) -> Result<ModelEntry> {
    let bad = |problem: String| Error::Config { source_name: format!("{repo_id}/config.json"), problem };
    let config: Value = serde_json::from_str(config_json).map_err(|e| bad(format!("not JSON: {e}")))?;
    let architecture = Architecture::Vit(vit_from_transformers_config(&config).map_err(bad)?);
    architecture.check().map_err(bad)?;
    let Architecture::Vit(vit) = &architecture else { unreachable!("built as a ViT above") };
    let preprocessing = preprocessing(repo_id, processor_json, vit.img_size)?;
    Ok(ModelEntry {
        name: repo_id.to_string(),
        paper_name: format!("{} ({})", config["model_type"].as_str().unwrap_or("vit"), repo_id),
        hub: repo_id.to_string(),
        feature_dim: architecture.num_features(),
        head: architecture.head_key().to_string(),
        num_classes: 0,
        architecture,
        preprocessing,
    })
}
