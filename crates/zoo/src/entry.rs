//! What a backbone is, as plain data: its family and shape ([`Architecture`]), how it expects
//! its images ([`Preprocessing`]) and its registry entry ([`ModelEntry`]). The TOML registry
//! (`registry.rs`), a hub repo's timm `config.json` (`timm_config.rs`) and the torchvision
//! mapping (`torchvision.rs`) all build or read these; the model code (`backbone.rs`) takes them.
//! This module imports nothing of the crate but the families' configurations.

use serde::{Deserialize, Serialize};

use crate::densenet::DenseNetConfig;
use crate::efficientnet::EfficientNetConfig;
use crate::resnet::ResNetConfig;
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
}

impl Architecture {
    /// Width of the pooled features.
    pub fn num_features(&self) -> usize {
        match self {
            Architecture::ResNet(config) => config.num_features(),
            Architecture::DenseNet(config) => config.num_features(),
            Architecture::EfficientNet(config) => config.num_features(),
            Architecture::Vit(config) => config.embed_dim,
        }
    }

    /// The checkpoint key of the classifier (its `.weight` and `.bias`).
    pub fn head_key(&self) -> &'static str {
        match self {
            Architecture::ResNet(_) => "fc",
            Architecture::DenseNet(_) | Architecture::EfficientNet(_) => "classifier",
            Architecture::Vit(_) => "head",
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
    /// The resize filter timm names (`bilinear`, `bicubic`).
    pub interpolation: String,
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
