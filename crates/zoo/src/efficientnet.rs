//! MobileNetV2 and EfficientNet as timm's `EfficientNet` class builds them: `conv_stem` (3x3/2)
//! with `bn1` and the activation, stages of depthwise-separable (`ds`) and inverted-residual
//! (`ir`) blocks (`blocks.S.B.*`, optional squeeze-excitation), `conv_head` (1x1) with `bn2` and
//! the activation, average pooling and `classifier`. Padding is PyTorch's symmetric k / 2 (these
//! are not the `tf_` variants) and BatchNorm eps 1e-5. Channel counts are rounded as timm's
//! `round_channels` does.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::layers::{BatchNorm2d, Conv2d, ConvSpec, Linear, SqueezeExcite, global_avg_pool, relu6};
use crate::params::ParamBuilder;
use medxfer_kernels::FusedActivation;

/// Which of timm's generators the model comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EfficientNetVariant {
    /// `_gen_mobilenet_v2`: ReLU6, no squeeze-excitation, head max(1280, round(1280 m)).
    MobilenetV2,
    /// `_gen_efficientnet`, the B0 stages scaled by the width and depth multipliers (B0-B7):
    /// SiLU, squeeze-excitation 0.25, head round(1280 m). Registry files before this name said
    /// `efficientnet_b0` for every size; it is still read.
    #[serde(rename = "efficientnet", alias = "efficientnet_b0")]
    EfficientNet,
}

/// A MobileNetV2 or EfficientNet's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EfficientNetConfig {
    /// Which generator: MobileNetV2 or EfficientNet.
    pub variant: EfficientNetVariant,
    /// Width multiplier (timm's channel_multiplier).
    pub channel_multiplier: f64,
    /// Depth multiplier: each stage's block count is ceil(repeats x this), as timm.
    #[serde(default = "one")]
    pub depth_multiplier: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockType {
    DepthwiseSeparable,
    InvertedResidual,
}

/// One stage of the arch definition: (type, repeats, kernel, stride, expansion, out channels).
type StageSpec = (BlockType, usize, usize, usize, usize, usize);

const MOBILENET_V2: [StageSpec; 7] = [
    (BlockType::DepthwiseSeparable, 1, 3, 1, 1, 16),
    (BlockType::InvertedResidual, 2, 3, 2, 6, 24),
    (BlockType::InvertedResidual, 3, 3, 2, 6, 32),
    (BlockType::InvertedResidual, 4, 3, 2, 6, 64),
    (BlockType::InvertedResidual, 3, 3, 1, 6, 96),
    (BlockType::InvertedResidual, 3, 3, 2, 6, 160),
    (BlockType::InvertedResidual, 1, 3, 1, 6, 320),
];

const EFFICIENTNET_B0: [StageSpec; 7] = [
    (BlockType::DepthwiseSeparable, 1, 3, 1, 1, 16),
    (BlockType::InvertedResidual, 2, 3, 2, 6, 24),
    (BlockType::InvertedResidual, 2, 5, 2, 6, 40),
    (BlockType::InvertedResidual, 3, 3, 2, 6, 80),
    (BlockType::InvertedResidual, 3, 5, 1, 6, 112),
    (BlockType::InvertedResidual, 4, 5, 2, 6, 192),
    (BlockType::InvertedResidual, 1, 3, 1, 6, 320),
];

/// timm's `make_divisible(v, 8)`: nearest multiple of 8, at least 8, bumped up when rounding
/// lost more than 10%.
pub fn make_divisible(value: f64) -> usize {
    let divisor: f64 = 8.0;
    let mut rounded = divisor.max(((value + divisor / 2.0) / divisor).floor() * divisor);
    if rounded < 0.9 * value {
        rounded += divisor;
    }
    rounded as usize
}

impl EfficientNetConfig {
    /// MobileNetV2 at a width multiplier (0.5 and 1.0 in the study).
    pub fn mobilenetv2(channel_multiplier: f64) -> Self {
        Self { variant: EfficientNetVariant::MobilenetV2, channel_multiplier, depth_multiplier: 1.0 }
    }
    /// EfficientNet-B0.
    pub fn efficientnet_b0() -> Self {
        Self { variant: EfficientNetVariant::EfficientNet, channel_multiplier: 1.0, depth_multiplier: 1.0 }
    }

