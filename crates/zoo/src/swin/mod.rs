//! Swin Transformer v1 as timm builds it (`swin_transformer.py`): a 4x4 patch convolution with
//! LayerNorm (`patch_embed.proj/.norm`), four stages of pre-norm blocks on (B, H, W, C) tokens
//! (`layers.S.blocks.B.*`) whose attention runs inside windows, every second block on windows
//! shifted by half a window (a cyclic roll, with a mask of -100 between tokens that came from
//! different regions), each window's scores biased by a learned table indexed by relative
//! position; patch merging (2x2 neighbours concatenated, LayerNorm, a linear reduction:
//! `layers.S.downsample.*`) at the start of stages 1-3; a final LayerNorm (`norm`), average
//! pooling and `head.fc`. As timm with `strict_img_size`, a model takes images of its
//! `img_size` only: the window sizes, shifts and masks follow from it (a stage whose grid is no
//! larger than the window takes the whole grid as its window and does not shift).

mod presets;

use candle_core::{D, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layers::{Conv2d, ConvSpec, LayerNorm, Linear, tracked};
use crate::params::ParamBuilder;
pub use presets::{SWIN_PRESETS, swin_preset, swin_unsupported};

/// LayerNorm's epsilon in timm's Swin (PyTorch's default).
const NORM_EPS: f64 = 1e-5;

/// The value timm's shift mask puts between tokens of different regions.
const MASKED: f32 = -100.0;

/// A Swin Transformer's shape, as timm's `SwinTransformer` keywords.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwinConfig {
    /// The side of the images the model takes (timm's `img_size`).
    pub img_size: usize,
    /// Side of the patch convolution (4).
    pub patch_size: usize,
    /// Side of the attention windows (7, or 12 for the 384-px models).
    pub window_size: usize,
    /// Width of the first stage; each later stage doubles it.
    pub embed_dim: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    /// MLP hidden width over the block width.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

fn default_mlp_ratio() -> f64 {
    4.0
}

impl SwinConfig {
    /// Width of the pooled features: the last stage's width.
    pub fn num_features(&self) -> usize {
        self.embed_dim << self.depths.len().saturating_sub(1)
    }

    fn grid(&self) -> usize {
        self.img_size / self.patch_size.max(1)
    }

    /// The options the builder refuses.
    pub(crate) fn check_options(&self) -> std::result::Result<(), String> {
        if self.depths.is_empty() || self.depths.len() != self.num_heads.len() {
            return Err(format!("depths ({}) and num_heads ({}) must name the same stages", self.depths.len(), self.num_heads.len()));
        }
        if self.patch_size == 0 || self.window_size == 0 || !self.img_size.is_multiple_of(self.patch_size) || self.img_size > 1 << 14 {
            return Err(format!(
                "img_size {} must be a multiple of patch_size {} (and window_size at least 1)",
                self.img_size, self.patch_size
            ));
        }
        if self.depths.len() > 8 || self.embed_dim == 0 || self.embed_dim > 1 << 12 {
            return Err(format!("{} stages of width {}: expected 1 to 8 stages, a width of 1 to 4096", self.depths.len(), self.embed_dim));
        }
        for (stage, &heads) in self.num_heads.iter().enumerate() {
            let dim = self.embed_dim << stage;
            if heads == 0 || !dim.is_multiple_of(heads) {
                return Err(format!("stage {stage}'s width {dim} is not a multiple of its {heads} heads"));
            }
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0 && self.mlp_ratio <= 64.0) {
            return Err(format!("mlp_ratio is {}; expected more than 0, at most 64", self.mlp_ratio));
        }
        Ok(())
    }
}

/// One stage's windows, as timm's `_calc_window_shift` sets them for the stage's grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Windows {
    /// The grid's side (tokens).
    grid: usize,
    /// The window's side: the configured one, or the whole grid where that is no larger.
    size: usize,
    /// The shift of the shifted blocks: half a window, none where the window is the grid.
    shift: usize,
}

impl Windows {
    fn new(grid: usize, window_size: usize) -> Self {
        let size = grid.min(window_size);
        Self { grid, size, shift: if grid <= size { 0 } else { window_size / 2 } }
    }

