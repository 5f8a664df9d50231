//! A backbone the registry does not list, from its hub repo's timm `config.json`: the
//! `architecture` name (with optional `model_args`) picks the family and size, `num_features`
//! and `pretrained_cfg` (mean, std, crop_pct, interpolation, classifier) the rest.

use serde_json::Value;

use crate::convnext::{CONVNEXT_PRESETS, ConvNextConfig, convnext_preset, convnext_unsupported};
use crate::densenet::DenseNetConfig;
use crate::efficientnet::{
    DepthMultiplier, EFFICIENTNET_PRESETS, EfficientNetConfig, Padding, efficientnet_preset, efficientnet_unsupported,
};
use crate::entry::{Architecture, ModelEntry, Preprocessing};
use crate::error::{Error, Result};
use crate::regnet::{REGNET_PRESETS, RegNetConfig, regnet_preset, regnet_unsupported};
use crate::resnet::{BlockAttention, RESNET_PRESETS, ResNetConfig, StemType, resnet_preset, resnet_unsupported};
use crate::swin::{SWIN_PRESETS, SwinConfig, swin_preset, swin_unsupported};
use crate::vit::{GlobalPool, MlpKind, VIT_PRESETS, VitConfig, vit_preset, vit_unsupported};

/// The most classes a pretrained head may have (ImageNet-22k's 21,843 fit).
pub const MAX_CLASSES: usize = 100_000;

/// What [`architecture_from_timm`] understands besides the ViTs (`VIT_PRESETS`), for error
/// messages.
pub const SUPPORTED_ARCHITECTURES: &str = "densenet121/161/169/201";

fn unsupported(name: &str) -> Error {
    let lacking = [
        ("ViT", vit_unsupported(name)),
        ("ResNet", resnet_unsupported(name)),
        ("ConvNeXt", convnext_unsupported(name)),
        ("RegNet", regnet_unsupported(name)),
        ("EfficientNet", efficientnet_unsupported(name)),
        ("Swin", swin_unsupported(name)),
    ];
    if let Some((family, option)) = lacking.into_iter().find_map(|(family, option)| Some((family, option?))) {
        return Error::Config {
            source_name: name.to_string(),
            problem: format!("timm's {name} has an option the zoo's {family} does not build ({option})"),
        };
    }
    Error::Config {
        source_name: name.to_string(),
        problem: format!(
            "architecture '{name}' is not one of the zoo's families; supported: {SUPPORTED_ARCHITECTURES}, {RESNET_PRESETS}, \
             {CONVNEXT_PRESETS}, {REGNET_PRESETS}, {EFFICIENTNET_PRESETS}, {SWIN_PRESETS}, {VIT_PRESETS}"
        ),
    }
}

/// `model_args` that change nothing the zoo builds (dropout rates; regularisation in training
/// only) or that the entry reads elsewhere (`num_classes`).
const HARMLESS_ARGS: [&str; 8] =
    ["drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate", "patch_drop_rate", "num_classes", "weight_init"];

/// A ViT preset with a config.json's `model_args` (timm's `VisionTransformer` keywords).
fn vit_with_args(name: &str, mut config: VitConfig, args: Option<&serde_json::Map<String, Value>>) -> Result<VitConfig> {
    let reader = ModelArgs { name };
    for (key, value) in args.into_iter().flatten() {
        match key.as_str() {
            "img_size" => config.img_size = reader.square_side(key, value, "ViT")?,
            "patch_size" => config.patch_size = reader.whole(key, value)?,
            "embed_dim" => config.embed_dim = reader.whole(key, value)?,
            "depth" => config.depth = reader.whole(key, value)?,
            "num_heads" => config.num_heads = reader.whole(key, value)?,
            "reg_tokens" => config.reg_tokens = reader.whole(key, value)?,
            "mlp_ratio" => config.mlp_ratio = reader.number(key, value)?,
            "init_values" => config.init_values = value.as_f64(),
            "qkv_bias" => config.qkv_bias = reader.flag(key, value)?,
            "class_token" => config.class_token = reader.flag(key, value)?,
            "no_embed_class" => config.no_embed_class = reader.flag(key, value)?,
            "pre_norm" => config.pre_norm = reader.flag(key, value)?,
            "dynamic_img_size" => config.dynamic_img_size = reader.flag(key, value)?,
            "fc_norm" => config.fc_norm = value.as_bool(),
            "global_pool" => {
                config.global_pool = match value.as_str() {
                    Some("token") => GlobalPool::Token,
                    Some("avg") => GlobalPool::Avg,
                    Some("") => GlobalPool::None,
                    _ => {
                        return Err(
                            reader.bad(format!("model_args.global_pool is {value}; the zoo pools by \"token\", \"avg\" or \"\" (none)"))
                        );
                    }
                }
            }
            "mlp_layer" | "act_layer" => match value.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("swiglupacked" | "swiglu_packed" | "silu") => config.mlp = MlpKind::SwigluPacked,
                Some("mlp" | "gelu") => {}
                _ => {
                    return Err(reader.bad(format!("model_args.{key} is {value}; the zoo knows Mlp with GELU and SwiGLUPacked with SiLU")));
                }
            },
            "dynamic_img_pad" if value.as_bool() == Some(false) => {}
            "final_norm" if value.is_boolean() => {}
            _ => reader.unknown(key, value, "ViT")?,
        }
    }
    Ok(config)
}

