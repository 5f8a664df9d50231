//! RegNet X and Y as timm builds them (`timm.models.regnet.RegNet`): a 3x3/2 conv + BN + ReLU stem
//! (`stem`), four stages `s1`..`s4` of bottleneck blocks `b1`.. — 1x1 conv, grouped 3x3 conv
//! (stride on the first block), squeeze-excitation on the bottleneck for Y (reduced to
//! round(block input x `se_ratio`) channels), 1x1 conv without activation, a 1x1 conv + BN
//! shortcut where the shape changes, ReLU after the add — then average pooling and `head.fc`.
//! Every block width comes from the design space's four numbers (w0, wa, wm, depth) and the group
//! width, computed in float32 as timm does. timm's presets of this module are data:
//! `timm_presets.toml`.

mod presets;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::layers::{ConvNorm, ConvSpec, Linear, SqueezeExcite};
use crate::params::ParamBuilder;
use medxfer_kernels::FusedActivation;
pub use presets::{REGNET_PRESETS, regnet_preset, regnet_unsupported};

/// A RegNet's design-space parameters (timm's `RegNetCfg` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegNetConfig {
    /// Blocks in all.
    pub depth: usize,
    /// Initial width.
    pub w0: usize,
    /// Width slope.
    pub wa: f64,
    /// Width multiplier between stages.
    pub wm: f64,
    /// Channels per group of the 3x3 convolution.
    pub group_size: usize,
    /// Bottleneck width over block width.
    #[serde(default = "one")]
    pub bottle_ratio: f64,
    /// Squeeze-excitation width over the block's input width (0: none, the X models).
    #[serde(default)]
    pub se_ratio: f64,
    /// torchvision's rounding of widths to the group width when not 0 (the `_tv` models).
    #[serde(default)]
    pub group_min_ratio: f64,
    /// The stem's output channels.
    #[serde(default = "default_stem_width")]
    pub stem_width: usize,
}

fn one() -> f64 {
    1.0
}

fn default_stem_width() -> usize {
    32
}

/// One stage as timm resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegNetStage {
    /// Output channels of its blocks.
    pub width: usize,
    /// Its blocks.
    pub depth: usize,
    /// Channels per group.
    pub group_size: usize,
}

impl RegNetConfig {
    /// The stages timm's `generate_regnet` and `adjust_widths_groups_comp` give: per-block widths
    /// w0 + i * wa snapped to w0 * wm^round(log_wm((w0 + i wa) / w0)) and quantised to 8 (in
    /// float32, as timm's tensors compute them), runs of equal widths made stages, then each
    /// width made a multiple of its group width.
    pub fn stages(&self) -> std::result::Result<Vec<RegNetStage>, String> {
        if !(self.wa >= 0.0 && self.wm > 1.0 && self.w0 > 0 && self.w0.is_multiple_of(8) && self.group_size > 0) {
            return Err(format!(
                "wa {} / wm {} / w0 {} / group_size {}: timm needs wa >= 0, wm > 1, w0 a positive multiple of 8, group_size > 0",
                self.wa, self.wm, self.w0, self.group_size
            ));
        }
        let (w0, wa) = (self.w0 as f32, self.wa as f32);
        let log_wm = self.wm.ln() as f32;
        let mut stages: Vec<RegNetStage> = Vec::new();
        for i in 0..self.depth {
            let continuous = i as f32 * wa + w0;
            let exponent = ((continuous / w0).ln() / log_wm).round_ties_even();
            let width = ((w0 * (self.wm as f32).powf(exponent)) / 8.0).round_ties_even() * 8.0;
            let width = width as usize;
            match stages.last_mut() {
                Some(stage) if stage.width == width => stage.depth += 1,
                _ => stages.push(RegNetStage { width, depth: 1, group_size: self.group_size }),
            }
        }
        // timm's torch.unique sorts and merges equal widths; with wa >= 0 the widths never fall,
        // so the runs of equal widths are those stages, already in order.
        for stage in &mut stages {
            let bottleneck = (stage.width as f64 * self.bottle_ratio) as usize;
            stage.group_size = stage.group_size.min(bottleneck);
            let group = stage.group_size;
            let snapped = if self.group_min_ratio != 0.0 {
                let rounded = group.max((bottleneck + group / 2) / group * group);
                if (rounded as f64) < self.group_min_ratio * bottleneck as f64 { rounded + group } else { rounded }
            } else {
                ((bottleneck as f64 / group as f64).round_ties_even() * group as f64) as usize
            };
            stage.width = (snapped as f64 / self.bottle_ratio) as usize;
        }
        if stages.len() != 4 {
            return Err(format!("these parameters give {} stages; timm's RegNet has four", stages.len()));
        }
        Ok(stages)
    }

    /// Width of the pooled features.
    pub fn num_features(&self) -> usize {
        self.stages().ok().and_then(|stages| stages.last().map(|s| s.width)).unwrap_or(0)
    }

