//! The Vision Transformer as timm builds it (`VisionTransformer`, `VisionTransformerDistilled`),
//! with every option the ImageNet, DINOv2 and medical foundation-model checkpoints use: a patch
//! convolution, class, distillation and register tokens, learned position embeddings (covering
//! the prefix tokens or not, resampled to the input's grid with `dynamic_img_size`), an optional
//! pre-norm, pre-norm blocks (multi-head attention with an optional qkv bias, a GELU or packed
//! SwiGLU MLP, optional LayerScale), a final norm or a norm after pooling, and the pooled
//! features or an embedding recipe.

mod config;
mod convert;
mod infer;
mod presets;
mod resample;
mod transformers;

use candle_core::{D, DType, Tensor};

pub use config::{AttnPool, Embedding, GlobalPool, MlpKind, VitConfig};
pub use convert::convert_vit_checkpoint;
pub use infer::fit_to_checkpoint;
pub use presets::{VIT_PRESETS, vit_preset, vit_preset_names, vit_unsupported};
pub use resample::{PosResample, resample_pos_embed, square_side};
pub use transformers::{TRANSFORMERS_MODEL_TYPES, vit_from_transformers_config};

use crate::error::{Error, Result};
use crate::layers::{Conv2d, ConvSpec, LayerNorm, Linear, tracked};
use crate::params::ParamBuilder;

#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
}

impl Attention {
    /// The attention's output, plus `residual` when given (added in the projection's output).
    fn forward_t(&self, x: &Tensor, residual: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let head_dim = x.dim(D::Minus1)? / self.num_heads;
        let qkv = self.qkv.forward_t(x, train)?;
        let attended = medxfer_kernels::attention(&qkv, self.num_heads, (head_dim as f64).powf(-0.5))?;
        match residual {
            Some(residual) => self.proj.forward_residual_t(&attended, residual, train),
            None => self.proj.forward_t(&attended, train),
        }
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    kind: MlpKind,
}

impl Mlp {
    /// The MLP's output, plus `residual` when given (added in fc2's output).
    fn forward_t(&self, x: &Tensor, residual: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let hidden = match self.kind {
            MlpKind::Gelu => self.fc1.forward_gelu_t(x, train)?,
            MlpKind::SwigluPacked => {
                let hidden = self.fc1.forward_t(x, train)?;
                let half = hidden.dim(D::Minus1)? / 2;
                (medxfer_kernels::silu(&hidden.narrow(D::Minus1, 0, half)?)? * hidden.narrow(D::Minus1, half, half)?)?
            }
        };
        match residual {
            Some(residual) => self.fc2.forward_residual_t(&hidden, residual, train),
            None => self.fc2.forward_t(&hidden, train),
        }
    }
}

/// LayerScale: the branch's output times a learned per-channel factor (`gamma`).
fn scaled(x: Tensor, gamma: Option<&Tensor>, train: bool) -> Result<Tensor> {
    Ok(match gamma {
        Some(gamma) => x.broadcast_mul(&if train { gamma.clone() } else { gamma.detach() })?,
        None => x,
    })
}

#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    ls1: Option<Tensor>,
    norm2: LayerNorm,
    mlp: Mlp,
    ls2: Option<Tensor>,
}

impl Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_from_norm1(x, &self.norm1.forward_t(x, train)?, train)
    }

    /// The block given its input `x` and norm1's output of it apart: a gradient taken with
    /// respect to `normed` is then norm1's output's (through the attention branch alone), as a
    /// hook on that module sees it.
    fn forward_from_norm1(&self, x: &Tensor, normed: &Tensor, train: bool) -> Result<Tensor> {
        let x = residual_branch(x, self.ls1.as_ref(), train, |residual| self.attn.forward_t(normed, residual, train))?;
        residual_branch(&x, self.ls2.as_ref(), train, |residual| self.mlp.forward_t(&self.norm2.forward_t(&x, train)?, residual, train))
    }
}