/// Reads the values of a config.json's `model_args`, naming the model in what it refuses.
struct ModelArgs<'a> {
    name: &'a str,
}

impl ModelArgs<'_> {
    fn bad(&self, problem: String) -> Error {
        Error::Config { source_name: self.name.to_string(), problem }
    }

    fn whole(&self, key: &str, value: &Value) -> Result<usize> {
        value
            .as_u64()
            .and_then(|u| usize::try_from(u).ok())
            .ok_or_else(|| self.bad(format!("model_args.{key} is {value}; expected a whole number")))
    }

    fn number(&self, key: &str, value: &Value) -> Result<f64> {
        value.as_f64().ok_or_else(|| self.bad(format!("model_args.{key} is {value}; expected a number")))
    }

    /// timm's image size: a side or (height, width); the zoo's models take square images.
    fn square_side(&self, key: &str, value: &Value, family: &str) -> Result<usize> {
        match value.as_array().map(Vec::as_slice) {
            Some([h, w]) if h == w => self.whole(key, h),
            Some(_) => Err(self.bad(format!("model_args.{key} is {value}; the zoo's {family}s take square inputs"))),
            None => self.whole(key, value),
        }
    }

    fn flag(&self, key: &str, value: &Value) -> Result<bool> {
        value.as_bool().ok_or_else(|| self.bad(format!("model_args.{key} is {value}; expected true or false")))
    }

    fn four(&self, key: &str, value: &Value) -> Result<[usize; 4]> {
        let list = value.as_array().ok_or_else(|| self.bad(format!("model_args.{key} is {value}; expected a list of four")))?;
        let list: Vec<usize> = list.iter().map(|v| self.whole(key, v)).collect::<Result<_>>()?;
        list.try_into().map_err(|_| self.bad(format!("model_args.{key} is {value}; expected four stages")))
    }

    fn unknown(&self, key: &str, value: &Value, family: &str) -> Result<()> {
        if HARMLESS_ARGS.contains(&key) || (key == "in_chans" && value.as_u64() == Some(3)) {
            return Ok(());
        }
        Err(self.bad(format!("model_args.{key} = {value} is not an option the zoo's {family} has")))
    }
}

/// A ResNet preset with a config.json's `model_args` (timm's `ResNet` keywords).
fn resnet_with_args(name: &str, mut config: ResNetConfig, args: Option<&serde_json::Map<String, Value>>) -> Result<ResNetConfig> {
    let reader = ModelArgs { name };
    for (key, value) in args.into_iter().flatten() {
        match key.as_str() {
            "layers" => config.layers = reader.four(key, value)?,
            "channels" => config.channels = reader.four(key, value)?,
            "stem_width" => config.stem_width = reader.whole(key, value)?,
            "cardinality" => config.cardinality = reader.whole(key, value)?,
            "base_width" => config.base_width = reader.whole(key, value)?,
            "avg_down" => config.avg_down = reader.flag(key, value)?,
            "replace_stem_pool" => config.replace_stem_pool = reader.flag(key, value)?,
            "stem_type" => {
                config.stem_type = match value.as_str() {
                    Some("") => StemType::Single,
                    Some("deep") => StemType::Deep,
                    Some("deep_tiered") => StemType::DeepTiered,
                    _ => {
                        return Err(
                            reader.bad(format!("model_args.stem_type is {value}; the zoo builds \"\", \"deep\" and \"deep_tiered\""))
                        );
                    }
                }
            }
            "block_args" => {
                for (inner, setting) in value.as_object().into_iter().flatten() {
                    match (inner.as_str(), setting.as_str()) {
                        ("attn_layer", Some("se")) => config.attn_layer = Some(BlockAttention::Se),
                        ("attn_layer", None) if setting.is_null() => config.attn_layer = None,
                        _ => {
                            return Err(
                                reader.bad(format!("model_args.block_args.{inner} = {setting} is not an option the zoo's ResNet has"))
                            );
                        }
                    }
                }
            }
            "global_pool" if value.as_str() == Some("avg") => {}
            _ => reader.unknown(key, value, "ResNet")?,
        }
    }
    Ok(config)
}

