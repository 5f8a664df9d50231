//! DenseNet as timm builds it (`timm.models.densenet.DenseNet`, torchvision's layout): a 7x7/2
//! stem with 2 x growth channels, dense blocks whose layers see the channel concatenation
//! `[block input, new_1, new_2, ...]`, transitions (BN-ReLU, 1x1 conv halving the channels, 2x2
//! average pool), and a final BN + ReLU (`norm5`).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::layers::{BatchNorm2d, Conv2d, ConvSpec, Linear, max_pool_3x3_s2_p1};
use crate::params::ParamBuilder;
use medxfer_kernels::FusedActivation;

/// A DenseNet's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseNetConfig {
    /// Channels each dense layer adds.
    pub growth_rate: usize,
    /// Dense layers per block.
    pub block_config: Vec<usize>,
    /// Bottleneck width factor of the 1x1 conv (bn_size x growth).
    #[serde(default = "default_bn_size")]
    pub bn_size: usize,
}

fn default_bn_size() -> usize {
    4
}

impl DenseNetConfig {
    /// DenseNet-121: growth 32, blocks (6, 12, 24, 16).
    pub fn densenet121() -> Self {
        Self { growth_rate: 32, block_config: vec![6, 12, 24, 16], bn_size: 4 }
    }
    /// DenseNet-161: growth 48, blocks (6, 12, 36, 24).
    pub fn densenet161() -> Self {
        Self { growth_rate: 48, block_config: vec![6, 12, 36, 24], bn_size: 4 }
    }
    /// DenseNet-169: growth 32, blocks (6, 12, 32, 32).
    pub fn densenet169() -> Self {
        Self { growth_rate: 32, block_config: vec![6, 12, 32, 32], bn_size: 4 }
    }

    /// Width of the pooled features.
    pub fn num_features(&self) -> usize {
        let mut channels = 2 * self.growth_rate;
        for (index, layers) in self.block_config.iter().enumerate() {
            channels += layers * self.growth_rate;
            if index + 1 < self.block_config.len() {
                channels /= 2;
            }
        }
        channels
    }
}

#[derive(Debug, Clone)]
struct DenseLayer {
    norm1: BatchNorm2d,
    conv1: Conv2d,
    norm2: BatchNorm2d,
    conv2: Conv2d,
}

#[derive(Debug, Clone)]
struct Transition {
    norm: BatchNorm2d,
    conv: Conv2d,
}

/// A DenseNet with timm's tensor names.
#[derive(Debug, Clone)]
pub struct DenseNet {
    conv0: Conv2d,
    norm0: BatchNorm2d,
    blocks: Vec<Vec<DenseLayer>>,
    transitions: Vec<Transition>,
    norm5: BatchNorm2d,
    pub(crate) classifier: Linear,
}

impl DenseNet {
    pub fn new(params: &ParamBuilder<'_>, config: &DenseNetConfig, num_classes: usize) -> Result<Self> {
        let features = params.pp("features");
        let growth = config.growth_rate;
        let mut channels = 2 * growth;
        let conv0 = Conv2d::new(&features.pp("conv0"), 3, channels, ConvSpec { kernel: 7, stride: 2, padding: 3, groups: 1, bias: false })?;
        let norm0 = BatchNorm2d::new(&features.pp("norm0"), channels)?;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (index, &layers) in config.block_config.iter().enumerate() {
            let block_params = features.pp(format!("denseblock{}", index + 1));
            let mut block = Vec::new();
            for layer in 0..layers {
                let p = block_params.pp(format!("denselayer{}", layer + 1));
                let in_channels = channels + layer * growth;
                let width = config.bn_size * growth;
                block.push(DenseLayer {
                    norm1: BatchNorm2d::new(&p.pp("norm1"), in_channels)?,
                    conv1: Conv2d::new(&p.pp("conv1"), in_channels, width, ConvSpec::same(1, 1))?,
                    norm2: BatchNorm2d::new(&p.pp("norm2"), width)?,
                    conv2: Conv2d::new(&p.pp("conv2"), width, growth, ConvSpec::same(3, 1))?,
                });
            }
            blocks.push(block);
            channels += layers * growth;
            if index + 1 < config.block_config.len() {
                let p = features.pp(format!("transition{}", index + 1));
                transitions.push(Transition {
                    norm: BatchNorm2d::new(&p.pp("norm"), channels)?,
                    conv: Conv2d::new(&p.pp("conv"), channels, channels / 2, ConvSpec::same(1, 1))?,
                });
                channels /= 2;
            }
        }
        let norm5 = BatchNorm2d::new(&features.pp("norm5"), channels)?;
        let classifier = Linear::new(&params.pp("classifier"), channels, num_classes)?;
        Ok(Self { conv0, norm0, blocks, transitions, norm5, classifier })
    }

    /// The final feature map after norm5's BN + ReLU (timm's `forward_features`).
    pub fn feature_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.conv0.forward_bn_fused(x, &self.norm0, None, FusedActivation::Relu, train)?;
        y = max_pool_3x3_s2_p1(&y)?;
        for (index, block) in self.blocks.iter().enumerate() {
            // Each layer's input is the block's input and every earlier layer's output, side by
            // side: the last input with the last output appended, one concatenation of two
            // tensors (two copies on a GPU) where all the pieces anew took one copy per piece.
            for layer in block {
                let h = layer.conv1.forward_t(&layer.norm1.forward_fused(&y, None, FusedActivation::Relu, train)?, train)?;
                let h = layer.conv2.forward_t(&layer.norm2.forward_fused(&h, None, FusedActivation::Relu, train)?, train)?;
                y = Tensor::cat(&[&y, &h], 1)?;
            }
            if let Some(transition) = self.transitions.get(index) {
                let (_, _, height, width) = y.dims4()?;
                if height < 2 || width < 2 {
                    // candle's pool would say only that its window is larger than the map.
                    return Err(candle_core::Error::Msg(format!(
                        "densenet: transition {}'s 2x2 average pool does not fit a {height}x{width} map (input {:?}): the images are too small for this network; give larger ones (a larger resize and crop)",
                        index + 1,
                        x.dims()
                    ))
                    .into());
                }
                y = transition
                    .conv
                    .forward_t(&transition.norm.forward_fused(&y, None, FusedActivation::Relu, train)?, train)?
                    .avg_pool2d(2)?;
            }
        }
        self.norm5.forward_fused(&y, None, FusedActivation::Relu, train)
    }
}
