//! A ViT's configuration completed from its checkpoint's tensor names and shapes. Several of the
//! most used pathology checkpoints publish a `config.json` that omits what their model cards
//! pass by hand (UNI's LayerScale, Virchow's packed SwiGLU, UNI2-h's registers): what the
//! tensors show is taken where the configuration left timm's default, and refused where the
//! configuration states something else. The number of heads is in no tensor; it stays the
//! configuration's.

use std::collections::BTreeMap;

use super::config::{GlobalPool, MlpKind, VitConfig};
use super::resample::square_side;

/// The configuration `config` with what the checkpoint's tensors (name -> shape) show, or the
/// disagreements, in words.
pub fn fit_to_checkpoint(config: &VitConfig, shapes: &BTreeMap<String, Vec<usize>>) -> Result<VitConfig, String> {
    let defaults = VitConfig::new(config.img_size, config.patch_size, config.embed_dim, config.depth, config.num_heads);
    let mut fitted = config.clone();
    let mut disagreements = Vec::new();
    let shape = |name: &str| shapes.get(name).map(Vec::as_slice);
    let Some(&[dim, _, kernel, _]) = shape("patch_embed.proj.weight") else {
        return Err("the checkpoint has no patch_embed.proj.weight of 4 dimensions: it is not a timm ViT".into());
    };
    if dim != config.embed_dim {
        disagreements.push(format!("embed_dim is {} but the checkpoint's tokens are {dim} wide", config.embed_dim));
    }
    if kernel != config.patch_size {
        disagreements.push(format!("patch_size is {} but the checkpoint's patches are {kernel} px", config.patch_size));
    }
    let depth = (0..).take_while(|i| shapes.contains_key(&format!("blocks.{i}.norm1.weight"))).count();
    if depth != config.depth {
        disagreements.push(format!("depth is {} but the checkpoint has {depth} blocks", config.depth));
    }
    // A flag the configuration left at timm's default takes the checkpoint's value; one it
    // states must match.
    let mut flag = |what: &str, stated: bool, default: bool, present: bool, set: &mut dyn FnMut(bool)| {
        if stated == present {
            return;
        }
        if stated == default {
            set(present);
        } else {
            disagreements.push(format!("{what} is {stated} but the checkpoint {} it", if present { "has" } else { "lacks" }));
        }
    };
    let has = |name: &str| shapes.contains_key(name);
    flag("class_token", config.class_token, defaults.class_token, has("cls_token"), &mut |v| fitted.class_token = v);
    flag("distilled (dist_token)", config.distilled, defaults.distilled, has("dist_token"), &mut |v| fitted.distilled = v);
    flag("qkv_bias", config.qkv_bias, defaults.qkv_bias, has("blocks.0.attn.qkv.bias"), &mut |v| fitted.qkv_bias = v);
    flag("pre_norm (norm_pre)", config.pre_norm, defaults.pre_norm, has("norm_pre.weight"), &mut |v| fitted.pre_norm = v);
    let layer_scale = has("blocks.0.ls1.gamma");
    flag("LayerScale (init_values)", config.init_values.is_some(), false, layer_scale, &mut |v| {
        // The value only initialises gamma, which the checkpoint holds: timm's usual 1e-5.
        fitted.init_values = v.then_some(1e-5);
    });
    let fc_norm = has("fc_norm.weight");
    if fc_norm != config.use_fc_norm() {
        if config.fc_norm.is_none() {
            fitted.fc_norm = Some(fc_norm);
        } else {
            disagreements.push(format!(
                "fc_norm is {:?} but the checkpoint {} fc_norm",
                config.fc_norm,
                if fc_norm { "has" } else { "lacks" }
            ));
        }
    }
    let registers = shape("reg_token").map_or(0, |s| s.get(1).copied().unwrap_or(0));
    if registers != config.reg_tokens {
        if config.reg_tokens == defaults.reg_tokens {
            fitted.reg_tokens = registers;
        } else {
            disagreements.push(format!("reg_tokens is {} but the checkpoint has {registers}", config.reg_tokens));
        }
    }
    let fit = Fit { config, defaults: &defaults, shapes, dim };
    fit.mlp(&mut fitted, &mut disagreements);
    fit.positions(&mut fitted, &mut disagreements);
    fit.attention_pool(&fitted, &mut disagreements);
    if fitted.global_pool == GlobalPool::Token && !fitted.class_token && fitted.embedding == super::Embedding::Pool {
        // A model without a class token pools by averaging (timm's `_gap` presets).
        fitted.global_pool = GlobalPool::Avg;
    }
    if disagreements.is_empty() { Ok(fitted) } else { Err(disagreements.join("; ")) }
}