/// A ConvNeXt preset with a config.json's `model_args` (timm's `ConvNeXt` keywords).
fn convnext_with_args(name: &str, mut config: ConvNextConfig, args: Option<&serde_json::Map<String, Value>>) -> Result<ConvNextConfig> {
    let reader = ModelArgs { name };
    for (key, value) in args.into_iter().flatten() {
        match key.as_str() {
            "depths" => config.depths = reader.four(key, value)?,
            "dims" => config.dims = reader.four(key, value)?,
            "conv_mlp" => config.conv_mlp = reader.flag(key, value)?,
            "use_grn" => config.use_grn = reader.flag(key, value)?,
            "ls_init_value" => config.layer_scale = !value.is_null(),
            "norm_eps" if value.is_null() => {}
            "norm_eps" => config.norm_eps = reader.number(key, value)?,
            "kernel_sizes" if value.as_u64() == Some(7) => {}
            "patch_size" if value.as_u64() == Some(4) => {}
            "stem_type" if value.as_str() == Some("patch") => {}
            "conv_bias" if value.as_bool() == Some(true) => {}
            "head_norm_first" if value.as_bool() == Some(false) => {}
            "act_layer" if value.as_str() == Some("gelu") => {}
            "global_pool" if value.as_str() == Some("avg") => {}
            "head_hidden_size" | "norm_layer" if value.is_null() => {}
            // An initialisation scale: nothing a loaded model computes.
            "head_init_scale" => {}
            "output_stride" if value.as_u64() == Some(32) => {}
            _ => reader.unknown(key, value, "ConvNeXt")?,
        }
    }
    Ok(config)
}

/// A RegNet preset with a config.json's `model_args` (timm passes them on as `RegNetCfg`
/// fields).
fn regnet_with_args(name: &str, mut config: RegNetConfig, args: Option<&serde_json::Map<String, Value>>) -> Result<RegNetConfig> {
    let reader = ModelArgs { name };
    for (key, value) in args.into_iter().flatten() {
        match key.as_str() {
            "depth" => config.depth = reader.whole(key, value)?,
            "w0" => config.w0 = reader.whole(key, value)?,
            "group_size" => config.group_size = reader.whole(key, value)?,
            "stem_width" => config.stem_width = reader.whole(key, value)?,
            "wa" => config.wa = reader.number(key, value)?,
            "wm" => config.wm = reader.number(key, value)?,
            "bottle_ratio" => config.bottle_ratio = reader.number(key, value)?,
            "se_ratio" => config.se_ratio = reader.number(key, value)?,
            "group_min_ratio" => config.group_min_ratio = reader.number(key, value)?,
            "global_pool" if value.as_str() == Some("avg") => {}
            "output_stride" if value.as_u64() == Some(32) => {}
            _ => reader.unknown(key, value, "RegNet")?,
        }
    }
    Ok(config)
}

