//! Hugging Face transformers checkpoints of the ViT family (`ViTModel`: Phikon; `Dinov2Model`:
//! Phikon-v2, RAD-DINO; `Dinov2WithRegistersModel`), as the zoo's timm-named ViT: their
//! `config.json` read into a [`VitConfig`], their keys renamed, the separate query, key and value
//! projections joined into timm's `qkv`, a SwiGLU's gate and up projections packed into `fc1`,
//! and registers converted as timm converts DINOv2's (the class position folded into the class
//! token, the position embeddings kept for the patches only).

use candle_core::Tensor;
use serde_json::Value;

use super::config::{Embedding, MlpKind, VitConfig};
use super::resample::PosResample;
use crate::error::{Error, Result};

/// The `model_type`s this module reads.
pub const TRANSFORMERS_MODEL_TYPES: [&str; 3] = ["vit", "dinov2", "dinov2_with_registers"];

/// Whether a checkpoint's keys are a transformers ViT's.
pub fn is_transformers_layout(keys: &[&str]) -> bool {
    keys.iter().any(|k| k.ends_with("embeddings.patch_embeddings.projection.weight"))
}

/// The ViT a transformers `config.json` describes (`model_type` vit, dinov2 or
/// dinov2_with_registers): its features are the class token after the final LayerNorm
/// (`last_hidden_state[:, 0]`, the `pooler_output` of Dinov2Model).
pub fn vit_from_transformers_config(config: &Value) -> std::result::Result<VitConfig, String> {
    let model_type = config["model_type"].as_str().unwrap_or_default();
    if !TRANSFORMERS_MODEL_TYPES.contains(&model_type) {
        return Err(format!("model_type '{model_type}' is not a transformers ViT the zoo reads ({})", TRANSFORMERS_MODEL_TYPES.join(", ")));
    }
    let size = |key: &str| -> std::result::Result<usize, String> {
        config[key].as_u64().and_then(|v| usize::try_from(v).ok()).ok_or_else(|| format!("{key} is missing or not a whole number"))
    };
    let side = |key: &str| -> std::result::Result<usize, String> {
        match &config[key] {
            Value::Array(pair) if pair.len() == 2 && pair[0] == pair[1] => {
                pair[0].as_u64().and_then(|v| usize::try_from(v).ok()).ok_or_else(|| format!("{key} is {}", config[key]))
            }
            Value::Array(_) => Err(format!("{key} is {}; the zoo's ViTs are square", config[key])),
            _ => size(key),
        }
    };
    let act = config["hidden_act"].as_str().unwrap_or("gelu");
    let hidden = size("hidden_size")?;
    let mut vit =
        VitConfig::new(side("image_size")?, side("patch_size")?, hidden, size("num_hidden_layers")?, size("num_attention_heads")?);
    if config["num_channels"].as_u64().is_some_and(|c| c != 3) {
        return Err(format!("num_channels is {}; the zoo's backbones take RGB", config["num_channels"]));
    }
    vit.qkv_bias = config["qkv_bias"].as_bool().unwrap_or(true);
    vit.layer_norm_eps = config["layer_norm_eps"].as_f64().unwrap_or(if model_type == "vit" { 1e-12 } else { 1e-6 });
    vit.embedding = Embedding::ClassToken;
    // transformers' Dinov2 resamples positions to any input; ViTModel does with
    // interpolate_pos_encoding, both by plain bicubic; Dinov2WithRegisters antialiased.
    vit.dynamic_img_size = true;
    vit.pos_resample = if model_type == "dinov2_with_registers" { PosResample::Antialiased } else { PosResample::Bicubic };
    if model_type == "vit" {
        if act != "gelu" {
            return Err(format!("hidden_act is '{act}'; the zoo's ViT MLP is exact GELU"));
        }
        vit.mlp_ratio = size("intermediate_size")? as f64 / hidden as f64;
    } else {
        vit.mlp_ratio = config["mlp_ratio"].as_f64().unwrap_or(4.0);
        vit.init_values = Some(config["layerscale_value"].as_f64().unwrap_or(1.0));
        if config["use_swiglu_ffn"].as_bool() == Some(true) {
            // The packed width is read from the checkpoint (transformers rounds it to 8).
            vit.mlp = MlpKind::SwigluPacked;
        } else if act != "gelu" {
            return Err(format!("hidden_act is '{act}'; the zoo's ViT MLP is exact GELU"));
        }
        let registers = config["num_register_tokens"].as_u64().unwrap_or(0) as usize;
        if registers > 0 {
            vit.reg_tokens = registers;
            vit.no_embed_class = true;
        }
    }
    Ok(vit)
}

fn take(tensors: &mut Vec<(String, Tensor)>, key: &str) -> Option<Tensor> {
    let at = tensors.iter().position(|(k, _)| k == key)?;
    Some(tensors.swap_remove(at).1)
}