/// x + LayerScale(branch(x)). Without a LayerScale, `branch` is handed x to add into its last
/// product's output (`Linear::forward_residual_t`), which saves a pass and a buffer of the
/// tokens' size in eval; with one, the add comes after the scaling.
fn residual_branch(
    x: &Tensor,
    gamma: Option<&Tensor>,
    train: bool,
    branch: impl FnOnce(Option<&Tensor>) -> Result<Tensor>,
) -> Result<Tensor> {
    match gamma {
        None => branch(Some(x)),
        Some(_) => Ok((x + scaled(branch(None)?, gamma, train)?)?),
    }
}

/// CoCa's contrastive attentional pooler (open_clip's `AttentionalPooler`, one query, then
/// `ln_contrast`), under the checkpoint's names with `MultiheadAttention`'s packed projections
/// split (`convert_vit_checkpoint`).
#[derive(Debug, Clone)]
struct AttentionalPool {
    query: Tensor,
    ln_q: LayerNorm,
    ln_k: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    ln_contrast: LayerNorm,
    config: AttnPool,
}

impl AttentionalPool {
    fn new(params: &ParamBuilder<'_>, config: AttnPool, width: usize) -> Result<Self> {
        let pool = params.pp("attn_pool_contrast");
        let attn = pool.pp("attn");
        let (dim, eps) = (config.dim, AttnPool::LAYER_NORM_EPS);
        Ok(Self {
            query: pool.param((1, dim), "query")?,
            ln_q: LayerNorm::new(&pool.pp("ln_q"), dim, eps)?,
            ln_k: LayerNorm::new(&pool.pp("ln_k"), width, eps)?,
            q_proj: Linear::new(&attn.pp("q_proj"), dim, dim)?,
            k_proj: Linear::new(&attn.pp("k_proj"), width, dim)?,
            v_proj: Linear::new(&attn.pp("v_proj"), width, dim)?,
            out_proj: Linear::new(&attn.pp("out_proj"), dim, dim)?,
            ln_contrast: LayerNorm::new(&params.pp("ln_contrast"), dim, eps)?,
            config,
        })
    }

