//! ViT checkpoints as their authors publish them, renamed to timm's keys as timm's
//! `checkpoint_filter_fn` does: open_clip's vision trunk (`visual.trunk.`) and a `module.`
//! prefix stripped, and the original DINOv2 layout (`register_tokens`, `mask_token`, the
//! SwiGLU's `w12`/`w3`) converted by `_convert_dinov2`; transformers' layouts by
//! `super::transformers`. A CoCa tower's contrastive attentional pooler (CONCH) is kept
//! beside its trunk when the model pools with it.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// The pooler's and its LayerNorm's names in the zoo (open_clip's without `visual.`).
const ATTN_POOL_PREFIXES: [&str; 2] = ["attn_pool_contrast.", "ln_contrast."];

/// The tensors under timm's names; a CoCa tower's contrastive pooler too when
/// `attentional_pool` (the model's embedding is that pooler's), else only its trunk.
pub fn convert_vit_checkpoint(tensors: Vec<(String, Tensor)>, attentional_pool: bool) -> Result<Vec<(String, Tensor)>> {
    let keys: Vec<&str> = tensors.iter().map(|(k, _)| k.as_str()).collect();
    if super::transformers::is_transformers_layout(&keys) {
        return super::transformers::convert_transformers(tensors);
    }
    // open_clip towers keep the trunk under `visual.trunk.` beside their text tower and head;
    // only the trunk (and a CoCa pooler the embedding uses) is the backbone.
    let mut tensors: Vec<(String, Tensor)> = if tensors.iter().any(|(k, _)| k == "visual.trunk.pos_embed") {
        let mut tower = open_clip_tower(tensors)?;
        if !attentional_pool {
            tower.retain(|(k, _)| !ATTN_POOL_PREFIXES.iter().any(|prefix| k.starts_with(prefix)));
        }
        tower
    } else if tensors.iter().all(|(k, _)| k.starts_with("module.")) {
        tensors.into_iter().map(|(k, t)| (k["module.".len()..].to_string(), t)).collect()
    } else {
        tensors
    };
    if !tensors.iter().any(|(k, _)| k == "mask_token") {
        return Ok(tensors);
    }
    // The original DINOv2 layout.
    tensors.retain(|(k, _)| k != "mask_token");
    if let Some(at) = tensors.iter().position(|(k, _)| k == "register_tokens") {
        // Registers join after the position embeddings are added, which cover the class token
        // and the patches: timm folds the class position into the class token and keeps the
        // patch positions only (no_embed_class).
        tensors[at].0 = "reg_token".into();
        let pos_at = tensors.iter().position(|(k, _)| k == "pos_embed");
        let cls_at = tensors.iter().position(|(k, _)| k == "cls_token");
        if let (Some(pos_at), Some(cls_at)) = (pos_at, cls_at) {
            let pos = tensors[pos_at].1.clone();
            let positions = pos.dim(1)?;
            tensors[cls_at].1 = tensors[cls_at].1.broadcast_add(&pos.narrow(1, 0, 1)?)?;
            tensors[pos_at].1 = pos.narrow(1, 1, positions - 1)?.contiguous()?;
        }
    }
    for (key, _) in tensors.iter_mut() {
        if let Some(rest) = key.strip_prefix("blocks.")
            && let Some((index, tail)) = rest.split_once('.')
        {
            let renamed = match tail {
                "mlp.w12.weight" | "mlp.w12.bias" => tail.replace("w12", "fc1"),
                "mlp.w3.weight" | "mlp.w3.bias" => tail.replace("w3", "fc2"),
                _ => continue,
            };
            *key = format!("blocks.{index}.{renamed}");
        }
    }
    Ok(tensors)
}

