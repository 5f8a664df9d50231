//! What a backbone is, as plain data: its family and shape ([`Architecture`]), how it expects
//! its images ([`Preprocessing`]) and its registry entry ([`ModelEntry`]). The TOML registry
//! (`registry.rs`), a hub repo's timm `config.json` (`timm_config.rs`) and the torchvision
//! mapping (`torchvision.rs`) all build or read these; the model code (`backbone.rs`) takes them.
//! This module imports nothing of the crate but the families' configurations.

use serde::{Deserialize, Serialize};

use crate::convnext::ConvNextConfig;
use crate::densenet::DenseNetConfig;
use crate::efficientnet::EfficientNetConfig;
use crate::regnet::RegNetConfig;
use crate::resnet::ResNetConfig;
use crate::swin::SwinConfig;
use crate::vit::VitConfig;

/// A family and its shape, as written in models/*.toml (`family = "resnet"`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Architecture {
    /// timm's `ResNet`.
    #[serde(rename = "resnet")]
    ResNet(ResNetConfig),
    /// timm's `DenseNet`.
    #[serde(rename = "densenet")]
    DenseNet(DenseNetConfig),
    /// MobileNetV2 and EfficientNet (timm's `EfficientNet` class).
    #[serde(rename = "efficientnet")]
    EfficientNet(EfficientNetConfig),
    /// timm's `VisionTransformer`.
    #[serde(rename = "vit")]
    Vit(VitConfig),
    /// timm's `ConvNeXt` (v1 and v2).
    #[serde(rename = "convnext")]
    ConvNext(ConvNextConfig),
    /// timm's `RegNet` (X and Y).
    #[serde(rename = "regnet")]
    RegNet(RegNetConfig),
    /// timm's `SwinTransformer` (v1).
    #[serde(rename = "swin")]
    Swin(SwinConfig),
}

impl Architecture {
    /// Width of the pooled features.
    pub fn num_features(&self) -> usize {
        match self {
            Architecture::ResNet(config) => config.num_features(),
            Architecture::DenseNet(config) => config.num_features(),
            Architecture::EfficientNet(config) => config.num_features(),
            Architecture::Vit(config) => config.num_features(),
            Architecture::ConvNext(config) => config.num_features(),
            Architecture::RegNet(config) => config.num_features(),
            Architecture::Swin(config) => config.num_features(),
        }
    }

    /// Every size within what a real network of the family has, so that no configuration (a
    /// hub `config.json`, a registry TOML) can divide by zero, overflow or ask for memory no
    /// machine has: the problem, in words, or `Ok`.
    pub fn check(&self) -> Result<(), String> {
        let within = |what: &str, value: usize, low: usize, high: usize| {
            if (low..=high).contains(&value) { Ok(()) } else { Err(format!("{what} is {value}; expected {low} to {high}")) }
        };
        let factor = |what: &str, value: f64| {
            if value.is_finite() && value > 0.0 && value <= 16.0 {
                Ok(())
            } else {
                Err(format!("{what} is {value}; expected more than 0, at most 16"))
            }
        };
        match self {
            Architecture::ResNet(config) => {
                config.layers.iter().try_for_each(|&n| within("a stage's block count (layers)", n, 1, 1000))?;
                config.channels.iter().try_for_each(|&n| within("a stage's width (channels)", n, 1, 1 << 14))?;
                config.check_options()
            }
            Architecture::ConvNext(config) => config.check_options(),
            Architecture::RegNet(config) => config.check_options(),
            Architecture::Swin(config) => config.check_options(),
            Architecture::DenseNet(config) => {
                within("growth_rate", config.growth_rate, 1, 1024)?;
                within("bn_size", config.bn_size, 1, 64)?;
                within("the number of dense blocks (block_config)", config.block_config.len(), 1, 16)?;
                config.block_config.iter().try_for_each(|&n| within("a dense block's layer count", n, 1, 1000))
            }
            Architecture::EfficientNet(config) => {
                factor("channel_multiplier", config.channel_multiplier)?;
                config.check_options()
            }
            Architecture::Vit(config) => {
                within("patch_size", config.patch_size, 1, 1024)?;
                within("img_size", config.img_size, config.patch_size, 1 << 14)?;
                if config.img_size % config.patch_size != 0 {
                    return Err(format!("img_size {} is not a multiple of patch_size {}", config.img_size, config.patch_size));
                }
                within("embed_dim", config.embed_dim, 1, 1 << 14)?;
                within("depth", config.depth, 1, 512)?;
                within("num_heads", config.num_heads, 1, config.embed_dim)?;
                if config.embed_dim % config.num_heads != 0 {
                    return Err(format!("embed_dim {} is not a multiple of num_heads {}", config.embed_dim, config.num_heads));
                }
                factor("mlp_ratio", config.mlp_ratio)?;
                config.check_options()
            }
        }
    }