    /// The pooled embedding (B, dim) of the tokens (B, T, width): PyTorch's multi-head
    /// attention of the normed query over the normed tokens, then `ln_contrast`.
    fn forward_t(&self, tokens: &Tensor, train: bool) -> Result<Tensor> {
        let (batch, count, _) = tokens.dims3()?;
        let (dim, heads) = (self.config.dim, self.config.heads);
        let head_dim = dim / heads;
        let context = self.ln_k.forward_t(tokens, train)?;
        let query = self.q_proj.forward_t(&self.ln_q.forward_t(&tracked(&self.query, train), train)?, train)?;
        // PyTorch scales the projected query by head_dim^-1/2 before the product.
        let query = (query * (head_dim as f64).powf(-0.5))?.reshape((1, heads, 1, head_dim))?.broadcast_as((batch, heads, 1, head_dim))?;
        let split = |t: Tensor| -> Result<Tensor> { Ok(t.reshape((batch, count, heads, head_dim))?.transpose(1, 2)?.contiguous()?) };
        let keys = split(self.k_proj.forward_t(&context, train)?)?;
        let values = split(self.v_proj.forward_t(&context, train)?)?;
        let scores = query.contiguous()?.matmul(&keys.transpose(2, 3)?.contiguous()?)?;
        // Half precision takes the softmax in f32, as PyTorch's autocast does.
        let weights = match scores.dtype() {
            DType::F32 | DType::F64 => candle_nn::ops::softmax(&scores, D::Minus1)?,
            half => candle_nn::ops::softmax(&scores.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(half)?,
        };
        let attended = weights.matmul(&values)?.transpose(1, 2)?.reshape((batch, dim))?;
        self.ln_contrast.forward_t(&self.out_proj.forward_t(&attended, train)?, train)
    }
}

/// A ViT with timm's tensor names.
#[derive(Debug, Clone)]
pub struct Vit {
    config: VitConfig,
    patch_embed: Conv2d,
    cls_token: Option<Tensor>,
    dist_token: Option<Tensor>,
    reg_token: Option<Tensor>,
    pos_embed: Tensor,
    norm_pre: Option<LayerNorm>,
    blocks: Vec<Block>,
    norm: Option<LayerNorm>,
    fc_norm: Option<LayerNorm>,
    /// The classifier; none for a checkpoint published without one (`num_classes` 0).
    pub(crate) head: Option<Linear>,
    /// DeiT's distillation head.
    pub(crate) head_dist: Option<Linear>,
    /// CoCa's contrastive pooler (`embedding = "attentional_pool"`); boxed, as few models have one.
    attn_pool: Option<Box<AttentionalPool>>,
}

impl Vit {
    /// The model with zero-filled tensors; `num_classes` 0 builds no head.
    pub fn new(params: &ParamBuilder<'_>, config: &VitConfig, num_classes: usize) -> Result<Self> {
        let dim = config.embed_dim;
        let bad = |problem: String| Error::Config { source_name: "vit".into(), problem };
        if config.num_heads == 0 || !dim.is_multiple_of(config.num_heads) {
            return Err(bad(format!("embed_dim {dim} is not a multiple of num_heads {}", config.num_heads)));
        }
        config.check_options().map_err(bad)?;
        let eps = config.layer_norm_eps;
        let patch = config.patch_size;
        let patch_embed = Conv2d::new(
            &params.pp("patch_embed").pp("proj"),
            3,
            dim,
            ConvSpec { kernel: patch, stride: patch, padding: 0, groups: 1, bias: !config.pre_norm },
        )?;
        let token = |present: bool, count: usize, name: &str| -> Result<Option<Tensor>> {
            if present && count > 0 { Ok(Some(params.param((1, count, dim), name)?)) } else { Ok(None) }
        };
        let cls_token = token(config.class_token, 1, "cls_token")?;
        let dist_token = token(config.distilled, 1, "dist_token")?;
        let reg_token = token(true, config.reg_tokens, "reg_token")?;
        let pos_embed = params.param((1, config.pos_embed_len(config.grid()), dim), "pos_embed")?;
        let norm_pre = if config.pre_norm { Some(LayerNorm::new(&params.pp("norm_pre"), dim, eps)?) } else { None };
        let hidden = config.mlp_hidden();
        let mlp_out_in = match config.mlp {
            MlpKind::Gelu => hidden,
            MlpKind::SwigluPacked => hidden / 2,
        };
        let mut blocks = Vec::with_capacity(config.depth);
        for index in 0..config.depth {
            let p = params.pp("blocks").pp(index);
            let gamma = |name: &str| -> Result<Option<Tensor>> {
                if config.init_values.is_some() { Ok(Some(p.pp(name).param(dim, "gamma")?)) } else { Ok(None) }
            };
            blocks.push(Block {
                norm1: LayerNorm::new(&p.pp("norm1"), dim, eps)?,
                attn: Attention {
                    qkv: Linear::with_bias(&p.pp("attn").pp("qkv"), dim, 3 * dim, config.qkv_bias)?,
                    proj: Linear::new(&p.pp("attn").pp("proj"), dim, dim)?,
                    num_heads: config.num_heads,
                },
                ls1: gamma("ls1")?,
                norm2: LayerNorm::new(&p.pp("norm2"), dim, eps)?,
                mlp: Mlp {
                    fc1: Linear::new(&p.pp("mlp").pp("fc1"), dim, hidden)?,
                    fc2: Linear::new(&p.pp("mlp").pp("fc2"), mlp_out_in, dim)?,
                    kind: config.mlp,
                },
                ls2: gamma("ls2")?,
            });
        }
        let (norm, fc_norm) = if config.use_fc_norm() {
            (None, Some(LayerNorm::new(&params.pp("fc_norm"), dim, eps)?))
        } else {
            (Some(LayerNorm::new(&params.pp("norm"), dim, eps)?), None)
        };
        let attn_pool = match (config.embedding, config.attn_pool) {
            (Embedding::AttentionalPool, Some(pool)) => Some(Box::new(AttentionalPool::new(params, pool, dim)?)),
            _ => None,
        };
        let features = config.num_features();
        let head = if num_classes > 0 { Some(Linear::new(&params.pp("head"), features, num_classes)?) } else { None };
        let head_dist =
            if config.distilled && num_classes > 0 { Some(Linear::new(&params.pp("head_dist"), features, num_classes)?) } else { None };
        Ok(Self {
            config: config.clone(),
            patch_embed,
            cls_token,
            dist_token,
            reg_token,
            pos_embed,
            norm_pre,
            blocks,
            norm,
            fc_norm,
            head,
            head_dist,
            attn_pool,
        })
    }

