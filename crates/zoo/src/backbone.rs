//! A backbone: one of the families with its tensors, giving the two outputs the study needs,
//! the pooled `features` (the classifier's input) and the `logits`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::{KeyReport, check_preloaded, ignored, load_into, read_checkpoint};
use crate::convnext::ConvNext;
use crate::densenet::DenseNet;
use crate::efficientnet::EfficientNet;
use crate::entry::{Architecture, ModelEntry};
use crate::error::{Error, Result};
use crate::layers::{Linear, global_avg_pool};
use crate::params::ParamStore;
use crate::regnet::RegNet;
use crate::resnet::ResNet;
use crate::swin::Swin;
use crate::torchvision::{is_torchvision_layout, timm_name};
use crate::vit::{Embedding, Vit, convert_vit_checkpoint, resample_pos_embed, square_side};

#[derive(Debug, Clone)]
enum Network {
    ResNet(ResNet),
    DenseNet(DenseNet),
    EfficientNet(EfficientNet),
    Vit(Vit),
    ConvNext(ConvNext),
    Swin(Swin),
    RegNet(RegNet),
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
        Self::new_in(name, architecture, num_classes, device, DType::F32)
    }

    /// [`Backbone::new`] with `dtype` tensors: bf16 or f16 for the inference of large models
    /// (LayerNorm and softmax still reduce in f32, as PyTorch's autocast does); f32 to train.
    pub fn new_in(name: &str, architecture: &Architecture, num_classes: usize, device: &Device, dtype: DType) -> Result<Self> {
        check_dtype(name, device, dtype)?;
        Self::build(name, architecture, num_classes, ParamStore::with_dtype(device, dtype))
    }

    /// The network over `store`: tensors already there (a checkpoint's, preloaded) are taken,
    /// the others made zero-filled.
    fn build(name: &str, architecture: &Architecture, num_classes: usize, store: ParamStore) -> Result<Self> {
        let root = store.root();
        let network = match architecture {
            Architecture::ResNet(config) => Network::ResNet(ResNet::new(&root, config, num_classes)?),
            Architecture::DenseNet(config) => Network::DenseNet(DenseNet::new(&root, config, num_classes)?),
            Architecture::EfficientNet(config) => Network::EfficientNet(EfficientNet::new(&root, config, num_classes)?),
            Architecture::Vit(config) => Network::Vit(Vit::new(&root, config, num_classes)?),
            Architecture::ConvNext(config) => Network::ConvNext(ConvNext::new(&root, config, num_classes)?),
            Architecture::Swin(config) => Network::Swin(Swin::new(&root, config, num_classes)?),
            Architecture::RegNet(config) => Network::RegNet(RegNet::new(&root, config, num_classes)?),
        };
        Ok(Self { name: name.to_string(), architecture: architecture.clone(), network, store })
    }

    /// The model of a registry entry with its pretrained head's classes, zero-filled; load
    /// weights next (or see `hub::pretrained`).
    pub fn from_entry(entry: &ModelEntry, device: &Device) -> Result<Self> {
        Self::new(&entry.name, &entry.architecture, entry.num_classes, device)
    }

    /// A model with a checkpoint's weights, its architecture completed from the checkpoint's
    /// tensors first (a ViT's LayerScale, registers, MLP kind where the configuration left
    /// timm's default; [`fit_to_checkpoint`](crate::fit_to_checkpoint)); strictly loaded.
    pub fn load(name: &str, architecture: &Architecture, num_classes: usize, path: &Path, device: &Device) -> Result<Self> {
        Self::load_in(name, architecture, num_classes, path, device, DType::F32)
    }

    /// [`Backbone::load`] into `dtype` tensors (each converted as it is copied in: the f32
    /// copy of a bf16 checkpoint never exists whole).
    pub fn load_in(
        name: &str,
        architecture: &Architecture,
        num_classes: usize,
        path: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let reader = ParamStore::new(device);
        let tensors = Self::checkpoint_tensors(architecture, path, &reader)?;
        let shapes = tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
        let architecture = architecture.fit_to_shapes(&shapes).map_err(|problem| Error::Checkpoint {
            path: path.to_path_buf(),
            problem: format!(
                "{name}'s configuration and the checkpoint disagree: {problem}; correct the configuration \
                 (a models/*.toml entry for this repo states what its config.json omits)"
            ),
        })?;
        // The checkpoint's tensors go into the store first and the network is built on them: one
        // copy of the weights in memory, not zeros and then the weights.
        check_dtype(name, device, dtype)?;
        let tensors = adapt_pos_embed(&architecture, tensors, path)?;
        let store = ParamStore::with_dtype(device, dtype);
        let mut offered = Vec::with_capacity(tensors.len());
        for (key, tensor) in tensors {
            if !ignored(&key) {
                store.preload(&key, &tensor)?;
                offered.push(key);
            }
        }
        let model = Self::build(name, &architecture, num_classes, store)?;
        check_preloaded(&model.store, &offered, path, name, true)?;
        Ok(model)
    }

    /// The model of a registry entry with the weights of `path` ([`Backbone::load`]).
    pub fn load_entry(entry: &ModelEntry, path: &Path, device: &Device) -> Result<Self> {
        Self::load(&entry.name, &entry.architecture, entry.num_classes, path, device)
    }

    /// A checkpoint's tensors under timm's names: torchvision state dicts renamed, ViT
    /// checkpoints converted as timm's checkpoint filter does (open_clip prefixes, original
    /// DINOv2 layouts).
    fn checkpoint_tensors(architecture: &Architecture, path: &Path, store: &ParamStore) -> Result<Vec<(String, Tensor)>> {
        let mut tensors = read_checkpoint(path, store)?;
        let keys: Vec<&str> = tensors.iter().map(|(k, _)| k.as_str()).collect();
        if is_torchvision_layout(architecture, &keys) {
            tensors = tensors.into_iter().map(|(key, tensor)| (timm_name(architecture, &key).unwrap_or(key), tensor)).collect();
        }
        if let Architecture::Vit(config) = architecture {
            tensors = convert_vit_checkpoint(tensors, config.embedding == Embedding::AttentionalPool).map_err(|error| match error {
                Error::Config { problem, .. } => Error::Checkpoint { path: path.to_path_buf(), problem },
                Error::Candle(error) => {
                    Error::Checkpoint { path: path.to_path_buf(), problem: format!("its tensors do not fit together: {error}") }
                }
                other => other,
            })?;
        }
        Ok(tensors)
    }

    /// Loads a checkpoint with timm's names; every model tensor must be present with its shape
    /// (`num_batches_tracked` ignored), and nothing else when `strict`. torchvision state dicts
    /// of the same architecture load too, renamed to timm's names.
    pub fn load_weights(&self, path: &Path, strict: bool) -> Result<KeyReport> {
        let tensors = Self::checkpoint_tensors(&self.architecture, path, &self.store)?;
        self.load_tensors(tensors, path, strict)
    }

    fn load_tensors(&self, tensors: Vec<(String, Tensor)>, path: &Path, strict: bool) -> Result<KeyReport> {
        let tensors = adapt_pos_embed(&self.architecture, tensors, path)?;
        load_into(&self.store, &tensors, path, &self.name, strict)
    }

    /// The pooled features (B, num_features): the classifier's input (a ViT's embedding recipe).
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.pool(&self.feature_map(x, train)?, train)
    }

    /// The pooled features from the final feature map (what `features` does after `feature_map`).
    pub fn pool(&self, map: &Tensor, train: bool) -> Result<Tensor> {
        match &self.network {
            Network::ResNet(_) | Network::DenseNet(_) | Network::EfficientNet(_) | Network::RegNet(_) => global_avg_pool(map),
            Network::Vit(net) => net.pool(map, train),
            Network::ConvNext(net) => net.pool(map, train),
            Network::Swin(net) => net.pool(map),
        }
    }

    /// The final feature map before pooling (timm's `forward_features`).
    pub fn feature_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = &self.input(x)?;
        match &self.network {
            Network::ResNet(net) => net.feature_map(x, train),
            Network::DenseNet(net) => net.feature_map(x, train),
            Network::EfficientNet(net) => net.feature_map(x, train),
            Network::Vit(net) => net.feature_map(x, train),
            Network::ConvNext(net) => net.feature_map(x, train),
            Network::Swin(net) => net.feature_map(x, train),
            Network::RegNet(net) => net.feature_map(x, train),
        }
    }

    /// Features and logits of one pass (`train`: batch statistics in BatchNorm, every parameter
    /// in the graph; else running statistics and no graph kept). A model published without a
    /// classifier gives (B, 0) logits.
    pub fn features_and_logits(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        self.head(&self.feature_map(x, train)?, train)
    }

    /// The pooled features and the logits from the final feature map: the network after
    /// `feature_map` (Grad-CAM differentiates the class scores through it).
    pub fn head(&self, map: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let classifier = match &self.network {
            Network::Vit(net) => return net.head(map, train),
            Network::ResNet(net) => &net.fc,
            Network::DenseNet(net) => &net.classifier,
            Network::EfficientNet(net) => &net.classifier,
            Network::ConvNext(net) => &net.fc,
            Network::Swin(net) => &net.fc,
            Network::RegNet(net) => &net.fc,
        };
        let features = self.pool(map, train)?;
        let logits = classifier.forward_t(&features, train)?;
        Ok((features, logits))
    }

    /// Replaces the classifier by a fresh `Linear(num_features, num_classes)` with PyTorch's
    /// default initialisation, seeded: the start of fine-tuning.
    pub fn replace_head(&mut self, num_classes: usize, seed: u64) -> Result<()> {
        let root = self.store.root();
        let width = self.num_features();
        let classifier = match &mut self.network {
            Network::Vit(net) => return net.replace_head(&root, num_classes, seed),
            Network::ResNet(net) => &mut net.fc,
            Network::DenseNet(net) => &mut net.classifier,
            Network::EfficientNet(net) => &mut net.classifier,
            Network::ConvNext(net) => &mut net.fc,
            Network::Swin(net) => &mut net.fc,
            Network::RegNet(net) => &mut net.fc,
        };
        *classifier = Linear::fresh(&root.pp(self.architecture.head_key()), width, num_classes, seed)?;
        Ok(())
    }

    /// Classes of the current head (0 for a model published without one).
    pub fn num_classes(&self) -> Result<usize> {
        Ok(match &self.network {
            Network::ResNet(net) => net.fc.shape()?.0,
            Network::DenseNet(net) => net.classifier.shape()?.0,
            Network::EfficientNet(net) => net.classifier.shape()?.0,
            Network::Vit(net) => net.num_classes()?,
            Network::ConvNext(net) => net.fc.shape()?.0,
            Network::Swin(net) => net.fc.shape()?.0,
            Network::RegNet(net) => net.fc.shape()?.0,
        })
    }

    /// The ViT inside, for Grad-CAM's target layer.
    pub(crate) fn vit(&self) -> Option<&Vit> {
        match &self.network {
            Network::Vit(net) => Some(net),
            _ => None,
        }
    }

    /// Images in the model's dtype (the loader gives f32).
    pub(crate) fn input(&self, x: &Tensor) -> Result<Tensor> {
        Ok(if x.dtype() == self.store.dtype() { x.clone() } else { x.to_dtype(self.store.dtype())? })
    }

    /// The model's tensors.
    pub fn params(&self) -> &ParamStore {
        &self.store
    }

    /// The registry entry's name the model was built under.
    pub fn name(&self) -> &str {
        &self.name
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

/// The precisions a model runs in on a device.
fn check_dtype(name: &str, device: &Device, dtype: DType) -> Result<()> {
    if dtype == DType::BF16 && device.is_cpu() {
        return Err(Error::Config {
            source_name: name.to_string(),
            problem: "bf16 needs a GPU: candle 0.11 has no bf16 matrix product on the CPU; use f16 or f32 there".into(),
        });
    }
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::Config { source_name: name.to_string(), problem: format!("{dtype:?} weights: the zoo runs f32, f16 or bf16") });
    }
    Ok(())
}

/// A ViT checkpoint's position embeddings resampled to the model's image size when it was
/// trained at another, as timm's checkpoint filter does.
fn adapt_pos_embed(architecture: &Architecture, mut tensors: Vec<(String, Tensor)>, path: &Path) -> Result<Vec<(String, Tensor)>> {
    let Architecture::Vit(config) = architecture else { return Ok(tensors) };
    let new_grid = config.grid();
    let prefix = if config.no_embed_class { 0 } else { config.prefix_tokens() };
    for (key, tensor) in tensors.iter_mut() {
        if key == "pos_embed" && tensor.dims().len() == 3 && tensor.dim(1)? != config.pos_embed_len(new_grid) {
            let old_grid = tensor.dim(1)?.checked_sub(prefix).and_then(square_side).ok_or_else(|| Error::Checkpoint {
                path: path.to_path_buf(),
                problem: format!(
                    "pos_embed has {} positions: not {prefix} prefix position(s) and a square grid",
                    tensor.dim(1).unwrap_or(0)
                ),
            })?;
            *tensor = resample_pos_embed(tensor, config.pos_resample, prefix, (old_grid, old_grid), (new_grid, new_grid))?;
        }
    }
    Ok(tensors)
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
