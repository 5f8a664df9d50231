//! timm's `EfficientNet` class and the generators of it the zoo builds: MobileNetV2,
//! EfficientNet B0-B8/L2 and EfficientNetV2 (B0-B3, S, M, L, XL and the `rw` variants), with
//! their `tf_` twins. `conv_stem` (3x3/2) with `bn1` and the activation; stages of blocks
//! (`blocks.S.B.*`) decoded from timm's block strings (`arch.rs`): depthwise-separable (`ds`),
//! inverted-residual (`ir`), edge-residual (`er`, FusedMBConv) and conv-BN-act (`cn`), with
//! squeeze-excitation where the string says so; `conv_head` (1x1) with `bn2` and the
//! activation, average pooling and `classifier`. Channel counts are rounded as timm's
//! `round_channels` does. The `tf_` models pad as TensorFlow ("SAME": asymmetric at stride 2)
//! and use BatchNorm eps 1e-3; the others PyTorch's symmetric k / 2 and eps 1e-5.

mod arch;
mod presets;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layers::{BatchNorm2d, Conv2d, ConvSpec, Linear, SqueezeExcite, make_divisible};
use crate::params::ParamBuilder;
use arch::{BlockArgs, BlockType};
use medxfer_kernels::FusedActivation;
pub use presets::{EFFICIENTNET_PRESETS, efficientnet_preset, efficientnet_unsupported};

/// Which of timm's generators the model comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EfficientNetVariant {
    /// `_gen_mobilenet_v2`: ReLU6, no squeeze-excitation, head max(1280, round(1280 m)).
    MobilenetV2,
    /// `_gen_efficientnet`, the B0 stages scaled by the width and depth multipliers (B0-B8,
    /// L2): SiLU, squeeze-excitation 0.25, head round(1280 m). Registry files before this name
    /// said `efficientnet_b0` for every size; it is still read.
    #[serde(rename = "efficientnet", alias = "efficientnet_b0")]
    EfficientNet,
    /// `_gen_efficientnetv2_base` (EfficientNetV2 B0-B3): channels rounded down (round_limit 0).
    #[serde(rename = "efficientnetv2_base")]
    EfficientNetV2Base,
    /// `_gen_efficientnetv2_s` (S; with `rw`, timm's own first S, and its T and M variants).
    #[serde(rename = "efficientnetv2_s")]
    EfficientNetV2S,
    /// `_gen_efficientnetv2_m`.
    #[serde(rename = "efficientnetv2_m")]
    EfficientNetV2M,
    /// `_gen_efficientnetv2_l`.
    #[serde(rename = "efficientnetv2_l")]
    EfficientNetV2L,
    /// `_gen_efficientnetv2_xl`.
    #[serde(rename = "efficientnetv2_xl")]
    EfficientNetV2Xl,
}

/// The depth multiplier: one for every stage, or one per stage (`efficientnetv2_rw_m`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DepthMultiplier {
    /// The same for every stage.
    Uniform(f64),
    /// One per stage of the generator's arch_def.
    PerStage(Vec<f64>),
}

impl Default for DepthMultiplier {
    fn default() -> Self {
        Self::Uniform(1.0)
    }
}

/// How the convolutions pad.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// PyTorch's symmetric k / 2 (timm's default `pad_type=''`).
    #[default]
    Symmetric,
    /// TensorFlow's "SAME" (timm's `pad_type='same'`, the `tf_` models).
    Same,
}

