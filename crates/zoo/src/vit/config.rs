//! A ViT's shape and options, with timm's `VisionTransformer` keyword names and defaults (every
//! option defaults to timm's, so a registry TOML states only what differs).

use serde::{Deserialize, Serialize};

use super::resample::PosResample;

/// How timm pools the tokens into the classifier's input (`global_pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlobalPool {
    /// The class token (`"token"`).
    #[default]
    Token,
    /// The mean of the patch tokens, prefix tokens left out (`"avg"`).
    Avg,
    /// No pooling: timm's head gives every token (`""`); the entry's embedding recipe says
    /// what the features are.
    #[serde(alias = "")]
    None,
}

/// The MLP of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// `fc1`, exact (erf) GELU, `fc2`: timm's `Mlp`.
    #[default]
    Gelu,
    /// timm's `SwiGLUPacked` with SiLU (`GluMlp`, gate first): `fc1` gives both halves,
    /// `silu(first) * second` goes to `fc2`, which is half `fc1`'s width.
    SwigluPacked,
}

/// What a backbone's features are: timm's pooled classifier input, or the recipe a model's
/// authors define its embedding by (Virchow's class token concatenated with the mean of the
/// patch tokens, registers left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Embedding {
    /// timm's `forward_head(pre_logits=True)`: per `global_pool`, then `fc_norm`.
    #[default]
    Pool,
    /// The class token after the final norm.
    ClassToken,
    /// The mean of the patch tokens after the final norm (class, distillation and register
    /// tokens left out).
    PatchMean,
    /// The class token and the mean of the patch tokens, concatenated (twice the width).
    ClassTokenAndPatchMean,
    /// CoCa's contrastive attentional pooler (CONCH's `encode_image(proj_contrast=False)`): one
    /// learned query attends over every token after the final norm, then `ln_contrast`; the
    /// width is the pooler's ([`AttnPool`]).
    AttentionalPool,
}

/// CoCa's attentional pooler (open_clip's `AttentionalPooler` with one query): a LayerNorm on
/// the query and on the tokens, PyTorch's `MultiheadAttention` from the tokens' width to `dim`,
/// and a LayerNorm after it. Its LayerNorms use PyTorch's default epsilon (1e-5), not the
/// trunk's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttnPool {
    /// The pooled width (`d_model`; CONCH's `embed_dim` 512).
    pub dim: usize,
    /// Attention heads (`attn_pooler_heads`; in no tensor).
    pub heads: usize,
}

impl AttnPool {
    /// PyTorch's `nn.LayerNorm` default, which open_clip's pooler and `ln_contrast` keep.
    pub const LAYER_NORM_EPS: f64 = 1e-5;

    /// Trainable scalars over tokens `width` wide: the query, the two LayerNorms in the pooler,
    /// the q, k, v and output projections with their biases, and the LayerNorm after it.
    pub fn parameter_count(&self, width: usize) -> usize {
        let d = self.dim;
        d + 2 * d + 2 * width + (d * d + d) + 2 * (d * width + d) + (d * d + d) + 2 * d
    }
}

/// A ViT's shape and options (timm's keyword names).
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
    /// Attention heads per block (not in any checkpoint: the config or the registry says).
    pub num_heads: usize,
    /// MLP hidden width over the token width (`int(embed_dim * mlp_ratio)`, as timm).
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// The MLP's kind.
    #[serde(default)]
    pub mlp: MlpKind,
    /// A bias in the attention's qkv projection.
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    /// LayerScale's initial value: `Some` means every block has `ls1.gamma` and `ls2.gamma`
    /// (their values come from the checkpoint).
    #[serde(default)]
    pub init_values: Option<f64>,
    /// A class token (`cls_token`).
    #[serde(default = "yes")]
    pub class_token: bool,
    /// Register tokens (`reg_token`), after the class token.
    #[serde(default)]
    pub reg_tokens: usize,
    /// Position embeddings for the patches only (true), or for the class and register tokens too.
    #[serde(default)]
    pub no_embed_class: bool,
    /// A LayerNorm before the blocks (`norm_pre`; CLIP-style trunks), and no patch bias.
    #[serde(default)]
    pub pre_norm: bool,
    /// How the head pools the tokens.
    #[serde(default)]
    pub global_pool: GlobalPool,
    /// A norm after pooling (`fc_norm`) in place of the final one; timm's default (`None`):
    /// with `avg` pooling.
    #[serde(default)]
    pub fc_norm: Option<bool>,
    /// Position embeddings resampled to any input's patch grid (timm's `dynamic_img_size`).
    #[serde(default)]
    pub dynamic_img_size: bool,
    /// DeiT's distillation token (`dist_token`) and second head (`head_dist`): the features
    /// are the mean of the two tokens, the logits the mean of the two heads.
    #[serde(default)]
    pub distilled: bool,
    /// LayerNorm epsilon (timm's ViTs 1e-6; transformers' ViTModel 1e-12).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// What the features are.
    #[serde(default)]
    pub embedding: Embedding,
    /// How the position embeddings are resampled to another grid (timm's antialiased bicubic,
    /// or transformers' plain bicubic for its ViTModel and Dinov2Model checkpoints).
    #[serde(default)]
    pub pos_resample: PosResample,
    /// The attentional pooler of `embedding = "attentional_pool"`.
    #[serde(default)]
    pub attn_pool: Option<AttnPool>,
}

fn default_mlp_ratio() -> f64 {
    4.0
}

fn default_eps() -> f64 {
    1e-6
}

fn yes() -> bool {
    true
}

