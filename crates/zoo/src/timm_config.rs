//! A backbone the registry does not list, from its hub repo's timm `config.json`: the
//! `architecture` name (with optional `model_args`) picks the family and size, `num_features`
//! and `pretrained_cfg` (mean, std, crop_pct, interpolation, classifier) the rest.

use serde_json::Value;

use crate::densenet::DenseNetConfig;
use crate::efficientnet::{EfficientNetConfig, EfficientNetVariant};
use crate::entry::{Architecture, ModelEntry, Preprocessing};
use crate::error::{Error, Result};
use crate::resnet::{BlockKind, ResNetConfig};
use crate::vit::VitConfig;

/// The most classes a pretrained head may have (ImageNet-22k's 21,843 fit).
pub const MAX_CLASSES: usize = 100_000;

/// What [`architecture_from_timm`] understands, for error messages.
pub const SUPPORTED_ARCHITECTURES: &str = "resnet18/34/50/101/152, densenet121/161/169/201, mobilenetv2_035/050/075/100/140, \
     efficientnet_b0..b7, vit_{tiny,small,base,large}_patch{16,32}_{224,384}";

fn unsupported(name: &str) -> Error {
    Error::Config {
        source_name: name.to_string(),
        problem: format!("architecture '{name}' is not one of the zoo's families; supported: {SUPPORTED_ARCHITECTURES}"),
    }
}

/// The architecture of a timm model name, with timm's `model_args` overrides.
pub fn architecture_from_timm(name: &str, model_args: Option<&Value>) -> Result<Architecture> {
    let args = model_args.and_then(Value::as_object);
    let usize_list = |key: &str| -> Option<Vec<usize>> {
        args?.get(key)?.as_array()?.iter().map(|v| v.as_u64().and_then(|u| usize::try_from(u).ok())).collect()
    };
    let usize_arg = |key: &str| -> Option<usize> { args?.get(key)?.as_u64().and_then(|u| usize::try_from(u).ok()) };
    let four = |list: Vec<usize>| -> Result<[usize; 4]> {
        list.try_into().map_err(|_| Error::Config { source_name: name.into(), problem: "expected four stages".into() })
    };
    let architecture = if let Some(depth) = name.strip_prefix("resnet") {
        let mut config = match depth {
            "18" => ResNetConfig::resnet18(),
            "34" => ResNetConfig::resnet34(),
            "50" => ResNetConfig::resnet50(),
            "101" => ResNetConfig { block: BlockKind::Bottleneck, layers: [3, 4, 23, 3], channels: [64, 128, 256, 512] },
            "152" => ResNetConfig { block: BlockKind::Bottleneck, layers: [3, 8, 36, 3], channels: [64, 128, 256, 512] },
            _ => return Err(unsupported(name)),
        };
        if let Some(layers) = usize_list("layers") {
            config.layers = four(layers)?;
        }
        if let Some(channels) = usize_list("channels") {
            config.channels = four(channels)?;
        }
        Architecture::ResNet(config)
    } else if let Some(depth) = name.strip_prefix("densenet") {
        let mut config = match depth {
            "121" => DenseNetConfig::densenet121(),
            "161" => DenseNetConfig::densenet161(),
            "169" => DenseNetConfig::densenet169(),
            "201" => DenseNetConfig { growth_rate: 32, block_config: vec![6, 12, 48, 32], bn_size: 4 },
            _ => return Err(unsupported(name)),
        };
        if let Some(growth) = usize_arg("growth_rate") {
            config.growth_rate = growth;
        }
        if let Some(blocks) = usize_list("block_config") {
            config.block_config = blocks;
        }
        Architecture::DenseNet(config)
    } else if let Some(width) = name.strip_prefix("mobilenetv2_") {
        let multiplier = match width {
            "035" => 0.35,
            "050" => 0.5,
            "075" => 0.75,
            "100" => 1.0,
            "140" => 1.4,
            _ => return Err(unsupported(name)),
        };
        Architecture::EfficientNet(EfficientNetConfig::mobilenetv2(multiplier))
    } else if let Some(size) = name.strip_prefix("efficientnet_b") {
        let (width, depth) = match size {
            "0" => (1.0, 1.0),
            "1" => (1.0, 1.1),
            "2" => (1.1, 1.2),
            "3" => (1.2, 1.4),
            "4" => (1.4, 1.8),
            "5" => (1.6, 2.2),
            "6" => (1.8, 2.6),
            "7" => (2.0, 3.1),
            _ => return Err(unsupported(name)),
        };
        Architecture::EfficientNet(EfficientNetConfig {
            variant: EfficientNetVariant::EfficientNet,
            channel_multiplier: width,
            depth_multiplier: depth,
        })
    } else if let Some(rest) = name.strip_prefix("vit_") {
        let parts: Vec<&str> = rest.split('_').collect();
        let [size, patch, image] = parts.as_slice() else { return Err(unsupported(name)) };
        let (embed_dim, depth, num_heads) = match *size {
            "tiny" => (192, 12, 3),
            "small" => (384, 12, 6),
            "base" => (768, 12, 12),
            "large" => (1024, 24, 16),
            _ => return Err(unsupported(name)),
        };
        let patch_size = patch.strip_prefix("patch").and_then(|p| p.parse().ok()).ok_or_else(|| unsupported(name))?;
        let img_size = image.parse().map_err(|_| unsupported(name))?;
        let mut config = VitConfig { img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio: 4.0 };
        config.img_size = usize_arg("img_size").unwrap_or(config.img_size);
        config.patch_size = usize_arg("patch_size").unwrap_or(config.patch_size);
        config.embed_dim = usize_arg("embed_dim").unwrap_or(config.embed_dim);
        config.depth = usize_arg("depth").unwrap_or(config.depth);
        config.num_heads = usize_arg("num_heads").unwrap_or(config.num_heads);
        Architecture::Vit(config)
    } else {
        return Err(unsupported(name));
    };
    Ok(architecture)
}