/// A MobileNetV2, EfficientNet or EfficientNetV2's shape: the generator and the keyword
/// arguments timm's entry point passes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EfficientNetConfig {
    /// Which generator.
    pub variant: EfficientNetVariant,
    /// Width multiplier (timm's channel_multiplier).
    pub channel_multiplier: f64,
    /// Depth multiplier: each stage's block count is ceil(repeats x this), as timm.
    #[serde(default)]
    pub depth_multiplier: DepthMultiplier,
    /// `_gen_efficientnetv2_s(rw=True)`: timm's EfficientNetV2-S from before the official
    /// release (an `er` first stage, 272 channels last, 1792 features).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rw: bool,
    /// `_gen_mobilenet_v2(fix_stem_head=True)`: stem and head widths, and the first and last
    /// stages' depths, not scaled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fix_stem_head: bool,
    /// BatchNorm epsilon (1e-3 for the `tf_` models).
    #[serde(default = "default_bn_eps")]
    pub bn_eps: f64,
    /// Convolution padding ("same" for the `tf_` models).
    #[serde(default)]
    pub padding: Padding,
}

fn default_bn_eps() -> f64 {
    1e-5
}

/// One block as built: its decoded string, input width and stride in the stage.
#[derive(Debug, Clone, Copy)]
struct BlockSpec {
    args: BlockArgs,
    in_channels: usize,
    out_channels: usize,
    stride: usize,
}

impl EfficientNetConfig {
    fn with_variant(variant: EfficientNetVariant, channel_multiplier: f64, depth_multiplier: f64) -> Self {
        Self {
            variant,
            channel_multiplier,
            depth_multiplier: DepthMultiplier::Uniform(depth_multiplier),
            rw: false,
            fix_stem_head: false,
            bn_eps: default_bn_eps(),
            padding: Padding::Symmetric,
        }
    }

    /// MobileNetV2 at a width multiplier (0.5 and 1.0 in the study).
    pub fn mobilenetv2(channel_multiplier: f64) -> Self {
        Self::with_variant(EfficientNetVariant::MobilenetV2, channel_multiplier, 1.0)
    }

    /// EfficientNet-B0 (the study's) or a larger one by its multipliers.
    pub fn efficientnet(channel_multiplier: f64, depth_multiplier: f64) -> Self {
        Self::with_variant(EfficientNetVariant::EfficientNet, channel_multiplier, depth_multiplier)
    }

    /// EfficientNet-B0.
    pub fn efficientnet_b0() -> Self {
        Self::efficientnet(1.0, 1.0)
    }

    /// timm's `round_channels`: EfficientNetV2-B* round down (round_limit 0), the rest as
    /// `make_divisible`.
    fn round_channels(&self, channels: usize) -> usize {
        let limit = if self.variant == EfficientNetVariant::EfficientNetV2Base { 0.0 } else { 0.9 };
        make_divisible(channels as f64 * self.channel_multiplier, limit)
    }