    /// Sizes no network has, in words.
    pub(crate) fn check_options(&self) -> std::result::Result<(), String> {
        if !(1..=1000).contains(&self.depth) || !(8..=1 << 14).contains(&self.w0) || !(1..=4096).contains(&self.stem_width) {
            return Err(format!(
                "depth {} / w0 {} / stem_width {} outside 1..1000 / 8..16384 / 1..4096",
                self.depth, self.w0, self.stem_width
            ));
        }
        if !(self.wa.is_finite() && self.wa <= 1e4 && self.wm.is_finite() && self.wm <= 16.0) {
            return Err(format!("wa {} / wm {}: expected at most 10000 / 16", self.wa, self.wm));
        }
        if !(self.bottle_ratio > 0.0 && self.bottle_ratio <= 16.0 && (0.0..=1.0).contains(&self.se_ratio)) {
            return Err(format!("bottle_ratio {} / se_ratio {}: expected (0, 16] / [0, 1]", self.bottle_ratio, self.se_ratio));
        }
        self.stages().map(|_| ())
    }
}

/// timm's `ConvNormAct` under `params`: `.conv` and `.bn`.
fn conv_norm(params: &ParamBuilder<'_>, in_channels: usize, out_channels: usize, spec: ConvSpec) -> Result<ConvNorm> {
    ConvNorm::new(&params.pp("conv"), &params.pp("bn"), in_channels, out_channels, spec)
}

#[derive(Debug, Clone)]
struct Block {
    conv1: ConvNorm,
    conv2: ConvNorm,
    se: Option<SqueezeExcite>,
    conv3: ConvNorm,
    downsample: Option<ConvNorm>,
}

impl Block {
    fn new(params: &ParamBuilder<'_>, config: &RegNetConfig, in_chs: usize, stage: RegNetStage, stride: usize) -> Result<Self> {
        let out_chs = stage.width;
        let bottleneck = (out_chs as f64 * config.bottle_ratio).round_ties_even() as usize;
        let groups = bottleneck / stage.group_size;
        let se = if config.se_ratio > 0.0 {
            let reduced = (in_chs as f64 * config.se_ratio).round_ties_even() as usize;
            Some(SqueezeExcite::new(&params.pp("se"), ("fc1", "fc2"), bottleneck, reduced)?)
        } else {
            None
        };
        let downsample = if in_chs != out_chs || stride != 1 {
            Some(conv_norm(&params.pp("downsample"), in_chs, out_chs, ConvSpec::same(1, stride))?)
        } else {
            None
        };
        Ok(Self {
            conv1: conv_norm(&params.pp("conv1"), in_chs, bottleneck, ConvSpec::same(1, 1))?,
            conv2: conv_norm(&params.pp("conv2"), bottleneck, bottleneck, ConvSpec { groups, ..ConvSpec::same(3, stride) })?,
            se,
            conv3: conv_norm(&params.pp("conv3"), bottleneck, out_chs, ConvSpec::same(1, 1))?,
            downsample,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let shortcut = match &self.downsample {
            Some(downsample) => downsample.forward(x, None, FusedActivation::Identity, train)?,
            None => x.clone(),
        };
        let mut y = self.conv1.forward(x, None, FusedActivation::Relu, train)?;
        y = self.conv2.forward(&y, None, FusedActivation::Relu, train)?;
        if let Some(se) = &self.se {
            y = se.forward_t(&y, |t| Ok(FusedActivation::Relu.apply(t)?), train)?;
        }
        self.conv3.forward(&y, Some(&shortcut), FusedActivation::Relu, train)
    }
}

/// A RegNet with timm's tensor names.
#[derive(Debug, Clone)]
pub struct RegNet {
    stem: ConvNorm,
    stages: Vec<Vec<Block>>,
    pub(crate) fc: Linear,
}

impl RegNet {
    pub fn new(params: &ParamBuilder<'_>, config: &RegNetConfig, num_classes: usize) -> Result<Self> {
        let stem = conv_norm(&params.pp("stem"), 3, config.stem_width, ConvSpec::same(3, 2))?;
        let resolved = config.stages().map_err(|problem| crate::error::Error::Config { source_name: "regnet".into(), problem })?;
        let mut in_chs = config.stem_width;
        let mut stages = Vec::new();
        for (index, stage) in resolved.iter().enumerate() {
            let p = params.pp(format!("s{}", index + 1));
            let mut blocks = Vec::new();
            for b in 0..stage.depth {
                blocks.push(Block::new(&p.pp(format!("b{}", b + 1)), config, in_chs, *stage, if b == 0 { 2 } else { 1 })?);
                in_chs = stage.width;
            }
            stages.push(blocks);
        }
        let fc = Linear::new(&params.pp("head.fc"), in_chs, num_classes)?;
        Ok(Self { stem, stages, fc })
    }

    /// The final feature map (B, C, H/32, W/32), timm's `forward_features`.
    pub fn feature_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.stem.forward(x, None, FusedActivation::Relu, train)?;
        for stage in &self.stages {
            for block in stage {
                y = block.forward_t(&y, train)?;
            }
        }
        Ok(y)
    }
}