    /// The grid padded up to whole windows.
    fn padded(&self) -> usize {
        self.grid.div_ceil(self.size) * self.size
    }
}

/// timm's `get_relative_position_index`: for tokens a, b of a window (row-major), the row of
/// the bias table for their offset, (ha - hb + w - 1)(2w - 1) + (wa - wb + w - 1).
fn relative_position_index(window: usize) -> Vec<u32> {
    let tokens = window * window;
    let mut index = Vec::with_capacity(tokens * tokens);
    for a in 0..tokens {
        for b in 0..tokens {
            let (ha, wa, hb, wb) = (a / window, a % window, b / window, b % window);
            index.push(((ha + window - 1 - hb) * (2 * window - 1) + (wa + window - 1 - wb)) as u32);
        }
    }
    index
}

/// timm's `get_attn_mask` for a shifted block: the padded grid cut into nine regions at
/// (-window, -shift) on each axis, each window's tokens compared by region: 0 within one,
/// -100 across. (windows, tokens, tokens), windows row-major.
fn shift_mask(windows: Windows) -> Vec<f32> {
    let (padded, size, shift) = (windows.padded(), windows.size, windows.shift);
    let region = |i: usize| usize::from(i >= padded - size) + usize::from(i >= padded - shift);
    let per_side = padded / size;
    let tokens = size * size;
    let mut mask = Vec::with_capacity(per_side * per_side * tokens * tokens);
    for wy in 0..per_side {
        for wx in 0..per_side {
            let label = |t: usize| 3 * region(wy * size + t / size) + region(wx * size + t % size);
            for a in 0..tokens {
                for b in 0..tokens {
                    mask.push(if label(a) == label(b) { 0.0 } else { MASKED });
                }
            }
        }
    }
    mask
}

#[derive(Debug, Clone)]
struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    relative_position_bias_table: Tensor,
    /// Rows of the table for each (query, key) pair of a window, flattened.
    relative_position_index: Tensor,
    /// The shift mask (windows, 1, tokens, tokens) of a shifted block.
    mask: Option<Tensor>,
    num_heads: usize,
}

impl WindowAttention {
    /// The scores' bias (windows or 1, heads, tokens, tokens): the table's rows by relative
    /// position, plus the shift mask.
    fn bias(&self, tokens: usize, train: bool) -> Result<Tensor> {
        let table = tracked(&self.relative_position_bias_table, train);
        let bias = table.index_select(&self.relative_position_index, 0)?.reshape((tokens, tokens, self.num_heads))?.permute((2, 0, 1))?;
        let bias = bias.unsqueeze(0)?;
        Ok(match &self.mask {
            Some(mask) => bias.broadcast_add(mask)?,
            None => bias.contiguous()?,
        })
    }

    /// Attention within each window: `x` (B x windows, tokens, C).
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, tokens, dim) = x.dims3()?;
        let qkv = self.qkv.forward_t(x, train)?;
        let scale = ((dim / self.num_heads) as f64).powf(-0.5);
        let attended = medxfer_kernels::attention_with_bias(&qkv, self.num_heads, scale, &self.bias(tokens, train)?)?;
        self.proj.forward_t(&attended, train)
    }
}

#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attn: WindowAttention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    windows: Windows,
    shift: usize,
}