/// A MobileNetV2/EfficientNet(V2) preset with a config.json's `model_args` (the keywords timm's
/// entry points pass on to their generator).
fn efficientnet_with_args(
    name: &str,
    mut config: EfficientNetConfig,
    args: Option<&serde_json::Map<String, Value>>,
) -> Result<EfficientNetConfig> {
    let reader = ModelArgs { name };
    for (key, value) in args.into_iter().flatten() {
        match key.as_str() {
            "channel_multiplier" => config.channel_multiplier = reader.number(key, value)?,
            "depth_multiplier" => {
                config.depth_multiplier = match value.as_array() {
                    Some(list) => DepthMultiplier::PerStage(list.iter().map(|v| reader.number(key, v)).collect::<Result<_>>()?),
                    None => DepthMultiplier::Uniform(reader.number(key, value)?),
                }
            }
            "bn_eps" => config.bn_eps = reader.number(key, value)?,
            "fix_stem_head" => config.fix_stem_head = reader.flag(key, value)?,
            "pad_type" => {
                config.padding = match value.as_str() {
                    Some("") => Padding::Symmetric,
                    Some("same") => Padding::Same,
                    _ => return Err(reader.bad(format!("model_args.pad_type is {value}; the zoo pads \"\" (PyTorch) or \"same\""))),
                }
            }
            "global_pool" if value.as_str() == Some("avg") => {}
            "output_stride" if value.as_u64() == Some(32) => {}
            _ => reader.unknown(key, value, "EfficientNet")?,
        }
    }
    Ok(config)
}

/// A Swin preset with a config.json's `model_args` (timm's `SwinTransformer` keywords).
fn swin_with_args(name: &str, mut config: SwinConfig, args: Option<&serde_json::Map<String, Value>>) -> Result<SwinConfig> {
    let reader = ModelArgs { name };
    let list = |key: &str, value: &Value| -> Result<Vec<usize>> {
        let items = value.as_array().ok_or_else(|| reader.bad(format!("model_args.{key} is {value}; expected a list")))?;
        items.iter().map(|v| reader.whole(key, v)).collect()
    };
    for (key, value) in args.into_iter().flatten() {
        match key.as_str() {
            "img_size" => config.img_size = reader.square_side(key, value, "Swin")?,
            "patch_size" => config.patch_size = reader.whole(key, value)?,
            "window_size" => config.window_size = reader.whole(key, value)?,
            "embed_dim" => config.embed_dim = reader.whole(key, value)?,
            "depths" => config.depths = list(key, value)?,
            "num_heads" => config.num_heads = list(key, value)?,
            "mlp_ratio" => {
                config.mlp_ratio =
                    value.as_f64().ok_or_else(|| reader.bad(format!("model_args.mlp_ratio is {value}; expected a number")))?
            }
            "qkv_bias" | "strict_img_size" if value.as_bool() == Some(true) => {}
            "always_partition" if value.as_bool() == Some(false) => {}
            "global_pool" if value.as_str() == Some("avg") => {}
            _ => reader.unknown(key, value, "Swin")?,
        }
    }
    Ok(config)
}

/// The architecture of a timm model name, with timm's `model_args` overrides.
pub fn architecture_from_timm(name: &str, model_args: Option<&Value>) -> Result<Architecture> {
    let args = model_args.and_then(Value::as_object);
    let usize_list = |key: &str| -> Option<Vec<usize>> {
        args?.get(key)?.as_array()?.iter().map(|v| v.as_u64().and_then(|u| usize::try_from(u).ok())).collect()
    };
    let usize_arg = |key: &str| -> Option<usize> { args?.get(key)?.as_u64().and_then(|u| usize::try_from(u).ok()) };
    let architecture = if let Some(config) = resnet_preset(name) {
        Architecture::ResNet(resnet_with_args(name, config, args)?)
    } else if let Some(config) = convnext_preset(name) {
        Architecture::ConvNext(convnext_with_args(name, config, args)?)
    } else if let Some(config) = regnet_preset(name) {
        Architecture::RegNet(regnet_with_args(name, config, args)?)
    } else if let Some(depth) = name.strip_prefix("densenet") {
        let mut config = match depth {
            "121" => DenseNetConfig::densenet121(),
            "161" => DenseNetConfig::densenet161(),
            "169" => DenseNetConfig::densenet169(),
            "201" => DenseNetConfig { growth_rate: 32, block_config: vec![6, 12, 48, 32], bn_size: 4 },
            _ => return Err(unsupported(name)),
        };
        if let Some(growth) = usize_arg("growth_rate") {
            config.growth_rate = growth;
        }
        if let Some(blocks) = usize_list("block_config") {
            config.block_config = blocks;
        }
        Architecture::DenseNet(config)
    } else if let Some(config) = swin_preset(name) {
        Architecture::Swin(swin_with_args(name, config, args)?)
    } else if let Some(config) = efficientnet_preset(name) {
        Architecture::EfficientNet(efficientnet_with_args(name, config, args)?)
    } else if let Some(config) = vit_preset(name) {
        Architecture::Vit(vit_with_args(name, config, args)?)
    } else {
        return Err(unsupported(name));
    };
    Ok(architecture)
}

