//! ConvNeXt v1 and v2 as timm builds them (`timm.models.convnext.ConvNeXt`): a 4x4/4 patch stem
//! with a LayerNorm over channels, four stages (from the second on, a LayerNorm and a 2x2/2
//! convolution to downsample) of blocks — a 7x7 depthwise convolution with bias, a LayerNorm over
//! channels, an MLP with GELU (4x wide; v2's Global Response Normalization after the GELU), the
//! layer scale `gamma` (v1) and the residual add — then global average pooling, `head.norm` and
//! `head.fc`. LayerNorm eps 1e-6 unless `norm_eps` says otherwise. timm's presets of this module
//! are data: `timm_presets.toml`.
//!
//! The blocks compute in tokens (B, H x W, C) between the depthwise convolution and the residual,
//! timm's channels-last form. The small presets (`conv_mlp`: atto to nano) publish their MLP as
//! 1x1 convolutions and their norms as `LayerNorm2d`; that is the same arithmetic, so only the
//! weights' shapes differ and the same code runs both.

mod presets;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::layers::{Conv2d, ConvSpec, LayerNorm, Linear, tracked};
use crate::params::ParamBuilder;
pub use presets::{CONVNEXT_PRESETS, convnext_preset, convnext_unsupported};

/// A ConvNeXt's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvNextConfig {
    /// Blocks per stage.
    pub depths: [usize; 4],
    /// Channels per stage.
    pub dims: [usize; 4],
    /// The MLP as 1x1 convolutions and the norms as `LayerNorm2d` (the published tensors' shapes).
    #[serde(default)]
    pub conv_mlp: bool,
    /// ConvNeXt-V2's Global Response Normalization in the MLP.
    #[serde(default)]
    pub use_grn: bool,
    /// The per-channel layer scale `gamma` after the MLP (v1; timm's `ls_init_value` not None).
    #[serde(default = "yes")]
    pub layer_scale: bool,
    /// Every LayerNorm's epsilon.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
}

fn yes() -> bool {
    true
}

fn default_norm_eps() -> f64 {
    1e-6
}

impl ConvNextConfig {
    /// Width of the pooled features.
    pub fn num_features(&self) -> usize {
        self.dims[3]
    }

    /// Sizes no network has, in words.
    pub(crate) fn check_options(&self) -> std::result::Result<(), String> {
        if let Some(depth) = self.depths.iter().find(|d| !(1..=1000).contains(*d)) {
            return Err(format!("a stage's depth is {depth}; expected 1 to 1000"));
        }
        if let Some(dim) = self.dims.iter().find(|d| !(1..=1 << 14).contains(*d)) {
            return Err(format!("a stage's width (dims) is {dim}; expected 1 to 16384"));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return Err(format!("norm_eps is {}; expected more than 0, less than 1", self.norm_eps));
        }
        Ok(())
    }
}

/// (B, C, H, W) -> (B, H x W, C), contiguous.
fn to_tokens(x: &Tensor) -> Result<Tensor> {
    let (batch, channels, height, width) = x.dims4()?;
    Ok(medxfer_kernels::to_channels_last(x)?.reshape((batch, height * width, channels))?)
}

/// (B, H x W, C) -> (B, C, H, W).
fn to_map(tokens: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    Ok(medxfer_kernels::to_channels_first(&as_map(tokens, height, width)?)?)
}

/// (B, H x W, C) -> (B, H, W, C), a view.
fn as_map(tokens: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (batch, _, channels) = tokens.dims3()?;
    Ok(tokens.reshape((batch, height, width, channels))?)
}

/// LayerNorm over the channels of a (B, C, H, W) map (timm's `LayerNorm2d`).
fn layer_norm_2d(norm: &LayerNorm, x: &Tensor, train: bool) -> Result<Tensor> {
    let (_, _, height, width) = x.dims4()?;
    to_map(&norm.forward_t(&to_tokens(x)?, train)?, height, width)
}

/// Global Response Normalization over tokens (B, H x W, C) (timm's `GlobalResponseNorm`, eps
/// 1e-6): x + bias + weight * x * n, n = ||x||_HW / (mean_C ||x||_HW + eps).
#[derive(Debug, Clone)]
struct GlobalResponseNorm {
    weight: Tensor,
    bias: Tensor,
}

impl GlobalResponseNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (weight, bias) = (tracked(&self.weight, train), tracked(&self.bias, train));
        Ok(medxfer_kernels::global_response_norm(x, &weight, &bias)?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    conv_dw: Conv2d,
    norm: LayerNorm,
    fc1: Linear,
    grn: Option<GlobalResponseNorm>,
    fc2: Linear,
    gamma: Option<Tensor>,
}

