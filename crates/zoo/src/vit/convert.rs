//! ViT checkpoints as their authors publish them, renamed to timm's keys as timm's
//! `checkpoint_filter_fn` does: open_clip's vision trunk (`visual.trunk.`) and a `module.`
//! prefix stripped, and the original DINOv2 layout (`register_tokens`, `mask_token`, the
//! SwiGLU's `w12`/`w3`) converted by `_convert_dinov2`; transformers' layouts by
//! `super::transformers`.

use candle_core::Tensor;

use crate::error::Result;

/// The tensors under timm's names.
pub fn convert_vit_checkpoint(tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    let keys: Vec<&str> = tensors.iter().map(|(k, _)| k.as_str()).collect();
    if super::transformers::is_transformers_layout(&keys) {
        return super::transformers::convert_transformers(tensors);
    }
    // open_clip towers keep the trunk under `visual.trunk.` beside their text tower and head;
    // only the trunk is the backbone.
    let mut tensors: Vec<(String, Tensor)> = if tensors.iter().any(|(k, _)| k == "visual.trunk.pos_embed") {
        tensors.into_iter().filter_map(|(k, t)| k.strip_prefix("visual.trunk.").map(|k| (k.to_string(), t))).collect()
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