/// A registry entry for hub repo `repo_id` from the text of its `config.json`.
pub fn entry_from_timm_config(repo_id: &str, config_json: &str) -> Result<ModelEntry> {
    let bad = |problem: String| Error::Config { source_name: format!("{repo_id}/config.json"), problem };
    let config: Value = serde_json::from_str(config_json).map_err(|e| bad(format!("not JSON: {e}")))?;
    let name = config["architecture"].as_str().ok_or_else(|| bad("has no 'architecture'".into()))?;
    let mut architecture = architecture_from_timm(name, config.get("model_args")).map_err(|e| match e {
        Error::Config { problem, .. } => bad(problem),
        other => other,
    })?;
    let pretrained = &config["pretrained_cfg"];
    // timm builds a Swin for its pretrained_cfg's input size (build_model_with_cfg sets img_size
    // from it unless model_args name one): its windows and masks depend on it.
    if let Architecture::Swin(swin) = &mut architecture
        && config["model_args"].get("img_size").is_none()
        && let Some(side) = pretrained["input_size"].as_array().and_then(|a| a.get(2)).and_then(Value::as_u64)
    {
        swin.img_size = usize::try_from(side).unwrap_or(usize::MAX);
    }
    let num_classes = config["num_classes"].as_u64().or_else(|| pretrained["num_classes"].as_u64()).unwrap_or(1000);
    let num_classes = usize::try_from(num_classes).unwrap_or(usize::MAX);
    let triple = |key: &str, default: [f64; 3]| -> [f64; 3] {
        pretrained[key].as_array().and_then(|a| Some([a.first()?.as_f64()?, a.get(1)?.as_f64()?, a.get(2)?.as_f64()?])).unwrap_or(default)
    };
    if num_classes > MAX_CLASSES {
        return Err(bad(format!("num_classes is {num_classes}; expected 0 (no pretrained head) to {MAX_CLASSES}")));
    }
    architecture.check().map_err(bad)?;
    if num_classes == 0 && !architecture.builds_headless() {
        return Err(bad("num_classes is 0; only the ViT family is built without a pretrained head".into()));
    }
    let crop = pretrained["input_size"].as_array().and_then(|a| a.get(2)).and_then(Value::as_u64).unwrap_or(224);
    let crop = usize::try_from(crop)
        .ok()
        .filter(|c| (1..=1 << 14).contains(c))
        .ok_or_else(|| bad(format!("pretrained_cfg.input_size's side is {crop}; expected 1 to 16384")))?;
    let crop_pct = pretrained["crop_pct"].as_f64().unwrap_or(0.875);
    if !(crop_pct.is_finite() && crop_pct > 0.0 && crop_pct <= 1.0) {
        return Err(bad(format!("pretrained_cfg.crop_pct is {crop_pct}; expected more than 0, at most 1")));
    }
    let feature_dim = architecture.num_features();
    if let Some(stated) = config["num_features"].as_u64()
        && stated as usize != feature_dim
    {
        return Err(bad(format!("num_features is {stated} but {name} gives {feature_dim}")));
    }
    let entry = ModelEntry {
        // The hub id, not the architecture: `timm/resnet50.tv_in1k` is another checkpoint than
        // the registry's `resnet50`, and every table and folder must tell them apart.
        name: repo_id.to_string(),
        paper_name: name.to_string(),
        hub: repo_id.to_string(),
        feature_dim,
        head: architecture.head_key().to_string(),
        num_classes,
        preprocessing: Preprocessing {
            mean: triple("mean", [0.485, 0.456, 0.406]),
            std: triple("std", [0.229, 0.224, 0.225]),
            // timm's eval transform: resize to floor(crop / crop_pct), then centre-crop.
            resize: (crop as f64 / crop_pct).floor() as usize,
            crop,
            // timm's `resolve_data_config` default when the config names none.
            interpolation: pretrained["interpolation"].as_str().unwrap_or("bicubic").to_string(),
        },
        architecture,
    };
    entry.preprocessing.check().map_err(bad)?;
    Ok(entry)
}
