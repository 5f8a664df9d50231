//! The Vision Transformer as timm builds it (`VisionTransformer`): a patch convolution with bias,
//! a class token, learned position embeddings (class position included), pre-norm blocks
//! (LayerNorm eps 1e-6, multi-head attention with a qkv bias, MLP with exact erf GELU), a final
//! norm, and the class token as the pooled feature.

use candle_core::{D, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layers::{Conv2d, ConvSpec, LayerNorm, Linear, softmax_last_dim};
use crate::params::ParamBuilder;

const LAYER_NORM_EPS: f64 = 1e-6;

/// A ViT's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// Input side the position embeddings are laid out for.
    pub img_size: usize,
    /// Side of a square patch.
    pub patch_size: usize,
    /// Token width.
    pub embed_dim: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// MLP hidden width over the token width.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

fn default_mlp_ratio() -> f64 {
    4.0
}

impl VitConfig {
    /// ViT-S/16 at 224 px: width 384, 12 blocks, 6 heads.
    pub fn vit_small_patch16_224() -> Self {
        Self { img_size: 224, patch_size: 16, embed_dim: 384, depth: 12, num_heads: 6, mlp_ratio: 4.0 }
    }

    fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }
}

#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
}

impl Attention {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (batch, tokens, dim) = x.dims3()?;
        let head_dim = dim / self.num_heads;
        let qkv = self.qkv.forward_t(x, train)?.reshape((batch, tokens, 3, self.num_heads, head_dim))?.permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scores = (q.matmul(&k.transpose(D::Minus2, D::Minus1)?.contiguous()?)? * (head_dim as f64).powf(-0.5))?;
        let attended = softmax_last_dim(&scores)?.matmul(&v)?;
        self.proj.forward_t(&attended.transpose(1, 2)?.reshape((batch, tokens, dim))?, train)
    }
}

#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = (x + self.attn.forward_t(&self.norm1.forward_t(x, train)?, train)?)?;
        let hidden = self.fc1.forward_t(&self.norm2.forward_t(&x, train)?, train)?.gelu_erf()?;
        Ok((&x + self.fc2.forward_t(&hidden, train)?)?)
    }
}

/// A ViT with timm's tensor names.
#[derive(Debug, Clone)]
pub struct Vit {
    patch_embed: Conv2d,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    pub(crate) head: Linear,
    grid: usize,
}

impl Vit {
    pub fn new(params: &ParamBuilder<'_>, config: &VitConfig, num_classes: usize) -> Result<Self> {
        let dim = config.embed_dim;
        if config.num_heads == 0 || !dim.is_multiple_of(config.num_heads) {
            return Err(Error::Config {
                source_name: "vit".into(),
                problem: format!("embed_dim {dim} is not a multiple of num_heads {}", config.num_heads),
            });
        }
        let patch = config.patch_size;
        let patch_embed = Conv2d::new(
            &params.pp("patch_embed").pp("proj"),
            3,
            dim,
            ConvSpec { kernel: patch, stride: patch, padding: 0, groups: 1, bias: true },
        )?;
        let cls_token = params.param((1, 1, dim), "cls_token")?;
        let grid = config.grid();
        let pos_embed = params.param((1, grid * grid + 1, dim), "pos_embed")?;
        let hidden = (dim as f64 * config.mlp_ratio) as usize;
        let mut blocks = Vec::new();
        for index in 0..config.depth {
            let p = params.pp("blocks").pp(index);
            blocks.push(Block {
                norm1: LayerNorm::new(&p.pp("norm1"), dim, LAYER_NORM_EPS)?,
                attn: Attention {
                    qkv: Linear::new(&p.pp("attn").pp("qkv"), dim, 3 * dim)?,
                    proj: Linear::new(&p.pp("attn").pp("proj"), dim, dim)?,
                    num_heads: config.num_heads,
                },
                norm2: LayerNorm::new(&p.pp("norm2"), dim, LAYER_NORM_EPS)?,
                fc1: Linear::new(&p.pp("mlp").pp("fc1"), dim, hidden)?,
                fc2: Linear::new(&p.pp("mlp").pp("fc2"), hidden, dim)?,
            });
        }
        let norm = LayerNorm::new(&params.pp("norm"), dim, LAYER_NORM_EPS)?;
        let head = Linear::new(&params.pp("head"), dim, num_classes)?;
        Ok(Self { patch_embed, cls_token, pos_embed, blocks, norm, head, grid })
    }