/// What a checkpoint's tensors say of the parts whose fit takes more than a flag.
struct Fit<'a> {
    config: &'a VitConfig,
    defaults: &'a VitConfig,
    /// The checkpoint's tensors: name -> shape.
    shapes: &'a BTreeMap<String, Vec<usize>>,
    /// The tokens' width (the patch embedding's).
    dim: usize,
}

impl Fit<'_> {
    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(Vec::as_slice)
    }

    /// The MLP's kind (GELU, or SwiGLU packed in fc1) and hidden width, from fc1 and fc2.
    fn mlp(&self, fitted: &mut VitConfig, disagreements: &mut Vec<String>) {
        let (config, defaults, dim) = (self.config, self.defaults, self.dim);
        if let Some(&[rows, _]) = self.shape("blocks.0.mlp.fc1.weight")
            && let Some(&[_, fc2_in]) = self.shape("blocks.0.mlp.fc2.weight")
        {
            let kind = if fc2_in * 2 == rows { MlpKind::SwigluPacked } else { MlpKind::Gelu };
            if kind != config.mlp {
                if config.mlp == defaults.mlp {
                    fitted.mlp = kind;
                } else {
                    disagreements
                        .push(format!("the MLP is {:?} but the checkpoint's fc1/fc2 widths ({rows}, {fc2_in}) are {kind:?}'s", config.mlp));
                }
            }
            if rows != fitted.mlp_hidden() {
                if config.mlp_ratio == defaults.mlp_ratio {
                    fitted.mlp_ratio = rows as f64 / dim as f64;
                    // int(dim * ratio) must give the width back exactly.
                    if fitted.mlp_hidden() != rows {
                        fitted.mlp_ratio = (rows as f64 + 0.5) / dim as f64;
                    }
                } else {
                    disagreements.push(format!(
                        "mlp_ratio {} gives a hidden width of {} but the checkpoint's is {rows}",
                        config.mlp_ratio,
                        config.mlp_hidden()
                    ));
                }
            }
        }
    }

    /// Whether the position embeddings cover the prefix tokens too (`no_embed_class`), from
    /// their count.
    fn positions(&self, fitted: &mut VitConfig, disagreements: &mut Vec<String>) {
        let (config, defaults) = (self.config, self.defaults);
        if let Some(&[_, positions, _]) = self.shape("pos_embed") {
            // Position embeddings for the patches only, or for the prefix tokens too: the grid the
            // configuration names decides, else the length that is a square.
            let prefix = fitted.prefix_tokens();
            let grid = fitted.grid();
            let only_patches = if positions == grid * grid && prefix > 0 {
                Some(true)
            } else if positions == grid * grid + prefix || (prefix > 0 && positions >= prefix && square_side(positions - prefix).is_some())
            {
                Some(false)
            } else if square_side(positions).is_some() {
                Some(true)
            } else {
                disagreements
                    .push(format!("pos_embed has {positions} positions: neither a square grid nor one with {prefix} prefix position(s)"));
                None
            };
            if let Some(only_patches) = only_patches.filter(|&o| prefix > 0 && o != config.no_embed_class) {
                if config.no_embed_class == defaults.no_embed_class {
                    fitted.no_embed_class = only_patches;
                } else {
                    disagreements.push(format!(
                        "no_embed_class is {} but pos_embed's {positions} positions say {only_patches}",
                        config.no_embed_class
                    ));
                }
            }
        } else {
            disagreements.push("the checkpoint has no pos_embed".into());
        }
    }

    /// A CoCa attentional pooler (`attn_pool_contrast`) where the embedding is taken by one:
    /// its query's and key projection's shapes.
    fn attention_pool(&self, fitted: &VitConfig, disagreements: &mut Vec<String>) {
        let dim = self.dim;
        if let Some(pool) = fitted.attn_pool.filter(|_| fitted.embedding == super::Embedding::AttentionalPool) {
            // The pooler's query is (queries, dim) and its keys come from the tokens; its heads are
            // in no tensor.
            match self.shape("attn_pool_contrast.query") {
                Some(&[1, width]) if width == pool.dim => {}
                Some(other) => disagreements.push(format!(
                    "attn_pool's dim is {} but the checkpoint's attn_pool_contrast.query is {other:?} (one query of that width expected)",
                    pool.dim
                )),
                None => disagreements.push(
                    "the embedding is attentional_pool but the checkpoint has no attn_pool_contrast.query (no CoCa pooler beside its trunk)"
                        .into(),
                ),
            }
            if let Some(&[rows, columns]) = self.shape("attn_pool_contrast.attn.k_proj.weight")
                && (rows, columns) != (pool.dim, dim)
            {
                disagreements.push(format!(
                    "the pooler's key projection is {rows} x {columns}; attn_pool's dim {} over {dim}-wide tokens expected",
                    pool.dim
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(config: &VitConfig, grid: usize) -> BTreeMap<String, Vec<usize>> {
        let d = config.embed_dim;
        let mut map = BTreeMap::from([
            ("patch_embed.proj.weight".to_string(), vec![d, 3, config.patch_size, config.patch_size]),
            ("pos_embed".to_string(), vec![1, config.pos_embed_len(grid), d]),
        ]);
        let hidden = config.mlp_hidden();
        for i in 0..config.depth {
            map.insert(format!("blocks.{i}.norm1.weight"), vec![d]);
            map.insert(format!("blocks.{i}.mlp.fc1.weight"), vec![hidden, d]);
            let fc2_in = if config.mlp == MlpKind::SwigluPacked { hidden / 2 } else { hidden };
            map.insert(format!("blocks.{i}.mlp.fc2.weight"), vec![d, fc2_in]);
            if config.qkv_bias {
                map.insert(format!("blocks.{i}.attn.qkv.bias"), vec![3 * d]);
            }
            if config.init_values.is_some() {
                map.insert(format!("blocks.{i}.ls1.gamma"), vec![d]);
            }
        }
        if config.class_token {
            map.insert("cls_token".into(), vec![1, 1, d]);
        }
        if config.reg_tokens > 0 {
            map.insert("reg_token".into(), vec![1, config.reg_tokens, d]);
        }
        map
    }

    #[test]
    fn what_a_config_left_at_the_default_is_read_from_the_tensors() {
        // Virchow2 as published: config.json says vit_huge_patch14_224 with mlp_ratio, registers
        // and init_values, but not the packed SwiGLU its card passes by hand.
        let mut truth = VitConfig::new(224, 14, 160, 2, 4);
        (truth.mlp_ratio, truth.mlp, truth.reg_tokens, truth.init_values) = (5.3375, MlpKind::SwigluPacked, 4, Some(1e-5));
        let mut published = truth.clone();
        published.mlp = MlpKind::Gelu;
        assert_eq!(fit_to_checkpoint(&published, &shapes(&truth, 16)).unwrap(), truth);
        // UNI: no init_values in the config; UNI2-h: registers and patch-only positions unsaid.
        let mut uni2 = truth.clone();
        (uni2.reg_tokens, uni2.no_embed_class) = (8, true);
        let plain = VitConfig { mlp_ratio: 5.3375, ..VitConfig::new(224, 14, 160, 2, 4) };
        let fitted = fit_to_checkpoint(&plain, &shapes(&uni2, 16)).unwrap();
        assert_eq!(
            (fitted.reg_tokens, fitted.no_embed_class, fitted.init_values, fitted.mlp),
            (8, true, Some(1e-5), MlpKind::SwigluPacked)
        );
        // A width the default ratio does not give is taken exactly.
        let mut odd = VitConfig::new(224, 16, 48, 1, 4);
        odd.mlp_ratio = 100.0 / 48.0;
        assert_eq!(fit_to_checkpoint(&VitConfig::new(224, 16, 48, 1, 4), &shapes(&odd, 14)).unwrap().mlp_hidden(), 100);
    }

    #[test]
    fn what_a_config_states_against_the_tensors_is_refused_by_name() {
        let truth = VitConfig::new(224, 16, 64, 2, 4);
        let mut stated = truth.clone();
        (stated.reg_tokens, stated.init_values, stated.depth) = (4, Some(1e-5), 3);
        let error = fit_to_checkpoint(&stated, &shapes(&truth, 14)).unwrap_err();
        for part in ["reg_tokens is 4", "LayerScale", "depth is 3"] {
            assert!(error.contains(part), "{part}: {error}");
        }
        let wide = VitConfig::new(224, 16, 96, 2, 4);
        assert!(fit_to_checkpoint(&wide, &shapes(&truth, 14)).unwrap_err().contains("64 wide"));
    }
}
