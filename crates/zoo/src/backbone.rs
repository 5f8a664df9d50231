//! A backbone: one of the families with its tensors, giving the two outputs the study needs,
//! the pooled `features` (the classifier's input) and the `logits`.

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::checkpoint::{KeyReport, load_into, read_checkpoint};
use crate::densenet::DenseNet;
use crate::efficientnet::EfficientNet;
use crate::entry::{Architecture, ModelEntry};
use crate::error::{Error, Result};
use crate::layers::Linear;
use crate::params::ParamStore;
use crate::resnet::ResNet;
use crate::torchvision::{is_torchvision_layout, timm_name};
use crate::vit::{Vit, resample_pos_embed};

#[derive(Debug, Clone)]
enum Network {
    ResNet(ResNet),
    DenseNet(DenseNet),
    EfficientNet(EfficientNet),
    Vit(Vit),
}

/// A model of one family, its parameters in a [`ParamStore`] under timm's names.
#[derive(Debug, Clone)]
pub struct Backbone {
    name: String,
    architecture: Architecture,
    network: Network,
    store: ParamStore,
}

impl Backbone {
    /// Builds the model with zero-filled tensors; load weights next.
    pub fn new(name: &str, architecture: &Architecture, num_classes: usize, device: &Device) -> Result<Self> {
        let store = ParamStore::new(device);
        let root = store.root();
        let network = match architecture {
            Architecture::ResNet(config) => Network::ResNet(ResNet::new(&root, config, num_classes)?),
            Architecture::DenseNet(config) => Network::DenseNet(DenseNet::new(&root, config, num_classes)?),
            Architecture::EfficientNet(config) => Network::EfficientNet(EfficientNet::new(&root, config, num_classes)?),
            Architecture::Vit(config) => Network::Vit(Vit::new(&root, config, num_classes)?),
        };
        Ok(Self { name: name.to_string(), architecture: architecture.clone(), network, store })
    }

    /// The model of a registry entry with its pretrained head's classes, zero-filled; load
    /// weights next (or see `hub::pretrained`).
    pub fn from_entry(entry: &ModelEntry, device: &Device) -> Result<Self> {
        Self::new(&entry.name, &entry.architecture, entry.num_classes, device)
    }

    /// Loads a safetensors checkpoint with timm's names; every model tensor must be present
    /// with its shape (`num_batches_tracked` ignored), and nothing else when `strict`.
    /// torchvision state dicts of the same architecture load too, renamed to timm's names.
    pub fn load_weights(&self, path: &Path, strict: bool) -> Result<KeyReport> {
        let mut tensors = read_checkpoint(path, &self.store)?;
        let keys: Vec<&str> = tensors.iter().map(|(k, _)| k.as_str()).collect();
        if is_torchvision_layout(&self.architecture, &keys) {
            tensors = tensors.into_iter().map(|(key, tensor)| (timm_name(&self.architecture, &key).unwrap_or(key), tensor)).collect();
        }
        if let Architecture::Vit(config) = &self.architecture {
            // Another image size than the checkpoint's: resample the position embeddings, as
            // timm's checkpoint filter does.
            let new_grid = config.img_size / config.patch_size;
            for (key, tensor) in tensors.iter_mut() {
                if key == "pos_embed" && tensor.dim(1)? != new_grid * new_grid + 1 {
                    let old_grid = ((tensor.dim(1)? - 1) as f64).sqrt().round() as usize;
                    *tensor = resample_pos_embed(tensor, old_grid, new_grid)?;
                }
            }
        }
        load_into(&self.store, &tensors, path, &self.name, strict)
    }

    /// The pooled features (B, num_features): the classifier's input.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match &self.network {
            Network::ResNet(net) => net.features(x, train),
            Network::DenseNet(net) => net.features(x, train),
            Network::EfficientNet(net) => net.features(x, train),
            Network::Vit(net) => net.features(x, train),
        }
    }

    /// The final feature map before pooling (timm's `forward_features`).
    pub fn feature_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match &self.network {
            Network::ResNet(net) => net.feature_map(x, train),
            Network::DenseNet(net) => net.feature_map(x, train),
            Network::EfficientNet(net) => net.feature_map(x, train),
            Network::Vit(net) => net.feature_map(x, train),
        }
    }

    /// Logits from pooled features (`train`: keep the head's parameters in the graph).
    pub fn head(&self, features: &Tensor, train: bool) -> Result<Tensor> {
        self.classifier().forward_t(features, train)
    }

    /// Features and logits of one pass (`train`: batch statistics in BatchNorm, every parameter
    /// in the graph; else running statistics and no graph kept).
    pub fn features_and_logits(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let features = self.features(x, train)?;
        let logits = self.head(&features, train)?;
        Ok((features, logits))
    }

    /// Replaces the classifier by a fresh `Linear(num_features, num_classes)` with PyTorch's
    /// default initialisation, seeded: the start of fine-tuning.
    pub fn replace_head(&mut self, num_classes: usize, seed: u64) -> Result<()> {
        let root = self.store.root();
        let head = Linear::fresh(&root.pp(self.architecture.head_key()), self.num_features(), num_classes, seed)?;
        *self.classifier_mut() = head;
        Ok(())
    }

    fn classifier_mut(&mut self) -> &mut Linear {
        match &mut self.network {
            Network::ResNet(net) => &mut net.fc,
            Network::DenseNet(net) => &mut net.classifier,
            Network::EfficientNet(net) => &mut net.classifier,
            Network::Vit(net) => &mut net.head,
        }
    }

    /// Classes of the current head.
    pub fn num_classes(&self) -> Result<usize> {
        Ok(self.classifier().shape()?.0)
    }

    fn classifier(&self) -> &Linear {
        match &self.network {
            Network::ResNet(net) => &net.fc,
            Network::DenseNet(net) => &net.classifier,
            Network::EfficientNet(net) => &net.classifier,
            Network::Vit(net) => &net.head,
        }
    }

    /// The model's tensors.
    pub fn params(&self) -> &ParamStore {
        &self.store
    }

    /// Its architecture.
    pub fn architecture(&self) -> &Architecture {
        &self.architecture
    }

    /// Width of the pooled features.
    pub fn num_features(&self) -> usize {
        self.architecture.num_features()
    }
}

/// The logits, as every candle-nn module gives its output; `features_and_logits` gives the
/// pooled features too.
impl candle_nn::ModuleT for Backbone {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.features_and_logits(xs, train).map(|(_, logits)| logits).map_err(|error| match error {
            Error::Candle(error) => error,
            other => candle_core::Error::wrap(other),
        })
    }
}