    /// The normed tokens (B, 1 + patches, dim), timm's `forward_features`.
    pub fn feature_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, height, width) = x.dims4()?;
        let patches = self.patch_embed.forward_t(x, train)?;
        let (batch, dim, grid_h, grid_w) = patches.dims4()?;
        if grid_h != self.grid || grid_w != self.grid {
            return Err(Error::Config {
                source_name: "vit".into(),
                problem: format!(
                    "a {height} x {width} input gives a {grid_h} x {grid_w} patch grid; this model's position embeddings are for {0} x {0}",
                    self.grid
                ),
            });
        }
        let tokens = patches.flatten_from(2)?.transpose(1, 2)?;
        let (cls_token, pos_embed) =
            if train { (self.cls_token.clone(), self.pos_embed.clone()) } else { (self.cls_token.detach(), self.pos_embed.detach()) };
        let cls = cls_token.broadcast_as((batch, 1, dim))?;
        let mut y = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&pos_embed)?;
        for block in &self.blocks {
            y = block.forward_t(&y, train)?;
        }
        self.norm.forward_t(&y, train)
    }

    /// The class token after the final norm (B, dim).
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // Contiguous: cuBLAS takes no row stride other than the row length.
        Ok(self.feature_map(x, train)?.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?)
    }
}

/// PyTorch's antialiased bicubic kernel (a = -0.5, as PIL), which timm's resampling uses.
fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// For each output index, the first input index and the normalised weights of
/// `F.interpolate(mode="bicubic", antialias=True, align_corners=False)` along one axis.
fn resample_weights(input: usize, output: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    let stretch = scale.max(1.0);
    let support = 2.0 * stretch;
    (0..output)
        .map(|i| {
            let centre = scale * (i as f64 + 0.5);
            let first = ((centre - support + 0.5).floor().max(0.0)) as usize;
            let end = ((centre + support + 0.5).floor() as usize).min(input);
            let weights: Vec<f64> = (first..end).map(|j| bicubic((j as f64 - centre + 0.5) / stretch)).collect();
            let total: f64 = weights.iter().sum();
            (first, weights.into_iter().map(|w| w / total).collect())
        })
        .collect()
}

/// timm's `resample_abs_pos_embed`: the class position kept, the grid positions resampled from
/// `old_grid` x `old_grid` to `new_grid` x `new_grid` (bicubic, antialiased), so a checkpoint
/// runs at another image size.
pub fn resample_pos_embed(pos_embed: &Tensor, old_grid: usize, new_grid: usize) -> Result<Tensor> {
    let (_, tokens, dim) = pos_embed.dims3()?;
    if tokens != old_grid * old_grid + 1 {
        return Err(Error::Config { source_name: "pos_embed".into(), problem: format!("{tokens} positions are not 1 + {old_grid}^2") });
    }
    let values: Vec<Vec<f32>> = pos_embed.squeeze(0)?.to_dtype(candle_core::DType::F32)?.to_vec2()?;
    let weights = resample_weights(old_grid, new_grid);
    // Rows first, then columns: the filter is separable.
    let mut rows = vec![vec![0.0f64; dim]; new_grid * old_grid];
    for (out_row, (first, w)) in weights.iter().enumerate() {
        for col in 0..old_grid {
            for (k, weight) in w.iter().enumerate() {
                let source = &values[1 + (first + k) * old_grid + col];
                for (d, value) in rows[out_row * old_grid + col].iter_mut().enumerate() {
                    *value += weight * f64::from(source[d]);
                }
            }
        }
    }
    let mut out = vec![values[0].clone()];
    for out_row in 0..new_grid {
        for (first, w) in &weights {
            let mut position = vec![0.0f64; dim];
            for (k, weight) in w.iter().enumerate() {
                for (d, value) in position.iter_mut().enumerate() {
                    *value += weight * rows[out_row * old_grid + first + k][d];
                }
            }
            out.push(position.into_iter().map(|v| v as f32).collect());
        }
    }
    let flat: Vec<f32> = out.into_iter().flatten().collect();
    Ok(Tensor::from_vec(flat, (1, new_grid * new_grid + 1, dim), pos_embed.device())?)
}