/// The tensors under timm's names.
pub fn convert_transformers(tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    // A task model's backbone sits under its model type (`vit.`, `dinov2.`); its classifier
    // is not the pretrained backbone's.
    let base = ["vit.", "dinov2.", "dinov2_with_registers."]
        .into_iter()
        .find(|prefix| tensors.iter().any(|(k, _)| k.starts_with(prefix) && k.ends_with("patch_embeddings.projection.weight")));
    let mut tensors: Vec<(String, Tensor)> = match base {
        Some(prefix) => tensors.into_iter().filter_map(|(k, t)| k.strip_prefix(prefix).map(|k| (k.to_string(), t))).collect(),
        None => tensors,
    };
    let mut out = Vec::with_capacity(tensors.len());
    let depth = (0..).take_while(|i| tensors.iter().any(|(k, _)| k.starts_with(&format!("encoder.layer.{i}.")))).count();
    for i in 0..depth {
        let layer = format!("encoder.layer.{i}.");
        let block = format!("blocks.{i}.");
        for part in ["weight", "bias"] {
            let q = take(&mut tensors, &format!("{layer}attention.attention.query.{part}"));
            let k = take(&mut tensors, &format!("{layer}attention.attention.key.{part}"));
            let v = take(&mut tensors, &format!("{layer}attention.attention.value.{part}"));
            if let (Some(q), Some(k), Some(v)) = (q, k, v) {
                out.push((format!("{block}attn.qkv.{part}"), Tensor::cat(&[&q, &k, &v], 0)?));
            }
            let gate = take(&mut tensors, &format!("{layer}mlp.gate_proj.{part}"));
            let up = take(&mut tensors, &format!("{layer}mlp.up_proj.{part}"));
            if let (Some(gate), Some(up)) = (gate, up) {
                // silu(gate) * up: timm's packed fc1 holds the gate first.
                out.push((format!("{block}mlp.fc1.{part}"), Tensor::cat(&[&gate, &up], 0)?));
            }
        }
    }
    for (key, tensor) in tensors {
        let renamed = if let Some(rest) = key.strip_prefix("encoder.layer.") {
            let (index, tail) = rest.split_once('.').unwrap_or((rest, ""));
            let tail = match tail {
                t if t.starts_with("layernorm_before.") => t.replacen("layernorm_before", "norm1", 1),
                t if t.starts_with("layernorm_after.") => t.replacen("layernorm_after", "norm2", 1),
                t if t.starts_with("attention.output.dense.") => t.replacen("attention.output.dense", "attn.proj", 1),
                t if t.starts_with("intermediate.dense.") => t.replacen("intermediate.dense", "mlp.fc1", 1),
                t if t.starts_with("output.dense.") => t.replacen("output.dense", "mlp.fc2", 1),
                "layer_scale1.lambda1" => "ls1.gamma".to_string(),
                "layer_scale2.lambda1" => "ls2.gamma".to_string(),
                t if t.starts_with("mlp.weights_in.") => t.replacen("mlp.weights_in", "mlp.fc1", 1),
                t if t.starts_with("mlp.weights_out.") => t.replacen("mlp.weights_out", "mlp.fc2", 1),
                t if t.starts_with("mlp.down_proj.") => t.replacen("mlp.down_proj", "mlp.fc2", 1),
                t => t.to_string(),
            };
            format!("blocks.{index}.{tail}")
        } else {
            match key.as_str() {
                "embeddings.cls_token" => "cls_token".into(),
                "embeddings.position_embeddings" => "pos_embed".into(),
                "embeddings.register_tokens" => "reg_token".into(),
                "embeddings.patch_embeddings.projection.weight" => "patch_embed.proj.weight".into(),
                "embeddings.patch_embeddings.projection.bias" => "patch_embed.proj.bias".into(),
                "layernorm.weight" => "norm.weight".into(),
                "layernorm.bias" => "norm.bias".into(),
                // The mask token (masked image modelling), the pooler (a tanh layer on the class
                // token, not the embedding) and a task model's classifier are not the backbone.
                k if k == "embeddings.mask_token" || k.starts_with("pooler.") || k.starts_with("classifier.") => continue,
                k => k.to_string(),
            }
        };
        out.push((renamed, tensor));
    }
    if out.iter().any(|(k, _)| k == "reg_token") {
        // Registers join after the positions are added, which cover the class token and the
        // patches (as in the original DINOv2): fold the class position into the class token.
        let pos_at = out.iter().position(|(k, _)| k == "pos_embed");
        let cls_at = out.iter().position(|(k, _)| k == "cls_token");
        if let (Some(pos_at), Some(cls_at)) = (pos_at, cls_at) {
            let pos = out[pos_at].1.clone();
            out[cls_at].1 = out[cls_at].1.broadcast_add(&pos.narrow(1, 0, 1)?)?;
            out[pos_at].1 = pos.narrow(1, 1, pos.dim(1)? - 1)?.contiguous()?;
        }
    }
    if out.iter().any(|(k, _)| k.starts_with("encoder.")) {
        return Err(Error::Config {
            source_name: "transformers checkpoint".into(),
            problem: "it has encoder tensors the zoo's ViT does not name (not a ViTModel or Dinov2Model layout)".into(),
        });
    }
    Ok(out)
}