/// An open_clip vision tower's trunk and, for a CoCa tower, its contrastive attentional pooler
/// (`visual.attn_pool_contrast.`) and `visual.ln_contrast.`, with `MultiheadAttention`'s
/// packed projections split into `q_proj`, `k_proj` and `v_proj` weights and biases (packed as
/// `in_proj_weight` when the tokens are as wide as the pooler, else three `*_proj_weight`; the
/// biases always as `in_proj_bias`). The text tower, the caption pooler and the projection to the
/// joint space are left out.
fn open_clip_tower(tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    let mut tower = Vec::new();
    let mut packed = Vec::new();
    for (key, tensor) in tensors {
        if let Some(rest) = key.strip_prefix("visual.trunk.") {
            tower.push((rest.to_string(), tensor));
        } else if let Some(rest) = key.strip_prefix("visual.ln_contrast.") {
            tower.push((format!("ln_contrast.{rest}"), tensor));
        } else if let Some(rest) = key.strip_prefix("visual.attn_pool_contrast.") {
            match rest {
                "attn.in_proj_weight" | "attn.in_proj_bias" => packed.push((rest.to_string(), tensor)),
                "attn.q_proj_weight" | "attn.k_proj_weight" | "attn.v_proj_weight" => {
                    tower.push((format!("attn_pool_contrast.{}", rest.replace("_proj_weight", "_proj.weight")), tensor));
                }
                _ => tower.push((format!("attn_pool_contrast.{rest}"), tensor)),
            }
        }
    }
    for (name, tensor) in packed {
        let rows = tensor.dim(0)?;
        if rows == 0 || !rows.is_multiple_of(3) {
            return Err(Error::Config {
                source_name: "vit".into(),
                problem: format!(
                    "visual.attn_pool_contrast.{name} has {rows} rows: not the three equal projections (q, k, v) of a MultiheadAttention"
                ),
            });
        }
        let part = if name.ends_with("weight") { "weight" } else { "bias" };
        for (index, projection) in ["q_proj", "k_proj", "v_proj"].into_iter().enumerate() {
            tower.push((
                format!("attn_pool_contrast.attn.{projection}.{part}"),
                tensor.narrow(0, index * rows / 3, rows / 3)?.contiguous()?,
            ));
        }
    }
    Ok(tower)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn tensor(values: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
    }

    fn tower(pooler: Vec<(&str, Tensor)>) -> Vec<(String, Tensor)> {
        let mut tensors = vec![("visual.trunk.pos_embed".to_string(), tensor(&[0.0; 4], &[1, 2, 2]))];
        tensors.extend(pooler.into_iter().map(|(k, t)| (format!("visual.{k}"), t)));
        tensors.push(("visual.attn_pool_caption.query".into(), tensor(&[0.0; 2], &[1, 2])));
        tensors.push(("text.token_embedding.weight".into(), tensor(&[0.0; 2], &[1, 2])));
        tensors
    }

    #[test]
    fn a_coca_poolers_packed_projections_split_into_q_k_and_v() {
        let rows: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let converted = convert_vit_checkpoint(
            tower(vec![
                ("attn_pool_contrast.attn.in_proj_weight", tensor(&rows, &[3, 2])),
                ("attn_pool_contrast.attn.in_proj_bias", tensor(&[7.0, 8.0, 9.0], &[3])),
                ("attn_pool_contrast.query", tensor(&[1.0, 2.0], &[1, 2])),
                ("ln_contrast.weight", tensor(&[1.0, 1.0], &[2])),
            ]),
            true,
        )
        .unwrap();
        let value = |name: &str| -> Vec<f32> {
            let (_, t) = converted.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("no {name}"));
            t.flatten_all().unwrap().to_vec1().unwrap()
        };
        assert_eq!(value("attn_pool_contrast.attn.q_proj.weight"), [0.0, 1.0]);
        assert_eq!(value("attn_pool_contrast.attn.k_proj.weight"), [2.0, 3.0]);
        assert_eq!(value("attn_pool_contrast.attn.v_proj.weight"), [4.0, 5.0]);
        assert_eq!(value("attn_pool_contrast.attn.v_proj.bias"), [9.0]);
        assert_eq!(value("attn_pool_contrast.query"), [1.0, 2.0]);
        assert_eq!(value("ln_contrast.weight"), [1.0, 1.0]);
        let mut names: Vec<&str> = converted.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names.len(), 9, "the caption pooler and the text tower are not the backbone: {names:?}");
        // Without the pooler as the embedding, only the trunk is kept.
        let trunk = convert_vit_checkpoint(tower(vec![("attn_pool_contrast.query", tensor(&[1.0, 2.0], &[1, 2]))]), false).unwrap();
        assert_eq!(trunk.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["pos_embed"]);
    }

    #[test]
    fn packed_projections_that_are_not_three_equal_parts_are_refused() {
        let error =
            convert_vit_checkpoint(tower(vec![("attn_pool_contrast.attn.in_proj_bias", tensor(&[0.0; 4], &[4]))]), true).unwrap_err();
        assert!(error.to_string().contains("in_proj_bias has 4 rows"), "{error}");
    }
}