/// A registry entry for hub repo `repo_id` from the text of its `config.json`.
pub fn entry_from_timm_config(repo_id: &str, config_json: &str) -> Result<ModelEntry> {
    let bad = |problem: String| Error::Config { source_name: format!("{repo_id}/config.json"), problem };
    let config: Value = serde_json::from_str(config_json).map_err(|e| bad(format!("not JSON: {e}")))?;
    let name = config["architecture"].as_str().ok_or_else(|| bad("has no 'architecture'".into()))?;
    let architecture = architecture_from_timm(name, config.get("model_args")).map_err(|e| match e {
        Error::Config { problem, .. } => bad(problem),
        other => other,
    })?;
    let pretrained = &config["pretrained_cfg"];
    let num_classes = config["num_classes"].as_u64().or_else(|| pretrained["num_classes"].as_u64()).unwrap_or(1000);
    let num_classes = usize::try_from(num_classes).unwrap_or(usize::MAX);
    let triple = |key: &str, default: [f64; 3]| -> [f64; 3] {
        pretrained[key].as_array().and_then(|a| Some([a.first()?.as_f64()?, a.get(1)?.as_f64()?, a.get(2)?.as_f64()?])).unwrap_or(default)
    };
    if !(1..=MAX_CLASSES).contains(&num_classes) {
        return Err(bad(format!("num_classes is {num_classes}; expected 1 to {MAX_CLASSES}")));
    }
    architecture.check().map_err(bad)?;
    let crop = pretrained["input_size"].as_array().and_then(|a| a.get(2)).and_then(Value::as_u64).unwrap_or(224);
    let crop = usize::try_from(crop)
        .ok()
        .filter(|c| (1..=1 << 14).contains(c))
        .ok_or_else(|| bad(format!("pretrained_cfg.input_size's side is {crop}; expected 1 to 16384")))?;
    let crop_pct = pretrained["crop_pct"].as_f64().unwrap_or(0.875);
    if !(crop_pct.is_finite() && crop_pct > 0.0 && crop_pct <= 1.0) {
        return Err(bad(format!("pretrained_cfg.crop_pct is {crop_pct}; expected more than 0, at most 1")));
    }
    let feature_dim = architecture.num_features();
    if let Some(stated) = config["num_features"].as_u64()
        && stated as usize != feature_dim
    {
        return Err(bad(format!("num_features is {stated} but {name} gives {feature_dim}")));
    }
    let entry = ModelEntry {
        // The hub id, not the architecture: `timm/resnet50.tv_in1k` is another checkpoint than
        // the registry's `resnet50`, and every table and folder must tell them apart.
        name: repo_id.to_string(),
        paper_name: name.to_string(),
        hub: repo_id.to_string(),
        feature_dim,
        head: architecture.head_key().to_string(),
        num_classes,
        preprocessing: Preprocessing {
            mean: triple("mean", [0.485, 0.456, 0.406]),
            std: triple("std", [0.229, 0.224, 0.225]),
            // timm's eval transform: resize to floor(crop / crop_pct), then centre-crop.
            resize: (crop as f64 / crop_pct).floor() as usize,
            crop,
            // timm's `resolve_data_config` default when the config names none.
            interpolation: pretrained["interpolation"].as_str().unwrap_or("bicubic").to_string(),
        },
        architecture,
    };
    entry.preprocessing.check().map_err(bad)?;
    Ok(entry)
}