    /// The architecture completed from a checkpoint's tensor names and shapes (a ViT's options
    /// its configuration left at timm's defaults; [`crate::fit_to_checkpoint`]), or the
    /// disagreements in words. The other families state everything already.
    pub fn fit_to_shapes(&self, shapes: &std::collections::BTreeMap<String, Vec<usize>>) -> Result<Self, String> {
        match self {
            Architecture::Vit(config) => crate::vit::fit_to_checkpoint(config, shapes).map(Architecture::Vit),
            other => Ok(other.clone()),
        }
    }

    /// Whether the family builds without a classifier (`num_classes` 0, as foundation models are
    /// published): the ViTs; the ConvNets always carry theirs.
    pub fn builds_headless(&self) -> bool {
        matches!(self, Architecture::Vit(_))
    }

    /// The checkpoint key of the classifier (its `.weight` and `.bias`).
    pub fn head_key(&self) -> &'static str {
        match self {
            Architecture::ResNet(_) => "fc",
            Architecture::DenseNet(_) | Architecture::EfficientNet(_) => "classifier",
            Architecture::Vit(_) => "head",
            Architecture::ConvNext(_) | Architecture::RegNet(_) | Architecture::Swin(_) => "head.fc",
        }
    }
}

/// How a backbone expects its images (its own normalisation; see the data crate for the
/// reference's faithful transform).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f64; 3],
    /// Per-channel standard deviation divided by.
    pub std: [f64; 3],
    /// Shorter side before the centre crop.
    pub resize: usize,
    /// Side of the centre crop.
    pub crop: usize,
    /// The resize filter timm names ([`INTERPOLATIONS`]), which `classify` resizes with.
    pub interpolation: String,
}

/// The resize filters an entry may name: PIL's, as timm names them.
pub const INTERPOLATIONS: [&str; 2] = ["bilinear", "bicubic"];

impl Preprocessing {
    /// Sizes and statistics a transform can use: the problem, in words, or `Ok`.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=1 << 14).contains(&self.crop) {
            return Err(format!("the crop is {}; expected 1 to 16384", self.crop));
        }
        if !(self.crop..=1 << 15).contains(&self.resize) {
            return Err(format!("the resize is {}; expected at least the crop ({}) and at most 32768", self.resize, self.crop));
        }
        if self.mean.iter().chain(&self.std).any(|v| !v.is_finite()) || self.std.iter().any(|&s| s <= 0.0) {
            return Err(format!("mean {:?} and std {:?} must be finite numbers, std above 0", self.mean, self.std));
        }
        // A misspelt or other filter ran as bilinear, unsaid (seen: "lanczos").
        if !INTERPOLATIONS.contains(&self.interpolation.as_str()) {
            return Err(format!("interpolation {:?}: expected one of {INTERPOLATIONS:?} (timm's names)", self.interpolation));
        }
        Ok(())
    }
}

/// One backbone of the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The name commands take (`resnet50`).
    pub name: String,
    /// How the paper names it.
    pub paper_name: String,
    /// Hugging Face hub repo id with the exact weights tag.
    pub hub: String,
    /// Width of the pooled features (checked against the architecture).
    pub feature_dim: usize,
    /// Checkpoint key of the classifier.
    pub head: String,
    /// Classes of the pretrained head.
    pub num_classes: usize,
    /// Family and shape.
    pub architecture: Architecture,
    /// How the backbone expects its images.
    pub preprocessing: Preprocessing,
}
