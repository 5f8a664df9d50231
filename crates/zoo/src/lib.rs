//! medxfer-zoo: the study's ImageNet backbones in candle, numerically identical to timm.
//!
//! Models are plain structs built from a [`ParamStore`] whose names mirror timm's state_dict, so
//! a timm checkpoint loads as is; every layer runs in train mode (batch statistics, gradients to
//! every parameter) or eval mode. Each model gives its pooled `features` (the classifier's input)
//! and `logits`.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use medxfer_zoo::{Architecture, Backbone, ResNetConfig};
//!
//! let architecture = Architecture::ResNet(ResNetConfig::resnet18());
//! let model = Backbone::new("resnet18", &architecture, 1000, &Device::Cpu)?;
//! assert_eq!(model.params().parameter_count(), 11_689_512);
//! let images = Tensor::zeros((1, 3, 64, 64), candle_core::DType::F32, &Device::Cpu)?;
//! let (features, logits) = model.forward_t(&images, false)?;
//! assert_eq!(features.dims(), &[1, 512]);
//! assert_eq!(logits.dims(), &[1, 1000]);
//! # Ok::<(), medxfer_zoo::Error>(())
//! ```
//!
//! Families: ResNet, DenseNet, MobileNetV2 and EfficientNet (timm's `EfficientNet` class), ViT.
//! The registry of models/*.toml and hub loading follow (issue 3).

mod backbone;
mod checkpoint;
mod densenet;
mod efficientnet;
mod entry;
mod error;
mod hub;
pub mod layers;
mod params;
mod preprocess;
mod registry;
mod resnet;
mod timm_config;
mod torchvision;
mod vit;

pub use backbone::Backbone;
pub use checkpoint::{KeyReport, load_into, read_checkpoint};
pub use densenet::{DenseNet, DenseNetConfig};
pub use efficientnet::{EfficientNet, EfficientNetConfig, EfficientNetVariant, make_divisible};
pub use entry::{Architecture, ModelEntry, Preprocessing};
pub use error::{Error, Result};
pub use hub::{CONFIG_FILE, HubOptions, WEIGHTS_FILE, hub_file, looks_like_hub_id, pretrained, weights_file};
pub use params::{ParamBuilder, ParamStore};
pub use preprocess::eval_tensor;
pub use registry::Registry;
pub use resnet::{BlockKind, ResNet, ResNetConfig};
pub use timm_config::{SUPPORTED_ARCHITECTURES, architecture_from_timm, entry_from_timm_config};
pub use vit::{Vit, VitConfig};
