//! ResNet as timm builds it (`timm.models.resnet.ResNet`) with the options its presets use:
//! the 7x7/2 stem or the deep 3x3 stems (`stem_type` deep / deep_tiered, `stem_width`), the 3x3/2
//! max pool or its convolution replacement (`replace_stem_pool`), four stages of BasicBlocks or
//! Bottlenecks (stride on the 3x3 conv; `cardinality` groups and `base_width` for ResNeXt and the
//! wide ResNets; squeeze-excitation with `attn_layer = "se"`), a 1x1-conv + BN downsample where
//! the shape changes (after a 2x2 average pool with `avg_down`, the "D" variants), global average
//! pooling and `fc`. timm's presets of this module are data: `timm_presets.toml`.

mod presets;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::layers::{
    BatchNorm2d, Conv2d, ConvNorm, ConvSpec, Linear, SqueezeExcite, avg_pool_2x2_ceil, make_divisible, max_pool_3x3_s2_p1,
};
use crate::params::ParamBuilder;
use medxfer_kernels::FusedActivation;
pub use presets::{RESNET_PRESETS, resnet_preset, resnet_unsupported};

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

/// The stem before the stages (timm's `stem_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StemType {
    /// One 7x7/2 convolution to 64 channels (timm's "").
    #[default]
    Single,
    /// Three 3x3 convolutions: `stem_width`, `stem_width`, then 2 x `stem_width` channels.
    Deep,
    /// The same with 3/4 of `stem_width` in the first.
    DeepTiered,
}

/// The attention module at the end of each block's residual branch (timm's `attn_layer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockAttention {
    /// Squeeze-excitation (timm's `SEModule`: reduction 1/16 rounded to a multiple of 8, ReLU,
    /// sigmoid gate).
    Se,
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
    /// The stem's kind.
    #[serde(default)]
    pub stem_type: StemType,
    /// The deep stems' width (their output has twice this).
    #[serde(default = "default_stem_width")]
    pub stem_width: usize,
    /// Downsample shortcuts average-pool 2x2 before their stride-1 1x1 convolution.
    #[serde(default)]
    pub avg_down: bool,
    /// Groups of the bottleneck's 3x3 convolution (ResNeXt).
    #[serde(default = "one")]
    pub cardinality: usize,
    /// The bottleneck's width per group for 64 base channels (128: the wide ResNets).
    #[serde(default = "default_base_width")]
    pub base_width: usize,
    /// Attention at the end of each residual branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_layer: Option<BlockAttention>,
    /// A 3x3/2 convolution + BN + ReLU in place of the stem's max pool.
    #[serde(default)]
    pub replace_stem_pool: bool,
}

fn default_channels() -> [usize; 4] {
    [64, 128, 256, 512]
}

fn default_stem_width() -> usize {
    64
}

fn default_base_width() -> usize {
    64
}

fn one() -> usize {
    1
}

impl ResNetConfig {
    /// A ResNet of `block`s and `layers` with timm's defaults for everything else (the paper's
    /// v1.5 ResNets).
    pub fn plain(block: BlockKind, layers: [usize; 4]) -> Self {
        Self {
            block,
            layers,
            channels: default_channels(),
            stem_type: StemType::Single,
            stem_width: default_stem_width(),
            avg_down: false,
            cardinality: 1,
            base_width: default_base_width(),
            attn_layer: None,
            replace_stem_pool: false,
        }
    }
    /// ResNet-18: basic blocks (2, 2, 2, 2).
    pub fn resnet18() -> Self {
        Self::plain(BlockKind::Basic, [2, 2, 2, 2])
    }
    /// ResNet-34: basic blocks (3, 4, 6, 3).
    pub fn resnet34() -> Self {
        Self::plain(BlockKind::Basic, [3, 4, 6, 3])
    }
    /// ResNet-50: bottleneck blocks (3, 4, 6, 3).
    pub fn resnet50() -> Self {
        Self::plain(BlockKind::Bottleneck, [3, 4, 6, 3])
    }

    /// Width of the pooled features.
    pub fn num_features(&self) -> usize {
        self.channels[3] * self.block.expansion()
    }

    /// The stem's output channels (timm's `inplanes`).
    fn stem_channels(&self) -> usize {
        match self.stem_type {
            StemType::Single => 64,
            StemType::Deep | StemType::DeepTiered => 2 * self.stem_width,
        }
    }

    /// The bottleneck's inner width for `planes` (timm: floor(planes * base_width / 64) *
    /// cardinality).
    fn bottleneck_width(&self, planes: usize) -> usize {
        planes * self.base_width / 64 * self.cardinality
    }

