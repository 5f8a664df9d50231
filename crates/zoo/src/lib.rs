//! medxfer-zoo: the study's ImageNet backbones in candle, numerically identical to timm, in
//! eval and in train mode.
//!
//! A [`Backbone`] is one of the families (ResNet, DenseNet, MobileNetV2 and EfficientNet as
//! timm's `EfficientNet` class, ViT) built from its [`Architecture`], its tensors in a
//! [`ParamStore`] under timm's state_dict names, so a timm checkpoint loads as is (torchvision
//! state dicts are renamed). It gives its pooled `features` (the classifier's input) and its
//! `logits`; as a candle-nn [`ModuleT`](candle_nn::ModuleT) it gives the logits; `grad_cam` gives
//! where in an image the evidence for a class lies.
//!
//! Where backbones come from: the [`Registry`] of models/*.toml ([`ModelEntry`]: hub repo,
//! architecture, [`Preprocessing`]), or any timm hub repo's `config.json`
//! ([`entry_from_timm_config`]); weights from the Hugging Face hub cache or a download
//! ([`pretrained`], [`weights_file`], [`hub_file`]) or a local file ([`Backbone::load_weights`]).
//! The layers' differentiable ops are medxfer-kernels'.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use candle_nn::ModuleT;
//! use medxfer_zoo::{Architecture, Backbone, ResNetConfig};
//!
//! let architecture = Architecture::ResNet(ResNetConfig::resnet18());
//! let model = Backbone::new("resnet18", &architecture, 1000, &Device::Cpu)?;
//! assert_eq!(model.params().parameter_count(), 11_689_512);
//! let images = Tensor::zeros((1, 3, 64, 64), candle_core::DType::F32, &Device::Cpu)?;
//! let (features, logits) = model.features_and_logits(&images, false)?;
//! assert_eq!(features.dims(), &[1, 512]);
//! assert_eq!(logits.dims(), &[1, 1000]);
//! assert_eq!(model.forward_t(&images, false)?.dims(), &[1, 1000]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod backbone;
mod checkpoint;
mod convnext;
mod densenet;
mod efficientnet;
mod entry;
mod error;
mod grad_cam;
mod hub;
mod layers;
mod params;
mod preprocess;
mod preset_table;
mod registry;
mod regnet;
mod resnet;
mod swin;
mod timm_config;
mod torchvision;
mod transformers_config;
mod vit;

pub use backbone::Backbone;
pub use checkpoint::{KeyReport, read_checkpoint};
pub use convnext::{ConvNextConfig, convnext_preset};
pub use densenet::DenseNetConfig;
pub use efficientnet::{DepthMultiplier, EfficientNetConfig, EfficientNetVariant, Padding, efficientnet_preset};
pub use entry::{Architecture, INTERPOLATIONS, ModelEntry, Preprocessing};
pub use error::{Error, Result};
pub use hub::{
    CONFIG_FILE, HubOptions, HubRetry, PROCESSOR_FILE, WEIGHTS_FILE, WEIGHTS_FILES, hub_file, looks_like_hub_id, pretrained, weights_file,
};
pub use params::ParamStore;
pub use preprocess::{IMAGE_EXTENSIONS, eval_tensor, is_image_file};
pub use registry::Registry;
pub use regnet::{RegNetConfig, RegNetStage, regnet_preset};
pub use resnet::{BlockAttention, BlockKind, ResNetConfig, StemType, resnet_preset};
pub use swin::{SwinConfig, swin_preset};
pub use timm_config::{SUPPORTED_ARCHITECTURES, architecture_from_timm, entry_from_timm_config};
pub use transformers_config::{entry_from_transformers_config, is_transformers_config};
pub use vit::{
    AttnPool, Embedding, GlobalPool, MlpKind, PosResample, TRANSFORMERS_MODEL_TYPES, VIT_PRESETS, VitConfig, fit_to_checkpoint, vit_preset,
    vit_preset_names, vit_unsupported,
};