    fn round_channels(&self, channels: usize) -> usize {
        make_divisible(channels as f64 * self.channel_multiplier)
    }

    fn stages(&self) -> &'static [StageSpec; 7] {
        match self.variant {
            EfficientNetVariant::MobilenetV2 => &MOBILENET_V2,
            EfficientNetVariant::EfficientNet => &EFFICIENTNET_B0,
        }
    }

    /// Blocks per stage after the depth multiplier: ceil(repeats x multiplier), as timm.
    pub(crate) fn stage_depths(&self) -> Vec<usize> {
        self.stages().iter().map(|stage| ((stage.1 as f64) * self.depth_multiplier).ceil() as usize).collect()
    }

    fn stem_channels(&self) -> usize {
        self.round_channels(32)
    }

    /// Width of the pooled features.
    pub fn num_features(&self) -> usize {
        match self.variant {
            EfficientNetVariant::MobilenetV2 => 1280.max(self.round_channels(1280)),
            EfficientNetVariant::EfficientNet => self.round_channels(1280),
        }
    }

    fn se_ratio(&self) -> Option<f64> {
        match self.variant {
            EfficientNetVariant::MobilenetV2 => None,
            EfficientNetVariant::EfficientNet => Some(0.25),
        }
    }

    fn activation(&self) -> Activation {
        match self.variant {
            EfficientNetVariant::MobilenetV2 => Activation::Relu6,
            EfficientNetVariant::EfficientNet => Activation::Silu,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    Relu6,
    Silu,
}

impl Activation {
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu6 => relu6(x),
            Activation::Silu => Ok(x.silu()?),
        }
    }

    /// `self(norm(conv(x)))`, fused into the BatchNorm where the activation is a clamp.
    fn after_conv_bn(self, conv: &Conv2d, norm: &BatchNorm2d, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Activation::Relu6 => conv.forward_bn_fused(x, norm, None, FusedActivation::Relu6, train),
            Activation::Silu => self.apply(&conv.forward_bn(x, norm, train)?),
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    /// ds: [conv_dw, conv_pw]; ir: [conv_pw, conv_dw, conv_pwl].
    convs: Vec<Conv2d>,
    norms: Vec<BatchNorm2d>,
    se: Option<SqueezeExcite>,
    skip: bool,
}

/// One block's shape: a stage's spec with this block's input width and stride.
#[derive(Debug, Clone, Copy)]
struct BlockSpec {
    kind: BlockType,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    expansion: usize,
    se_ratio: Option<f64>,
}

impl Block {
    fn new(p: &ParamBuilder<'_>, spec: BlockSpec) -> Result<Self> {
        let BlockSpec { kind, in_channels, out_channels, kernel, stride, expansion, se_ratio } = spec;
        let mid = match kind {
            BlockType::DepthwiseSeparable => in_channels,
            BlockType::InvertedResidual => make_divisible((in_channels * expansion) as f64),
        };
        let depthwise = ConvSpec { kernel, stride, padding: kernel / 2, groups: mid, bias: false };
        let (convs, norms) = match kind {
            BlockType::DepthwiseSeparable => (
                vec![
                    Conv2d::new(&p.pp("conv_dw"), mid, mid, depthwise)?,
                    Conv2d::new(&p.pp("conv_pw"), mid, out_channels, ConvSpec::same(1, 1))?,
                ],
                vec![BatchNorm2d::new(&p.pp("bn1"), mid)?, BatchNorm2d::new(&p.pp("bn2"), out_channels)?],
            ),
            BlockType::InvertedResidual => (
                vec![
                    Conv2d::new(&p.pp("conv_pw"), in_channels, mid, ConvSpec::same(1, 1))?,
                    Conv2d::new(&p.pp("conv_dw"), mid, mid, depthwise)?,
                    Conv2d::new(&p.pp("conv_pwl"), mid, out_channels, ConvSpec::same(1, 1))?,
                ],
                vec![
                    BatchNorm2d::new(&p.pp("bn1"), mid)?,
                    BatchNorm2d::new(&p.pp("bn2"), mid)?,
                    BatchNorm2d::new(&p.pp("bn3"), out_channels)?,
                ],
            ),
        };
        let se = match se_ratio {
            Some(ratio) => {
                // timm reduces from the block's input width: round(in x 0.25), Python's round.
                let reduced = ((in_channels as f64) * ratio).round_ties_even() as usize;
                Some(SqueezeExcite::new(&p.pp("se"), ("conv_reduce", "conv_expand"), mid, reduced)?)
            }
            None => None,
        };
        Ok(Self { convs, norms, se, skip: stride == 1 && in_channels == out_channels })
    }

