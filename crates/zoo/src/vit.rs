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
    pub img_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

fn default_mlp_ratio() -> f64 {
    4.0
}

impl VitConfig {
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
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, tokens, dim) = x.dims3()?;
        let head_dim = dim / self.num_heads;
        let qkv = self.qkv.forward(x)?.reshape((batch, tokens, 3, self.num_heads, head_dim))?.permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scores = (q.matmul(&k.transpose(D::Minus2, D::Minus1)?.contiguous()?)? * (head_dim as f64).powf(-0.5))?;
        let attended = softmax_last_dim(&scores)?.matmul(&v)?;
        self.proj.forward(&attended.transpose(1, 2)?.reshape((batch, tokens, dim))?)
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
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?)?)?;
        let hidden = self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?;
        Ok((&x + self.fc2.forward(&hidden)?)?)
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
    pub fn feature_map(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let (_, _, height, width) = x.dims4()?;
        let patches = self.patch_embed.forward(x)?;
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
        let cls = self.cls_token.broadcast_as((batch, 1, dim))?;
        let mut y = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            y = block.forward(&y)?;
        }
        self.norm.forward(&y)
    }

    /// The class token after the final norm (B, dim).
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.feature_map(x, train)?.narrow(1, 0, 1)?.squeeze(1)?)
    }
}
