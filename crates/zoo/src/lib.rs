//! medxfer-zoo: the study's ImageNet backbones.
//!
//! Nothing lives here yet. Issue 3 fills this crate with the five families of the study
//! (ResNet, DenseNet, MobileNetV2, EfficientNet, ViT) written in candle with differentiable
//! train-mode layers, the registry of the ten backbones read from `models/*.toml`, and weight
//! loading from a local safetensors file or the Hugging Face hub with timm's key names.