    /// Sizes no network has, in words: a basic block with groups, a width of zero channels.
    pub(crate) fn check_options(&self) -> std::result::Result<(), String> {
        if self.block == BlockKind::Basic && (self.cardinality != 1 || self.base_width != 64) {
            return Err("basic blocks take neither cardinality nor base_width (timm's BasicBlock supports only 1 and 64)".into());
        }
        if !(1..=1024).contains(&self.cardinality) || !(1..=4096).contains(&self.base_width) {
            return Err(format!("cardinality {} / base_width {} is outside 1..1024 / 1..4096", self.cardinality, self.base_width));
        }
        if !(4..=1 << 12).contains(&self.stem_width) {
            return Err(format!("stem_width is {}; expected 4 to 4096", self.stem_width));
        }
        if self.block == BlockKind::Bottleneck && self.channels.iter().any(|&planes| self.bottleneck_width(planes) == 0) {
            return Err(format!("channels {:?} with base_width {} give a bottleneck of zero channels", self.channels, self.base_width));
        }
        Ok(())
    }
}

/// The rounding timm's `make_divisible(v, 8, round_limit=0)` does for SE widths.
pub(crate) fn se_width(channels: usize) -> usize {
    make_divisible(channels as f64 / 16.0, 0.0)
}

/// The shortcut where a block changes shape: 1x1 conv (stride s) + BN, or with `avg_down` a 2x2
/// average pool (ceil mode, padding not counted) then a stride-1 1x1 conv + BN.
#[derive(Debug, Clone)]
struct Downsample {
    pool: bool,
    conv: Conv2d,
    norm: BatchNorm2d,
}

impl Downsample {
    fn new(params: &ParamBuilder<'_>, config: &ResNetConfig, in_channels: usize, out_channels: usize, stride: usize) -> Result<Self> {
        // timm's Sequential keeps the pool's index (an Identity at stride 1): conv at 1, BN at 2.
        let (first, conv_stride) = if config.avg_down { (1, 1) } else { (0, stride) };
        Ok(Self {
            pool: config.avg_down && stride > 1,
            conv: Conv2d::new(&params.pp(first), in_channels, out_channels, ConvSpec::same(1, conv_stride))?,
            norm: BatchNorm2d::new(&params.pp(first + 1), out_channels)?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = if self.pool { avg_pool_2x2_ceil(x)? } else { x.clone() };
        self.conv.forward_bn(&x, &self.norm, train)
    }
}

#[derive(Debug, Clone)]
struct Block {
    convs: Vec<Conv2d>,
    norms: Vec<BatchNorm2d>,
    se: Option<SqueezeExcite>,
    downsample: Option<Downsample>,
}

impl Block {
    fn new(params: &ParamBuilder<'_>, config: &ResNetConfig, in_channels: usize, planes: usize, stride: usize) -> Result<Self> {
        let out_channels = planes * config.block.expansion();
        let specs: Vec<(usize, usize, ConvSpec)> = match config.block {
            BlockKind::Basic => vec![(in_channels, planes, ConvSpec::same(3, stride)), (planes, planes, ConvSpec::same(3, 1))],
            BlockKind::Bottleneck => {
                let width = config.bottleneck_width(planes);
                vec![
                    (in_channels, width, ConvSpec::same(1, 1)),
                    (width, width, ConvSpec { groups: config.cardinality, ..ConvSpec::same(3, stride) }),
                    (width, out_channels, ConvSpec::same(1, 1)),
                ]
            }
        };
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        for (index, (cin, cout, spec)) in specs.into_iter().enumerate() {
            convs.push(Conv2d::new(&params.pp(format!("conv{}", index + 1)), cin, cout, spec)?);
            norms.push(BatchNorm2d::new(&params.pp(format!("bn{}", index + 1)), cout)?);
        }
        let se = match config.attn_layer {
            Some(BlockAttention::Se) => Some(SqueezeExcite::new(&params.pp("se"), ("fc1", "fc2"), out_channels, se_width(out_channels))?),
            None => None,
        };
        let downsample = if stride != 1 || in_channels != out_channels {
            Some(Downsample::new(&params.pp("downsample"), config, in_channels, out_channels, stride)?)
        } else {
            None
        };
        Ok(Self { convs, norms, se, downsample })
    }

    /// relu(se(norm(conv(...relu(norm(conv(x)))))) + shortcut), each BatchNorm fused with what
    /// follows it.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let shortcut = match &self.downsample {
            Some(downsample) => downsample.forward_t(x, train)?,
            None => x.clone(),
        };
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (index, (conv, norm)) in self.convs.iter().zip(&self.norms).enumerate() {
            if index < last {
                y = conv.forward_bn_fused(&y, norm, None, FusedActivation::Relu, train)?;
            } else if let Some(se) = &self.se {
                let branch = se.forward_t(&conv.forward_bn(&y, norm, train)?, |t| Ok(FusedActivation::Relu.apply(t)?), train)?;
                y = FusedActivation::Relu.after_residual(branch, Some(&shortcut))?;
            } else {
                y = conv.forward_bn_fused(&y, norm, Some(&shortcut), FusedActivation::Relu, train)?;
            }
        }
        Ok(y)
    }
}