impl VitConfig {
    /// A ViT with timm's defaults for everything but its size.
    pub fn new(img_size: usize, patch_size: usize, embed_dim: usize, depth: usize, num_heads: usize) -> Self {
        Self {
            img_size,
            patch_size,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: default_mlp_ratio(),
            mlp: MlpKind::Gelu,
            qkv_bias: true,
            init_values: None,
            class_token: true,
            reg_tokens: 0,
            no_embed_class: false,
            pre_norm: false,
            global_pool: GlobalPool::Token,
            fc_norm: None,
            dynamic_img_size: false,
            distilled: false,
            layer_norm_eps: default_eps(),
            embedding: Embedding::Pool,
            pos_resample: PosResample::Antialiased,
            attn_pool: None,
        }
    }

    /// ViT-S/16 at 224 px: width 384, 12 blocks, 6 heads.
    pub fn vit_small_patch16_224() -> Self {
        Self::new(224, 16, 384, 12, 6)
    }

    /// Patches per side at `img_size`.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Tokens before the patches: class, distillation, registers.
    pub fn prefix_tokens(&self) -> usize {
        usize::from(self.class_token) + usize::from(self.distilled) + self.reg_tokens
    }

    /// Rows of `pos_embed` at a `grid` x `grid` patch grid.
    pub fn pos_embed_len(&self, grid: usize) -> usize {
        grid * grid + if self.no_embed_class { 0 } else { self.prefix_tokens() }
    }

    /// The MLP's hidden width (`fc1`'s outputs).
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Whether the pooled features pass `fc_norm` (and the tokens skip the final `norm`).
    pub fn use_fc_norm(&self) -> bool {
        self.fc_norm.unwrap_or(self.global_pool == GlobalPool::Avg)
    }

    /// Width of the features.
    pub fn num_features(&self) -> usize {
        match (self.embedding, self.attn_pool) {
            (Embedding::ClassTokenAndPatchMean, _) => 2 * self.embed_dim,
            (Embedding::AttentionalPool, Some(pool)) => pool.dim,
            _ => self.embed_dim,
        }
    }

    /// Trainable scalars of the model with a `num_classes`-way head (0: none), as timm counts
    /// them, without building it (a giant's zero-filled tensors are 4.5 GB).
    pub fn parameter_count(&self, num_classes: usize) -> usize {
        let d = self.embed_dim;
        let hidden = self.mlp_hidden();
        let fc2_in = if self.mlp == MlpKind::SwigluPacked { hidden / 2 } else { hidden };
        let block = 2 * d
            + 3 * d * d
            + if self.qkv_bias { 3 * d } else { 0 }
            + d * d
            + d
            + if self.init_values.is_some() { 2 * d } else { 0 }
            + 2 * d
            + d * hidden
            + hidden
            + fc2_in * d
            + d;
        let heads = if num_classes == 0 { 0 } else { (self.num_features() + 1) * num_classes * if self.distilled { 2 } else { 1 } };
        let pool = match (self.embedding, self.attn_pool) {
            (Embedding::AttentionalPool, Some(pool)) => pool.parameter_count(d),
            _ => 0,
        };
        d * 3 * self.patch_size * self.patch_size
            + pool
            + if self.pre_norm { 2 * d } else { d }
            + self.prefix_tokens() * d
            + self.pos_embed_len(self.grid()) * d
            + self.depth * block
            + 2 * d
            + heads
    }

    /// Options that cannot go together, in words, or `Ok`.
    pub fn check_options(&self) -> Result<(), String> {
        let needs_class = matches!(self.embedding, Embedding::ClassToken | Embedding::ClassTokenAndPatchMean)
            || (self.embedding == Embedding::Pool && self.global_pool == GlobalPool::Token);
        if needs_class && !self.class_token {
            return Err(format!(
                "the features ({:?}, global_pool {:?}) need a class token, and class_token is false",
                self.embedding, self.global_pool
            ));
        }
        if self.embedding == Embedding::Pool && self.global_pool == GlobalPool::None && !self.distilled {
            return Err("global_pool is none (the model gives every token): name an embedding recipe (embedding = \"class_token\", \"patch_mean\" or \"class_token_and_patch_mean\")".into());
        }
        match (self.embedding, self.attn_pool) {
            (Embedding::AttentionalPool, None) => {
                return Err("embedding attentional_pool needs its pooler's shape (attn_pool = { dim = ..., heads = ... })".into());
            }
            (Embedding::AttentionalPool, Some(pool)) if pool.heads == 0 || pool.dim == 0 || !pool.dim.is_multiple_of(pool.heads) => {
                return Err(format!("attn_pool's dim {} is not a positive multiple of its heads {}", pool.dim, pool.heads));
            }
            (Embedding::AttentionalPool, Some(pool)) if pool.dim > 1 << 14 => {
                return Err(format!("attn_pool's dim is {}; expected at most 16384", pool.dim));
            }
            (embedding, Some(_)) if embedding != Embedding::AttentionalPool => {
                return Err(format!("attn_pool is set but the embedding is {embedding:?}; it is used by embedding = \"attentional_pool\""));
            }
            _ => {}
        }
        if self.distilled && !self.class_token {
            return Err("a distilled ViT (DeiT) has a class token".into());
        }
        if self.mlp == MlpKind::SwigluPacked && !self.mlp_hidden().is_multiple_of(2) {
            return Err(format!(
                "SwiGLUPacked needs an even hidden width; embed_dim {} x mlp_ratio {} gives {}",
                self.embed_dim,
                self.mlp_ratio,
                self.mlp_hidden()
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return Err(format!("layer_norm_eps is {}; expected more than 0, less than 1", self.layer_norm_eps));
        }
        if self.reg_tokens > 64 {
            return Err(format!("reg_tokens is {}; expected at most 64", self.reg_tokens));
        }
        Ok(())
    }
}
