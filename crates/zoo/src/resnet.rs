//! ResNet as timm builds it (`timm.models.resnet.ResNet`, v1.5): 7x7/2 stem with 64 channels,
//! 3x3/2 max pool, four stages of BasicBlocks or Bottlenecks (stride on the 3x3 conv), a
//! 1x1-conv + BN downsample where the shape changes, global average pooling and `fc`.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::layers::{BatchNorm2d, Conv2d, ConvSpec, Linear, global_avg_pool, max_pool_3x3_s2_p1};
use crate::params::ParamBuilder;
use medxfer_kernels::FusedActivation;

/// The residual block kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34).
    Basic,
    /// 1x1, 3x3, 1x1 with 4x expansion (ResNet-50 and deeper).
    Bottleneck,
}

impl BlockKind {
    fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// A ResNet's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    /// Basic (ResNet-18/34) or bottleneck (ResNet-50 and deeper) blocks.
    pub block: BlockKind,
    /// Blocks per stage.
    pub layers: [usize; 4],
    /// Base channels per stage (the output is this times the block's expansion).
    #[serde(default = "default_channels")]
    pub channels: [usize; 4],
}

fn default_channels() -> [usize; 4] {
    [64, 128, 256, 512]
}

/// timm hard-codes 64 stem channels for the (non-deep) stem.
const STEM_CHANNELS: usize = 64;

impl ResNetConfig {
    /// ResNet-18: basic blocks (2, 2, 2, 2).
    pub fn resnet18() -> Self {
        Self { block: BlockKind::Basic, layers: [2, 2, 2, 2], channels: default_channels() }
    }
    /// ResNet-34: basic blocks (3, 4, 6, 3).
    pub fn resnet34() -> Self {
        Self { block: BlockKind::Basic, layers: [3, 4, 6, 3], channels: default_channels() }
    }
    /// ResNet-50: bottleneck blocks (3, 4, 6, 3).
    pub fn resnet50() -> Self {
        Self { block: BlockKind::Bottleneck, layers: [3, 4, 6, 3], channels: default_channels() }
    }

    /// Width of the pooled features.
    pub fn num_features(&self) -> usize {
        self.channels[3] * self.block.expansion()
    }
}

#[derive(Debug, Clone)]
struct Block {
    convs: Vec<Conv2d>,
    norms: Vec<BatchNorm2d>,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl Block {
    fn new(params: &ParamBuilder<'_>, kind: BlockKind, in_channels: usize, planes: usize, stride: usize) -> Result<Self> {
        let out_channels = planes * kind.expansion();
        let specs: Vec<(usize, usize, ConvSpec)> = match kind {
            BlockKind::Basic => vec![(in_channels, planes, ConvSpec::same(3, stride)), (planes, planes, ConvSpec::same(3, 1))],
            BlockKind::Bottleneck => vec![
                (in_channels, planes, ConvSpec::same(1, 1)),
                (planes, planes, ConvSpec::same(3, stride)),
                (planes, out_channels, ConvSpec::same(1, 1)),
            ],
        };
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        for (index, (cin, cout, spec)) in specs.into_iter().enumerate() {
            convs.push(Conv2d::new(&params.pp(format!("conv{}", index + 1)), cin, cout, spec)?);
            norms.push(BatchNorm2d::new(&params.pp(format!("bn{}", index + 1)), cout)?);
        }
        let downsample = if stride != 1 || in_channels != out_channels {
            let d = params.pp("downsample");
            Some((Conv2d::new(&d.pp(0), in_channels, out_channels, ConvSpec::same(1, stride))?, BatchNorm2d::new(&d.pp(1), out_channels)?))
        } else {
            None
        };
        Ok(Self { convs, norms, downsample })
    }

    /// relu(norm(conv(...relu(norm(conv(x))))) + shortcut), each BatchNorm fused with what
    /// follows it.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let shortcut = match &self.downsample {
            Some((conv, norm)) => conv.forward_bn(x, norm, train)?,
            None => x.clone(),
        };
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (index, (conv, norm)) in self.convs.iter().zip(&self.norms).enumerate() {
            let residual = (index == last).then_some(&shortcut);
            y = conv.forward_bn_fused(&y, norm, residual, FusedActivation::Relu, train)?;
        }
        Ok(y)
    }
}

/// A ResNet with timm's tensor names.
#[derive(Debug, Clone)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    stages: Vec<Vec<Block>>,
    pub(crate) fc: Linear,
}

impl ResNet {
    pub fn new(params: &ParamBuilder<'_>, config: &ResNetConfig, num_classes: usize) -> Result<Self> {
        let conv1 =
            Conv2d::new(&params.pp("conv1"), 3, STEM_CHANNELS, ConvSpec { kernel: 7, stride: 2, padding: 3, groups: 1, bias: false })?;
        let bn1 = BatchNorm2d::new(&params.pp("bn1"), STEM_CHANNELS)?;
        let mut in_channels = STEM_CHANNELS;
        let mut stages = Vec::new();
        for (stage, (&blocks, &planes)) in config.layers.iter().zip(&config.channels).enumerate() {
            let stage_params = params.pp(format!("layer{}", stage + 1));
            let mut stage_blocks = Vec::new();
            for index in 0..blocks {
                let stride = if stage > 0 && index == 0 { 2 } else { 1 };
                stage_blocks.push(Block::new(&stage_params.pp(index), config.block, in_channels, planes, stride)?);
                in_channels = planes * config.block.expansion();
            }
            stages.push(stage_blocks);
        }
        let num_features = config.num_features();
        let fc = Linear::new(&params.pp("fc"), num_features, num_classes)?;
        Ok(Self { conv1, bn1, stages, fc })
    }

    /// The final feature map (B, C, H/32, W/32), timm's `forward_features`.
    pub fn feature_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.conv1.forward_bn_fused(x, &self.bn1, None, FusedActivation::Relu, train)?;
        y = max_pool_3x3_s2_p1(&y)?;
        for stage in &self.stages {
            for block in stage {
                y = block.forward_t(&y, train)?;
            }
        }
        Ok(y)
    }

    /// Pooled features (B, num_features).
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        global_avg_pool(&self.feature_map(x, train)?)
    }
}