/// A ResNet with timm's tensor names.
#[derive(Debug, Clone)]
pub struct ResNet {
    /// The deep stem's first two conv + BN + ReLU (empty for the single 7x7).
    deep_stem: Vec<ConvNorm>,
    /// The stem's last convolution (`conv1` or `conv1.6`) and `bn1`.
    stem: ConvNorm,
    /// `maxpool.0`/`maxpool.1` where a convolution replaces the stem's max pool.
    stem_pool: Option<ConvNorm>,
    stages: Vec<Vec<Block>>,
    pub(crate) fc: Linear,
}

impl ResNet {
    pub fn new(params: &ParamBuilder<'_>, config: &ResNetConfig, num_classes: usize) -> Result<Self> {
        let inplanes = config.stem_channels();
        let bn1 = BatchNorm2d::new(&params.pp("bn1"), inplanes)?;
        let (deep_stem, stem) = match config.stem_type {
            StemType::Single => {
                let conv =
                    Conv2d::new(&params.pp("conv1"), 3, inplanes, ConvSpec { kernel: 7, stride: 2, padding: 3, groups: 1, bias: false })?;
                (Vec::new(), ConvNorm { conv, norm: bn1 })
            }
            StemType::Deep | StemType::DeepTiered => {
                let width = config.stem_width;
                let first = if config.stem_type == StemType::DeepTiered { 3 * (width / 4) } else { width };
                let p = params.pp("conv1");
                let layer = |conv: usize, cin: usize, cout: usize, stride: usize| -> Result<ConvNorm> {
                    ConvNorm::new(&p.pp(conv), &p.pp(conv + 1), cin, cout, ConvSpec::same(3, stride))
                };
                let deep = vec![layer(0, 3, first, 2)?, layer(3, first, width, 1)?];
                (deep, ConvNorm { conv: Conv2d::new(&p.pp(6), width, inplanes, ConvSpec::same(3, 1))?, norm: bn1 })
            }
        };
        let stem_pool = if config.replace_stem_pool {
            let p = params.pp("maxpool");
            Some(ConvNorm::new(&p.pp(0), &p.pp(1), inplanes, inplanes, ConvSpec::same(3, 2))?)
        } else {
            None
        };
        let mut in_channels = inplanes;
        let mut stages = Vec::new();
        for (stage, (&blocks, &planes)) in config.layers.iter().zip(&config.channels).enumerate() {
            let stage_params = params.pp(format!("layer{}", stage + 1));
            let mut stage_blocks = Vec::new();
            for index in 0..blocks {
                let stride = if stage > 0 && index == 0 { 2 } else { 1 };
                stage_blocks.push(Block::new(&stage_params.pp(index), config, in_channels, planes, stride)?);
                in_channels = planes * config.block.expansion();
            }
            stages.push(stage_blocks);
        }
        let fc = Linear::new(&params.pp("fc"), config.num_features(), num_classes)?;
        Ok(Self { deep_stem, stem, stem_pool, stages, fc })
    }

    /// The final feature map (B, C, H/32, W/32), timm's `forward_features`.
    pub fn feature_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for layer in &self.deep_stem {
            y = layer.forward(&y, None, FusedActivation::Relu, train)?;
        }
        y = self.stem.forward(&y, None, FusedActivation::Relu, train)?;
        y = match &self.stem_pool {
            Some(pool) => pool.forward(&y, None, FusedActivation::Relu, train)?,
            None => max_pool_3x3_s2_p1(&y)?,
        };
        for stage in &self.stages {
            for block in stage {
                y = block.forward_t(&y, train)?;
            }
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn se_widths_round_as_timm() {
        // timm: make_divisible(c / 16, 8, round_limit=0.)
        assert_eq!([64, 256, 512, 1024, 2048, 200].map(se_width), [8, 16, 32, 64, 128, 16]);
    }
}