impl Block {
    fn new(params: &ParamBuilder<'_>, config: &ConvNextConfig, dim: usize) -> Result<Self> {
        let hidden = 4 * dim;
        let mlp = params.pp("mlp");
        let linear = |name: &str, cin: usize, cout: usize| {
            if config.conv_mlp { Linear::conv1x1(&mlp.pp(name), cin, cout) } else { Linear::new(&mlp.pp(name), cin, cout) }
        };
        let grn = if config.use_grn {
            let p = mlp.pp("grn");
            Some(GlobalResponseNorm { weight: p.param(hidden, "weight")?, bias: p.param(hidden, "bias")? })
        } else {
            None
        };
        Ok(Self {
            conv_dw: Conv2d::new(&params.pp("conv_dw"), dim, dim, ConvSpec { kernel: 7, stride: 1, padding: 3, groups: dim, bias: true })?,
            norm: LayerNorm::new(&params.pp("norm"), dim, config.norm_eps)?,
            fc1: linear("fc1", dim, hidden)?,
            grn,
            fc2: linear("fc2", hidden, dim)?,
            gamma: if config.layer_scale { Some(params.param(dim, "gamma")?) } else { None },
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.conv_dw.forward_t(x, train)?;
        let (_, _, height, width) = y.dims4()?;
        let mut tokens = self.fc1.forward_gelu_t(&self.norm.forward_t(&to_tokens(&y)?, train)?, train)?;
        if let Some(grn) = &self.grn {
            tokens = grn.forward_t(&tokens, train)?;
        }
        tokens = self.fc2.forward_t(&tokens, train)?;
        // The layer scale, the move back to (B, C, H, W) and the residual add: one op.
        let gamma = self.gamma.as_ref().map(|gamma| tracked(gamma, train));
        Ok(medxfer_kernels::channels_last_residual(&as_map(&tokens, height, width)?, gamma.as_ref(), x)?)
    }
}

/// The LayerNorm and 2x2/2 convolution that open stages 2-4.
#[derive(Debug, Clone)]
struct Downsample {
    norm: LayerNorm,
    conv: Conv2d,
}

/// A ConvNeXt with timm's tensor names.
#[derive(Debug, Clone)]
pub struct ConvNext {
    stem_conv: Conv2d,
    stem_norm: LayerNorm,
    stages: Vec<(Option<Downsample>, Vec<Block>)>,
    head_norm: LayerNorm,
    pub(crate) fc: Linear,
}

impl ConvNext {
    pub fn new(params: &ParamBuilder<'_>, config: &ConvNextConfig, num_classes: usize) -> Result<Self> {
        let eps = config.norm_eps;
        let stem = params.pp("stem");
        let stem_conv = Conv2d::new(&stem.pp(0), 3, config.dims[0], ConvSpec { kernel: 4, stride: 4, padding: 0, groups: 1, bias: true })?;
        let stem_norm = LayerNorm::new(&stem.pp(1), config.dims[0], eps)?;
        let mut stages = Vec::new();
        for (index, (&depth, &dim)) in config.depths.iter().zip(&config.dims).enumerate() {
            let p = params.pp(format!("stages.{index}"));
            let downsample = if index > 0 {
                let previous = config.dims[index - 1];
                let d = p.pp("downsample");
                Some(Downsample {
                    norm: LayerNorm::new(&d.pp(0), previous, eps)?,
                    conv: Conv2d::new(&d.pp(1), previous, dim, ConvSpec { kernel: 2, stride: 2, padding: 0, groups: 1, bias: true })?,
                })
            } else {
                None
            };
            let blocks = (0..depth).map(|b| Block::new(&p.pp(format!("blocks.{b}")), config, dim)).collect::<Result<_>>()?;
            stages.push((downsample, blocks));
        }
        let head = params.pp("head");
        let head_norm = LayerNorm::new(&head.pp("norm"), config.num_features(), eps)?;
        let fc = Linear::new(&head.pp("fc"), config.num_features(), num_classes)?;
        Ok(Self { stem_conv, stem_norm, stages, head_norm, fc })
    }

    /// The final feature map (B, C, H/32, W/32), timm's `forward_features`.
    pub fn feature_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = layer_norm_2d(&self.stem_norm, &self.stem_conv.forward_t(x, train)?, train)?;
        for (downsample, blocks) in &self.stages {
            if let Some(down) = downsample {
                y = down.conv.forward_t(&layer_norm_2d(&down.norm, &y, train)?, train)?;
            }
            for block in blocks {
                y = block.forward_t(&y, train)?;
            }
        }
        Ok(y)
    }

    /// Pooled and normalised features (B, num_features) from the feature map: timm's pre-logits.
    pub fn pool(&self, map: &Tensor, train: bool) -> Result<Tensor> {
        self.head_norm.forward_t(&map.mean((2, 3))?, train)
    }
}