impl Block {
    fn new(p: &ParamBuilder<'_>, dim: usize, heads: usize, windows: Windows, shifted: bool, config: &SwinConfig) -> Result<Self> {
        let shift = if shifted { windows.shift } else { 0 };
        let size = windows.size;
        let tokens = size * size;
        let device = p.store().device();
        let index = Tensor::from_vec(relative_position_index(size), tokens * tokens, device)?;
        let mask = if shift > 0 {
            let per_side = windows.padded() / size;
            let mask = Tensor::from_vec(shift_mask(windows), (per_side * per_side, 1, tokens, tokens), &Device::Cpu)?;
            Some(mask.to_dtype(p.store().dtype())?.to_device(device)?)
        } else {
            None
        };
        let attn = p.pp("attn");
        let hidden = (dim as f64 * config.mlp_ratio) as usize;
        Ok(Self {
            norm1: LayerNorm::new(&p.pp("norm1"), dim, NORM_EPS)?,
            attn: WindowAttention {
                qkv: Linear::new(&attn.pp("qkv"), dim, 3 * dim)?,
                proj: Linear::new(&attn.pp("proj"), dim, dim)?,
                relative_position_bias_table: attn.param(((2 * size - 1) * (2 * size - 1), heads), "relative_position_bias_table")?,
                relative_position_index: index,
                mask,
                num_heads: heads,
            },
            norm2: LayerNorm::new(&p.pp("norm2"), dim, NORM_EPS)?,
            fc1: Linear::new(&p.pp("mlp").pp("fc1"), dim, hidden)?,
            fc2: Linear::new(&p.pp("mlp").pp("fc2"), hidden, dim)?,
            windows,
            shift,
        })
    }

    /// (B, H, W, C) -> (B, H, W, C).
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (batch, height, width, dim) = x.dims4()?;
        let (size, padded) = (self.windows.size, self.windows.padded());
        let mut y = self.norm1.forward_t(x, train)?;
        if self.shift > 0 {
            let back = -(self.shift as i32);
            y = y.roll(back, 1)?.roll(back, 2)?;
        }
        // Pad to whole windows after the roll, as timm (zeros, after the norm).
        y = y.pad_with_zeros(1, 0, padded - height)?.pad_with_zeros(2, 0, padded - width)?;
        let per_side = padded / size;
        let windows = y.reshape((batch, per_side, size, per_side, size, dim))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?.reshape((
            batch * per_side * per_side,
            size * size,
            dim,
        ))?;
        let attended = self.attn.forward_t(&windows, train)?;
        let mut y = attended
            .reshape((batch, per_side, per_side, size, size, dim))?
            .permute((0, 1, 3, 2, 4, 5))?
            .contiguous()?
            .reshape((batch, padded, padded, dim))?;
        if padded != height || padded != width {
            y = y.narrow(1, 0, height)?.narrow(2, 0, width)?;
        }
        if self.shift > 0 {
            y = y.roll(self.shift as i32, 1)?.roll(self.shift as i32, 2)?;
        }
        let x = (x + y)?;
        let hidden = self.fc1.forward_gelu_t(&self.norm2.forward_t(&x, train)?, train)?;
        Ok((&x + self.fc2.forward_t(&hidden, train)?)?)
    }
}

/// timm's `PatchMerging`: each 2x2 neighbourhood's tokens concatenated in the order (0,0),
/// (1,0), (0,1), (1,1) (row, column), LayerNorm, a linear map to the next width.
#[derive(Debug, Clone)]
struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
}

impl PatchMerging {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (batch, height, width, dim) = x.dims4()?;
        // An odd side is padded with zeros at its end, as timm.
        let x = x.pad_with_zeros(1, 0, height % 2)?.pad_with_zeros(2, 0, width % 2)?;
        let (height, width) = (height.div_ceil(2), width.div_ceil(2));
        let merged = x.reshape((batch, height, 2, width, 2, dim))?.permute((0, 1, 3, 4, 2, 5))?.contiguous()?.reshape((
            batch,
            height,
            width,
            4 * dim,
        ))?;
        self.reduction.forward_t(&self.norm.forward_t(&merged, train)?, train)
    }
}

#[derive(Debug, Clone)]
struct Stage {
    downsample: Option<PatchMerging>,
    blocks: Vec<Block>,
}

/// A Swin Transformer with timm's tensor names.
#[derive(Debug, Clone)]
pub struct Swin {
    img_size: usize,
    patch_embed: Conv2d,
    patch_norm: LayerNorm,
    stages: Vec<Stage>,
    norm: LayerNorm,
    pub(crate) fc: Linear,
}