    /// The generator's block strings, one per stage.
    fn arch_def(&self) -> Vec<&'static str> {
        use EfficientNetVariant as V;
        let mut stages = match self.variant {
            V::MobilenetV2 => arch::MOBILENET_V2.to_vec(),
            V::EfficientNet => arch::EFFICIENTNET.to_vec(),
            V::EfficientNetV2Base => arch::EFFICIENTNETV2_BASE.to_vec(),
            V::EfficientNetV2S => arch::EFFICIENTNETV2_S.to_vec(),
            V::EfficientNetV2M => arch::EFFICIENTNETV2_M.to_vec(),
            V::EfficientNetV2L => arch::EFFICIENTNETV2_L.to_vec(),
            V::EfficientNetV2Xl => arch::EFFICIENTNETV2_XL.to_vec(),
        };
        if self.rw {
            let last = stages.len() - 1;
            stages[0] = arch::EFFICIENTNETV2_S_RW_FIRST;
            stages[last] = arch::EFFICIENTNETV2_S_RW_LAST;
        }
        stages
    }

    /// Each stage's blocks, decoded and scaled by the depth multiplier.
    fn stage_blocks(&self) -> Result<Vec<Vec<BlockArgs>>> {
        let stages = self.arch_def();
        let multipliers = match &self.depth_multiplier {
            DepthMultiplier::Uniform(m) => vec![*m; stages.len()],
            DepthMultiplier::PerStage(list) if list.len() == stages.len() => list.clone(),
            DepthMultiplier::PerStage(list) => {
                return Err(Error::Config {
                    source_name: format!("{:?}", self.variant),
                    problem: format!("depth_multiplier has {} values for {} stages", list.len(), stages.len()),
                });
            }
        };
        let last = stages.len() - 1;
        stages
            .iter()
            .zip(multipliers)
            .enumerate()
            .map(|(index, (text, multiplier))| {
                // fix_stem_head keeps the first and last stages' depths (timm's fix_first_last).
                let multiplier = if self.fix_stem_head && (index == 0 || index == last) { 1.0 } else { multiplier };
                Ok(arch::scale_stage(&[arch::decode_block(text)?], multiplier))
            })
            .collect()
    }

    /// Blocks per stage after the depth multiplier, as timm.
    pub(crate) fn stage_depths(&self) -> Vec<usize> {
        self.stage_blocks().map(|stages| stages.iter().map(Vec::len).collect()).unwrap_or_default()
    }

    fn stem_channels(&self) -> usize {
        let stem = match self.variant {
            EfficientNetVariant::EfficientNetV2S | EfficientNetVariant::EfficientNetV2M => 24,
            _ => 32,
        };
        if self.fix_stem_head { stem } else { self.round_channels(stem) }
    }

    /// Width of the pooled features.
    pub fn num_features(&self) -> usize {
        use EfficientNetVariant as V;
        match self.variant {
            V::MobilenetV2 if self.fix_stem_head => 1280,
            V::MobilenetV2 => 1280.max(self.round_channels(1280)),
            V::EfficientNet | V::EfficientNetV2Base => self.round_channels(1280),
            V::EfficientNetV2S => self.round_channels(if self.rw { 1792 } else { 1280 }),
            // timm's M, L and XL generators do not scale the head.
            V::EfficientNetV2M | V::EfficientNetV2L | V::EfficientNetV2Xl => 1280,
        }
    }

    /// The activation after every BatchNorm but a block's last, fused into it in train mode
    /// (SiLU's input then not kept for the backward pass, which recomputes it from the
    /// BatchNorm's).
    fn activation(&self) -> FusedActivation {
        match self.variant {
            EfficientNetVariant::MobilenetV2 => FusedActivation::Relu6,
            _ => FusedActivation::Silu,
        }
    }

    /// The options the builder refuses.
    pub(crate) fn check_options(&self) -> std::result::Result<(), String> {
        if self.rw && self.variant != EfficientNetVariant::EfficientNetV2S {
            return Err("rw applies to the efficientnetv2_s generator only".into());
        }
        if self.fix_stem_head && self.variant != EfficientNetVariant::MobilenetV2 {
            return Err("fix_stem_head applies to the mobilenet_v2 generator only".into());
        }
        if !(self.bn_eps.is_finite() && self.bn_eps > 0.0 && self.bn_eps < 1.0) {
            return Err(format!("bn_eps is {}; expected more than 0, less than 1", self.bn_eps));
        }
        let multipliers = match &self.depth_multiplier {
            DepthMultiplier::Uniform(m) => vec![*m],
            DepthMultiplier::PerStage(list) => list.clone(),
        };
        if multipliers.iter().any(|m| !(m.is_finite() && *m > 0.0 && *m <= 64.0)) {
            return Err(format!("depth_multiplier is {:?}; expected more than 0, at most 64", self.depth_multiplier));
        }
        self.stage_blocks().map(|_| ()).map_err(|e| e.to_string())
    }
}

/// One block's layers: the convolutions with their BatchNorms in order (ds: conv_dw, conv_pw;
/// ir: conv_pw, conv_dw, conv_pwl; er: conv_exp, conv_pwl; cn: conv), squeeze-excitation
/// before the last of them (ds, ir, er).
#[derive(Debug, Clone)]
struct Block {
    kind: BlockType,
    convs: Vec<Conv2d>,
    norms: Vec<BatchNorm2d>,
    se: Option<SqueezeExcite>,
    skip: bool,
}