    /// The tokens after the blocks and the final norm (B, prefix + patches, dim), timm's
    /// `forward_features`.
    pub fn feature_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.tokens_through(x, self.blocks.len(), train)?;
        self.final_norm(&y, train)
    }

    /// Grad-CAM's target layer, as pytorch-grad-cam's recipe for ViTs (`blocks[-1].norm1`): the
    /// tokens entering the last block, and that block's norm1 of them.
    pub fn last_block_norm1(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let input = self.tokens_through(x, self.blocks.len().saturating_sub(1), train)?;
        let normed = self.last_block()?.norm1.forward_t(&input, train)?;
        Ok((input, normed))
    }

    /// `feature_map`'s tokens from what `last_block_norm1` gives.
    pub fn feature_map_from_norm1(&self, input: &Tensor, normed: &Tensor, train: bool) -> Result<Tensor> {
        self.final_norm(&self.last_block()?.forward_from_norm1(input, normed, train)?, train)
    }

    fn last_block(&self) -> Result<&Block> {
        self.blocks
            .last()
            .ok_or_else(|| Error::Config { source_name: "vit".into(), problem: "a ViT without blocks has no last block".into() })
    }

    fn final_norm(&self, y: &Tensor, train: bool) -> Result<Tensor> {
        match &self.norm {
            Some(norm) => norm.forward_t(y, train),
            None => Ok(y.clone()),
        }
    }

    /// The tokens after the patch embedding and the first `blocks` blocks.
    fn tokens_through(&self, x: &Tensor, blocks: usize, train: bool) -> Result<Tensor> {
        let (_, _, height, width) = x.dims4()?;
        let patches = self.patch_embed.forward_t(x, train)?;
        let (batch, dim, grid_h, grid_w) = patches.dims4()?;
        let grid = self.config.grid();
        let track = |t: &Tensor| if train { t.clone() } else { t.detach() };
        let mut pos_embed = track(&self.pos_embed);
        if (grid_h, grid_w) != (grid, grid) {
            if !self.config.dynamic_img_size {
                return Err(Error::Config {
                    source_name: "vit".into(),
                    problem: format!(
                        "a {height} x {width} input gives a {grid_h} x {grid_w} patch grid; this model's position embeddings are for \
                         {grid} x {grid} (set dynamic_img_size, or img_size {})",
                        height.max(width)
                    ),
                });
            }
            let prefix = if self.config.no_embed_class { 0 } else { self.config.prefix_tokens() };
            pos_embed = resample_pos_embed(&pos_embed, self.config.pos_resample, prefix, (grid, grid), (grid_h, grid_w))?;
        }
        let patches = patches.flatten_from(2)?.transpose(1, 2)?;
        let prefix: Vec<Tensor> = [&self.cls_token, &self.dist_token, &self.reg_token]
            .into_iter()
            .flatten()
            .map(|token| track(token).broadcast_as((batch, token.dim(1)?, dim)).map_err(Error::from))
            .collect::<Result<_>>()?;
        let with_prefix = |patches: Tensor| -> Result<Tensor> {
            if prefix.is_empty() {
                return Ok(patches);
            }
            let mut parts: Vec<&Tensor> = prefix.iter().collect();
            parts.push(&patches);
            Ok(Tensor::cat(&parts, 1)?)
        };
        let mut y = if self.config.no_embed_class {
            with_prefix(patches.broadcast_add(&pos_embed)?)?
        } else {
            with_prefix(patches)?.broadcast_add(&pos_embed)?
        };
        if let Some(norm_pre) = &self.norm_pre {
            y = norm_pre.forward_t(&y, train)?;
        }
        for block in &self.blocks[..blocks] {
            y = block.forward_t(&y, train)?;
        }
        Ok(y)
    }

