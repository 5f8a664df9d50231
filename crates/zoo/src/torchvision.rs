//! torchvision state dicts under timm's names (../shared/docs/ZOO.md, section 6): ResNet and
//! modern DenseNet names are identical; legacy DenseNet `.pth` names, MobileNetV2, EfficientNet
//! and ViT are renamed. A checkpoint is converted only when it is recognisably torchvision's.

use crate::efficientnet::EfficientNetVariant;
use crate::entry::Architecture;

/// Whether these checkpoint keys are in a torchvision layout this architecture must rename.
pub fn is_torchvision_layout(architecture: &Architecture, keys: &[&str]) -> bool {
    match architecture {
        Architecture::ResNet(_) | Architecture::ConvNext(_) | Architecture::RegNet(_) | Architecture::Swin(_) => false,
        Architecture::DenseNet(_) => keys.iter().any(|k| k.contains("denselayer") && (k.contains(".norm.1.") || k.contains(".conv.1."))),
        // torchvision's EfficientNetV2 is not converted: its keys stay, and fail as missing.
        Architecture::EfficientNet(config) => {
            matches!(config.variant, EfficientNetVariant::MobilenetV2 | EfficientNetVariant::EfficientNet)
                && keys.contains(&"features.0.0.weight")
        }
        Architecture::Vit(_) => keys.contains(&"class_token"),
    }
}

/// The timm name of a torchvision key, or `None` for a key with no counterpart.
pub fn timm_name(architecture: &Architecture, key: &str) -> Option<String> {
    match architecture {
        Architecture::ResNet(_) | Architecture::ConvNext(_) | Architecture::RegNet(_) | Architecture::Swin(_) => Some(key.to_string()),
        Architecture::DenseNet(_) => Some(densenet_legacy(key)),
        Architecture::EfficientNet(config) => match config.variant {
            EfficientNetVariant::MobilenetV2 => mobilenet_v2(key, &config.stage_depths()),
            EfficientNetVariant::EfficientNet => efficientnet(key, &config.stage_depths()),
            _ => Some(key.to_string()),
        },
        Architecture::Vit(_) => Some(vit(key)),
    }
}

fn densenet_legacy(key: &str) -> String {
    if !key.contains("denselayer") {
        return key.to_string();
    }
    let mut renamed = key.to_string();
    for (old, new) in [
        (".norm.1.", ".norm1."),
        (".norm.2.", ".norm2."),
        (".conv.1.", ".conv1."),
        (".conv.2.", ".conv2."),
        (".relu.1.", ".relu1."),
        (".relu.2.", ".relu2."),
    ] {
        renamed = renamed.replace(old, new);
    }
    renamed
}