impl Block {
    fn new(p: &ParamBuilder<'_>, spec: BlockSpec, config: &EfficientNetConfig) -> Result<Self> {
        let BlockSpec { args, in_channels, out_channels, stride } = spec;
        let kernel = args.kernel;
        let conv = |name: &str, cin: usize, cout: usize, spec: ConvSpec| -> Result<Conv2d> {
            let conv = Conv2d::new(&p.pp(name), cin, cout, spec)?;
            Ok(if config.padding == Padding::Same { conv.with_tf_same_padding() } else { conv })
        };
        let norm = |name: &str, channels: usize| BatchNorm2d::with_eps(&p.pp(name), channels, config.bn_eps);
        let pointwise = ConvSpec::same(1, 1);
        let full = ConvSpec::same(kernel, stride);
        let depthwise = |mid: usize| ConvSpec { groups: mid, ..full };
        // timm's blocks expand with make_divisible(in x e) (round_limit 0.9).
        let expanded = make_divisible(in_channels as f64 * args.exp_ratio, 0.9);
        let (mid, convs, norms) = match args.kind {
            BlockType::DepthwiseSeparable => (
                in_channels,
                vec![
                    conv("conv_dw", in_channels, in_channels, depthwise(in_channels))?,
                    conv("conv_pw", in_channels, out_channels, pointwise)?,
                ],
                vec![norm("bn1", in_channels)?, norm("bn2", out_channels)?],
            ),
            BlockType::InvertedResidual => (
                expanded,
                vec![
                    conv("conv_pw", in_channels, expanded, pointwise)?,
                    conv("conv_dw", expanded, expanded, depthwise(expanded))?,
                    conv("conv_pwl", expanded, out_channels, pointwise)?,
                ],
                vec![norm("bn1", expanded)?, norm("bn2", expanded)?, norm("bn3", out_channels)?],
            ),
            BlockType::EdgeResidual => (
                expanded,
                vec![conv("conv_exp", in_channels, expanded, full)?, conv("conv_pwl", expanded, out_channels, pointwise)?],
                vec![norm("bn1", expanded)?, norm("bn2", out_channels)?],
            ),
            BlockType::ConvBnAct => (out_channels, vec![conv("conv", in_channels, out_channels, full)?], vec![norm("bn1", out_channels)?]),
        };
        let se = if args.se_ratio > 0.0 && args.kind != BlockType::ConvBnAct {
            // timm's builder divides the ratio by the expansion (SE relative to the block's
            // input), SqueezeExcite then reduces the expanded width: round(mid x se / e).
            let reduced = (mid as f64 * (args.se_ratio / args.exp_ratio)).round_ties_even() as usize;
            Some(SqueezeExcite::new(&p.pp("se"), ("conv_reduce", "conv_expand"), mid, reduced)?)
        } else {
            None
        };
        let same_shape = stride == 1 && in_channels == out_channels;
        let skip = match args.kind {
            // ConvBnAct has a skip only where the string asks for one.
            BlockType::ConvBnAct => same_shape && args.skip == Some(true),
            _ => same_shape && args.skip != Some(false),
        };
        Ok(Self { kind: args.kind, convs, norms, se, skip })
    }

    fn forward_t(&self, x: &Tensor, act: FusedActivation, train: bool) -> Result<Tensor> {
        if self.kind == BlockType::ConvBnAct {
            // conv, BN, activation, then the skip (after the activation).
            let y = self.convs[0].forward_bn_fused(x, &self.norms[0], None, act, train)?;
            return Ok(if self.skip { (y + x)? } else { y });
        }
        let mut y = x.clone();
        // Activation after every BN but the last; squeeze-excitation before the last conv.
        let last = self.convs.len() - 1;
        for (index, (conv, norm)) in self.convs.iter().zip(&self.norms).enumerate() {
            if index == last
                && let Some(se) = &self.se
            {
                y = se.forward_t(&y, |t| Ok(act.apply(t)?), train)?;
            }
            y = if index == last {
                // The residual add fused into the last BatchNorm.
                conv.forward_bn_fused(&y, norm, self.skip.then_some(x), FusedActivation::Identity, train)?
            } else {
                conv.forward_bn_fused(&y, norm, None, act, train)?
            };
        }
        Ok(y)
    }
}