    fn patch_mean(&self, tokens: &Tensor) -> Result<Tensor> {
        let prefix = self.config.prefix_tokens();
        let count = tokens.dim(1)? - prefix;
        Ok(tokens.narrow(1, prefix, count)?.mean(1)?)
    }

    /// The features (B, num_features) from the tokens.
    pub fn pool(&self, tokens: &Tensor, train: bool) -> Result<Tensor> {
        let class = || -> Result<Tensor> { Ok(tokens.narrow(1, 0, 1)?.squeeze(1)?) };
        let features = match self.config.embedding {
            Embedding::Pool => {
                let pooled = if self.config.distilled {
                    ((class()? + tokens.narrow(1, 1, 1)?.squeeze(1)?)? / 2.0)?
                } else {
                    match self.config.global_pool {
                        GlobalPool::Token => class()?,
                        GlobalPool::Avg => self.patch_mean(tokens)?,
                        GlobalPool::None => unreachable!("refused by VitConfig::check_options"),
                    }
                };
                match &self.fc_norm {
                    Some(norm) => norm.forward_t(&pooled, train)?,
                    None => pooled,
                }
            }
            Embedding::ClassToken => class()?,
            Embedding::PatchMean => self.patch_mean(tokens)?,
            Embedding::ClassTokenAndPatchMean => Tensor::cat(&[&class()?, &self.patch_mean(tokens)?], 1)?,
            Embedding::AttentionalPool => match &self.attn_pool {
                Some(pool) => pool.forward_t(tokens, train)?,
                None => unreachable!("refused by VitConfig::check_options"),
            },
        };
        // Contiguous: cuBLAS takes no row stride other than the row length.
        Ok(features.contiguous()?)
    }

    /// Features and logits from the tokens; a model without a head gives (B, 0) logits. A
    /// distilled model's logits are the mean of its two heads on their own tokens (timm's eval
    /// output).
    pub fn head(&self, tokens: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let features = self.pool(tokens, train)?;
        let logits = match (&self.head, &self.head_dist) {
            (Some(head), Some(head_dist)) if self.config.embedding == Embedding::Pool => {
                let token = |i: usize| -> Result<Tensor> { Ok(tokens.narrow(1, i, 1)?.squeeze(1)?.contiguous()?) };
                ((head.forward_t(&token(0)?, train)? + head_dist.forward_t(&token(1)?, train)?)? / 2.0)?
            }
            (Some(head), _) => head.forward_t(&features, train)?,
            (None, _) => Tensor::zeros((features.dim(0)?, 0), features.dtype(), features.device())?,
        };
        Ok((features, logits))
    }

    /// Fresh heads for `num_classes` (timm's `reset_classifier`: both of a distilled model's).
    pub fn replace_head(&mut self, params: &ParamBuilder<'_>, num_classes: usize, seed: u64) -> Result<()> {
        let width = self.config.num_features();
        self.head = Some(Linear::fresh(&params.pp("head"), width, num_classes, seed)?);
        if self.config.distilled {
            self.head_dist = Some(Linear::fresh(&params.pp("head_dist"), width, num_classes, seed.wrapping_add(1))?);
        }
        Ok(())
    }

    /// Classes of the head (0 without one).
    pub fn num_classes(&self) -> Result<usize> {
        Ok(match &self.head {
            Some(head) => head.shape()?.0,
            None => 0,
        })
    }
}