impl Swin {
    pub fn new(params: &ParamBuilder<'_>, config: &SwinConfig, num_classes: usize) -> Result<Self> {
        config.check_options().map_err(|problem| Error::Config { source_name: "swin".into(), problem })?;
        let embed = params.pp("patch_embed");
        let patch = ConvSpec { kernel: config.patch_size, stride: config.patch_size, padding: 0, groups: 1, bias: true };
        let patch_embed = Conv2d::new(&embed.pp("proj"), 3, config.embed_dim, patch)?;
        let patch_norm = LayerNorm::new(&embed.pp("norm"), config.embed_dim, NORM_EPS)?;
        let mut stages = Vec::new();
        for (index, (&depth, &heads)) in config.depths.iter().zip(&config.num_heads).enumerate() {
            let p = params.pp("layers").pp(index);
            let dim = config.embed_dim << index;
            let downsample = if index > 0 {
                let d = p.pp("downsample");
                Some(PatchMerging {
                    norm: LayerNorm::new(&d.pp("norm"), 2 * dim, NORM_EPS)?,
                    reduction: Linear::with_bias(&d.pp("reduction"), 2 * dim, dim, false)?,
                })
            } else {
                None
            };
            // timm's stage resolution: ceil(grid / 2^stage).
            let windows = Windows::new(config.grid().div_ceil(1 << index), config.window_size);
            let blocks =
                (0..depth).map(|b| Block::new(&p.pp("blocks").pp(b), dim, heads, windows, b % 2 == 1, config)).collect::<Result<_>>()?;
            stages.push(Stage { downsample, blocks });
        }
        let features = config.num_features();
        Ok(Self {
            img_size: config.img_size,
            patch_embed,
            patch_norm,
            stages,
            norm: LayerNorm::new(&params.pp("norm"), features, NORM_EPS)?,
            fc: Linear::new(&params.pp("head").pp("fc"), features, num_classes)?,
        })
    }

    /// The tokens after the final norm, (B, H, W, C) as timm's `forward_features` gives them.
    pub fn feature_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, height, width) = x.dims4()?;
        if height != self.img_size || width != self.img_size {
            return Err(Error::Config {
                source_name: "swin".into(),
                problem: format!(
                    "input is {height}x{width}; this Swin takes {0}x{0} images only (its windows and masks follow from img_size, as timm's)",
                    self.img_size
                ),
            });
        }
        let patches = self.patch_embed.forward_t(x, train)?.permute((0, 2, 3, 1))?;
        let mut y = self.patch_norm.forward_t(&patches, train)?;
        for stage in &self.stages {
            if let Some(merge) = &stage.downsample {
                y = merge.forward_t(&y, train)?;
            }
            for block in &stage.blocks {
                y = block.forward_t(&y, train)?;
            }
        }
        self.norm.forward_t(&y, train)
    }

    /// Pooled features (B, num_features) from the tokens: their mean over the grid.
    pub fn pool(&self, tokens: &Tensor) -> Result<Tensor> {
        let (batch, height, width, dim) = tokens.dims4()?;
        Ok(tokens.reshape((batch, height * width, dim))?.mean(D::Minus2)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_positions_index_timms_table() {
        // timm's get_relative_position_index(2, 2): [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]].
        assert_eq!(relative_position_index(2), [4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4]);
    }

    #[test]
    fn windows_follow_timms_rule() {
        assert_eq!(Windows::new(56, 7), Windows { grid: 56, size: 7, shift: 3 });
        assert_eq!(Windows::new(7, 7), Windows { grid: 7, size: 7, shift: 0 });
        assert_eq!(Windows::new(4, 7), Windows { grid: 4, size: 4, shift: 0 });
        assert_eq!(Windows::new(16, 7).padded(), 21);
    }

    #[test]
    fn the_shift_mask_separates_rolled_regions() {
        // A 4x4 grid in 2x2 windows shifted by 1: the first window is one region; the last
        // (bottom right) holds four tokens of four regions.
        let mask = shift_mask(Windows { grid: 4, size: 2, shift: 1 });
        assert_eq!(mask.len(), 4 * 4 * 4);
        assert!(mask[..16].iter().all(|&m| m == 0.0));
        let last = &mask[48..];
        for a in 0..4 {
            for b in 0..4 {
                assert_eq!(last[a * 4 + b], if a == b { 0.0 } else { MASKED }, "({a}, {b})");
            }
        }
    }
}