    fn forward_t(&self, x: &Tensor, act: Activation, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        // Activation after every BN but the last; squeeze-excitation before the last conv.
        let last = self.convs.len() - 1;
        for (index, (conv, norm)) in self.convs.iter().zip(&self.norms).enumerate() {
            if index == last
                && let Some(se) = &self.se
            {
                y = se.forward_t(&y, |t| act.apply(t), train)?;
            }
            y = if index == last {
                // The residual add fused into the last BatchNorm.
                conv.forward_bn_fused(&y, norm, self.skip.then_some(x), FusedActivation::Identity, train)?
            } else {
                act.after_conv_bn(conv, norm, &y, train)?
            };
        }
        Ok(y)
    }
}

/// A MobileNetV2 or EfficientNet with timm's tensor names.
#[derive(Debug, Clone)]
pub struct EfficientNet {
    conv_stem: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<Vec<Block>>,
    conv_head: Conv2d,
    bn2: BatchNorm2d,
    pub(crate) classifier: Linear,
    act: Activation,
}

impl EfficientNet {
    pub fn new(params: &ParamBuilder<'_>, config: &EfficientNetConfig, num_classes: usize) -> Result<Self> {
        let stem = config.stem_channels();
        let conv_stem = Conv2d::new(&params.pp("conv_stem"), 3, stem, ConvSpec::same(3, 2))?;
        let bn1 = BatchNorm2d::new(&params.pp("bn1"), stem)?;
        let mut in_channels = stem;
        let mut blocks = Vec::new();
        for (stage, (&(kind, _, kernel, stride, expansion, out), repeats)) in config.stages().iter().zip(config.stage_depths()).enumerate()
        {
            let out_channels = config.round_channels(out);
            let mut stage_blocks = Vec::new();
            for index in 0..repeats {
                let p = params.pp("blocks").pp(stage).pp(index);
                let block_stride = if index == 0 { stride } else { 1 };
                let spec =
                    BlockSpec { kind, in_channels, out_channels, kernel, stride: block_stride, expansion, se_ratio: config.se_ratio() };
                stage_blocks.push(Block::new(&p, spec)?);
                in_channels = out_channels;
            }
            blocks.push(stage_blocks);
        }
        let features = config.num_features();
        let conv_head = Conv2d::new(&params.pp("conv_head"), in_channels, features, ConvSpec::same(1, 1))?;
        let bn2 = BatchNorm2d::new(&params.pp("bn2"), features)?;
        let classifier = Linear::new(&params.pp("classifier"), features, num_classes)?;
        Ok(Self { conv_stem, bn1, blocks, conv_head, bn2, classifier, act: config.activation() })
    }

    /// The final feature map after conv_head + bn2 + act (timm's `forward_features`).
    pub fn feature_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.act.after_conv_bn(&self.conv_stem, &self.bn1, x, train)?;
        for stage in &self.blocks {
            for block in stage {
                y = block.forward_t(&y, self.act, train)?;
            }
        }
        self.act.after_conv_bn(&self.conv_head, &self.bn2, &y, train)
    }

    /// Pooled features (B, num_features).
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        global_avg_pool(&self.feature_map(x, train)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rounding_follows_timm() {
        // Values from ZOO.md's tiny configurations and the real models.
        assert_eq!(make_divisible(32.0 * 0.35), 16);
        assert_eq!(make_divisible(64.0 * 0.35), 24);
        assert_eq!(make_divisible(32.0 * 0.3), 16);
        assert_eq!(make_divisible(16.0 * 0.5), 8);
        assert_eq!(EfficientNetConfig::mobilenetv2(0.5).num_features(), 1280);
        assert_eq!(EfficientNetConfig::efficientnet_b0().num_features(), 1280);
    }
}