/// A MobileNetV2, EfficientNet or EfficientNetV2 with timm's tensor names.
#[derive(Debug, Clone)]
pub struct EfficientNet {
    conv_stem: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<Vec<Block>>,
    conv_head: Conv2d,
    bn2: BatchNorm2d,
    pub(crate) classifier: Linear,
    act: FusedActivation,
}

impl EfficientNet {
    pub fn new(params: &ParamBuilder<'_>, config: &EfficientNetConfig, num_classes: usize) -> Result<Self> {
        let padded = |conv: Conv2d| if config.padding == Padding::Same { conv.with_tf_same_padding() } else { conv };
        let stem = config.stem_channels();
        let conv_stem = padded(Conv2d::new(&params.pp("conv_stem"), 3, stem, ConvSpec::same(3, 2))?);
        let bn1 = BatchNorm2d::with_eps(&params.pp("bn1"), stem, config.bn_eps)?;
        let mut in_channels = stem;
        let mut blocks = Vec::new();
        for (stage, stage_args) in config.stage_blocks()?.into_iter().enumerate() {
            let mut stage_blocks = Vec::new();
            for (index, args) in stage_args.into_iter().enumerate() {
                let out_channels = config.round_channels(args.out_channels);
                let spec = BlockSpec { args, in_channels, out_channels, stride: if index == 0 { args.stride } else { 1 } };
                stage_blocks.push(Block::new(&params.pp("blocks").pp(stage).pp(index), spec, config)?);
                in_channels = out_channels;
            }
            blocks.push(stage_blocks);
        }
        let features = config.num_features();
        let conv_head = padded(Conv2d::new(&params.pp("conv_head"), in_channels, features, ConvSpec::same(1, 1))?);
        let bn2 = BatchNorm2d::with_eps(&params.pp("bn2"), features, config.bn_eps)?;
        let classifier = Linear::new(&params.pp("classifier"), features, num_classes)?;
        Ok(Self { conv_stem, bn1, blocks, conv_head, bn2, classifier, act: config.activation() })
    }

    /// The final feature map after conv_head + bn2 + act (timm's `forward_features`).
    pub fn feature_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.conv_stem.forward_bn_fused(x, &self.bn1, None, self.act, train)?;
        for stage in &self.blocks {
            for block in stage {
                y = block.forward_t(&y, self.act, train)?;
            }
        }
        self.conv_head.forward_bn_fused(&y, &self.bn2, None, self.act, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rounding_follows_timm() {
        // Values from ZOO.md's tiny configurations and the real models.
        assert_eq!(make_divisible(32.0 * 0.35, 0.9), 16);
        assert_eq!(make_divisible(64.0 * 0.35, 0.9), 24);
        assert_eq!(make_divisible(32.0 * 0.3, 0.9), 16);
        assert_eq!(make_divisible(16.0 * 0.5, 0.9), 8);
        // round_limit 0 (EfficientNetV2-B*) keeps 9 -> 8; 0.9 bumps it to 16 (8 < 0.9 x 9).
        assert_eq!(make_divisible(9.0, 0.0), 8);
        assert_eq!(make_divisible(9.0, 0.9), 16);
        assert_eq!(EfficientNetConfig::mobilenetv2(0.5).num_features(), 1280);
        assert_eq!(EfficientNetConfig::efficientnet_b0().num_features(), 1280);
    }
}