/// Splits "a.b.rest" into ("a", "b", "rest").
fn split_index(key: &str) -> Option<(usize, &str)> {
    let (index, rest) = key.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

/// features.0.{0,1} and features.{last}.{0,1}: the stem and the head.
fn stem_or_head(feature: usize, last: usize, rest: &str) -> Option<String> {
    let (layer, tail) = split_index(rest)?;
    let name = match (feature, layer) {
        (0, 0) => "conv_stem",
        (0, 1) => "bn1",
        (f, 0) if f == last => "conv_head",
        (f, 1) if f == last => "bn2",
        _ => return None,
    };
    Some(format!("{name}.{tail}"))
}

/// torchvision's MobileNetV2: features.i is the i-th block overall (1-based), `conv.*` inside.
fn mobilenet_v2(key: &str, depths: &[usize]) -> Option<String> {
    if let Some(rest) = key.strip_prefix("classifier.1.") {
        return Some(format!("classifier.{rest}"));
    }
    let (feature, rest) = split_index(key.strip_prefix("features.")?)?;
    let last = depths.iter().sum::<usize>() + 1;
    let Some(body) = rest.strip_prefix("conv.") else {
        return stem_or_head(feature, last, rest);
    };
    let (stage, index) = locate(feature.checked_sub(1)?, depths)?;
    let (part, tail) = body.split_once('.')?;
    let name = match (stage == 0, part) {
        (true, "0") => map_pair(tail, "conv_dw", "bn1")?,
        (true, "1") => format!("conv_pw.{tail}"),
        (true, "2") => format!("bn2.{tail}"),
        (false, "0") => map_pair(tail, "conv_pw", "bn1")?,
        (false, "1") => map_pair(tail, "conv_dw", "bn2")?,
        (false, "2") => format!("conv_pwl.{tail}"),
        (false, "3") => format!("bn3.{tail}"),
        _ => return None,
    };
    Some(format!("blocks.{stage}.{index}.{name}"))
}

/// torchvision's EfficientNet: features.(s+1).j.block.* is blocks.s.j.
fn efficientnet(key: &str, depths: &[usize]) -> Option<String> {
    if let Some(rest) = key.strip_prefix("classifier.1.") {
        return Some(format!("classifier.{rest}"));
    }
    let (feature, rest) = split_index(key.strip_prefix("features.")?)?;
    let last = depths.len() + 1;
    if feature == 0 || feature == last {
        return stem_or_head(feature, last, rest);
    }
    let (index, body) = split_index(rest)?;
    let body = body.strip_prefix("block.")?;
    let stage = feature - 1;
    let (part, tail) = body.split_once('.')?;
    let name = match (stage == 0, part) {
        (true, "0") => map_pair(tail, "conv_dw", "bn1")?,
        (true, "1") => map_se(tail)?,
        (true, "2") => map_pair(tail, "conv_pw", "bn2")?,
        (false, "0") => map_pair(tail, "conv_pw", "bn1")?,
        (false, "1") => map_pair(tail, "conv_dw", "bn2")?,
        (false, "2") => map_se(tail)?,
        (false, "3") => map_pair(tail, "conv_pwl", "bn3")?,
        _ => return None,
    };
    Some(format!("blocks.{stage}.{index}.{name}"))
}

/// "0.weight" -> conv, "1.x" -> norm.
fn map_pair(tail: &str, conv: &str, norm: &str) -> Option<String> {
    let (which, rest) = tail.split_once('.')?;
    match which {
        "0" => Some(format!("{conv}.{rest}")),
        "1" => Some(format!("{norm}.{rest}")),
        _ => None,
    }
}

fn map_se(tail: &str) -> Option<String> {
    if let Some(rest) = tail.strip_prefix("fc1.") {
        Some(format!("se.conv_reduce.{rest}"))
    } else {
        tail.strip_prefix("fc2.").map(|rest| format!("se.conv_expand.{rest}"))
    }
}

/// (stage, index within the stage) of the n-th block overall (0-based).
fn locate(mut block: usize, depths: &[usize]) -> Option<(usize, usize)> {
    for (stage, &depth) in depths.iter().enumerate() {
        if block < depth {
            return Some((stage, block));
        }
        block -= depth;
    }
    None
}

fn vit(key: &str) -> String {
    let mut name = key.to_string();
    for (old, new) in [
        ("class_token", "cls_token"),
        ("conv_proj.", "patch_embed.proj."),
        ("encoder.pos_embedding", "pos_embed"),
        ("encoder.layers.encoder_layer_", "blocks."),
        (".ln_1.", ".norm1."),
        (".ln_2.", ".norm2."),
        (".self_attention.in_proj_weight", ".attn.qkv.weight"),
        (".self_attention.in_proj_bias", ".attn.qkv.bias"),
        (".self_attention.out_proj.", ".attn.proj."),
        (".mlp.0.", ".mlp.fc1."),
        (".mlp.3.", ".mlp.fc2."),
        ("encoder.ln.", "norm."),
        ("heads.head.", "head."),
    ] {
        name = name.replace(old, new);
    }
    name
}
