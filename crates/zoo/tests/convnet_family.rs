//! The ConvNet families beside the paper's ten against timm: fixtures/make_convnet_fixtures.py
//! exported small random models of each family and option (ResNet-D's deep stem and
//! average-pool downsample, the tiered stem, ResNeXt's groups, SE blocks on both block kinds,
//! the wide ResNets, the convolutional stem pool; ConvNeXt v1 and v2 with linear and 1x1-conv
//! MLPs; RegNet X and Y; EfficientNetV2's conv-BN-act and edge-residual blocks, with PyTorch's
//! padding and with TensorFlow's "SAME" at 3x3 and 5x5, stride 2, even and odd sides; Swin with
//! shifted windows, padded windows and windows clamped to small grids), each with the
//! config.json its hub would publish. The zoo builds each from that config, and must give timm's
//! feature maps, features and logits (a square input and, but for Swin, an odd-sided rectangle),
//! and in train mode its logits, running statistics and every parameter's gradient. Full-size
//! presets are checked against timm's parameter counts and tensor shapes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use medxfer_zoo::{Architecture, Backbone, architecture_from_timm};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/convnet")
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(format!("{name}_ref.safetensors")), &Device::Cpu).unwrap()
}

/// max|ours - timm| <= 1e-4 * max(1, max|timm|).
fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shape");
    let difference = common::max_abs_difference(ours, theirs);
    let scale = common::max_abs(theirs).max(1.0);
    assert!(difference <= 1e-4 * scale, "{what}: max difference {difference}, scale {scale}");
}

/// A state dict's (name, shape) pairs as the fixture script wrote them, sorted, without
/// PyTorch's `num_batches_tracked` counters.
fn expected_tensors(shapes: &Value) -> Vec<(String, Vec<usize>)> {
    let mut expected: Vec<(String, Vec<usize>)> = shapes
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, v)| (k.clone(), v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()))
        .collect();
    expected.sort();
    expected
}

/// The model's (name, shape) pairs, sorted.
fn tensors_of(model: &Backbone) -> Vec<(String, Vec<usize>)> {
    model.params().names().into_iter().map(|n| (n.clone(), model.params().var(&n).unwrap().dims().to_vec())).collect()
}

fn published(case: &Value) -> Architecture {
    let config = &case["config_json"];
    architecture_from_timm(config["architecture"].as_str().unwrap(), config.get("model_args")).unwrap()
}

#[test]
fn every_case_gives_timms_outputs_running_statistics_and_gradients() {
    let cases = json("cases.json");
    for (name, case) in cases.as_object().unwrap() {
        let architecture = published(case);
        assert_eq!(architecture.num_features() as u64, case["config_json"]["num_features"].as_u64().unwrap(), "{name}: num_features");
        let model = Backbone::load(name, &architecture, 10, &fixtures().join(format!("{name}.safetensors")), &Device::Cpu).unwrap();
        assert_eq!(model.params().parameter_count() as u64, case["parameters"].as_u64().unwrap(), "{name}: parameters");
        let reference = reference(name);
        // Swin takes its img_size only: its cases have no rectangle.
        for suffix in ["", "_rect"] {
            let Some(input) = reference.get(&format!("input{suffix}")) else { continue };
            assert_close(
                &format!("{name} feature map{suffix}"),
                &model.feature_map(input, false).unwrap(),
                &reference[&format!("feature_map{suffix}")],
            );
            let (features, logits) = model.features_and_logits(input, false).unwrap();
            assert_close(&format!("{name} features{suffix}"), &features, &reference[&format!("features{suffix}")]);
            assert_close(&format!("{name} logits{suffix}"), &logits, &reference[&format!("logits{suffix}")]);
        }
        // Train mode: batch statistics, the running estimates updated, the fixed loss's gradients
        // (the fixture's pass ran in float64).
        // The forward pass as training runs it: what no backward rule reads is freed on the way.
        let logits = common::train_logits_freeing_unread(&model, &reference["input"]);
        assert_close(&format!("{name} train logits"), &logits, &reference["train_logits"]);
        for (key, value) in reference.iter().filter_map(|(k, v)| Some((k.strip_prefix("train_state.")?, v))) {
            assert_close(&format!("{name} {key} after one train pass"), model.params().var(key).unwrap().as_tensor(), value);
        }
        let grads = (&logits * &reference["loss_weights"]).unwrap().sum_all().unwrap().backward_releasing().unwrap();
        common::assert_gradients_as_with_the_graph_kept(name, &model, &reference["input"], &reference["loss_weights"], &grads);
        for key in case["gradients"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()) {
            let var = model.params().var(key).unwrap_or_else(|| panic!("{name}: no {key}"));
            assert_close(&format!("{name} gradient of {key}"), grads.get(var.as_tensor()).unwrap(), &reference[&format!("grad.{key}")]);
        }
        for (key, var) in model.params().trainable_vars() {
            let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: {key} got no gradient"));
            let norm = grad.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0, "{name}: {key} has an all-zero gradient");
        }
    }
}

/// timm's parameter counts and tensors (names and shapes) for full-size presets, each built by
/// its timm name.
#[test]
fn full_size_presets_have_timms_tensors() {
    let full = json("full_size.json");
    for (name, truth) in full.as_object().unwrap() {
        let architecture = architecture_from_timm(name, None).unwrap();
        let model = Backbone::new(name, &architecture, 1000, &Device::Cpu).unwrap();
        assert_eq!(tensors_of(&model), expected_tensors(&truth["shapes"]), "{name}: tensors");
        assert_eq!(model.params().parameter_count() as u64, truth["parameters"].as_u64().unwrap(), "{name}: parameters");
        assert_eq!(model.num_features() as u64, truth["num_features"].as_u64().unwrap(), "{name}: num_features");
    }
}

/// torchvision's ResNet-50, ResNeXt and wide ResNets have the zoo's tensor names and shapes
/// for the same timm names, so their checkpoints (and state dicts saved from them, as
/// RadImageNet's ResNet-50) load as they are.
#[test]
fn torchvisions_resnext_and_wide_resnets_have_the_zoos_tensors() {
    let torchvision = json("torchvision_shapes.json");
    for (name, shapes) in torchvision.as_object().unwrap() {
        let architecture = architecture_from_timm(name, None).unwrap();
        let model = Backbone::new(name, &architecture, 1000, &Device::Cpu).unwrap();
        assert_eq!(tensors_of(&model), expected_tensors(shapes), "{name}");
    }
}

#[test]
fn options_the_zoo_lacks_are_refused_by_name() {
    for (name, args, expected) in [
        ("ecaresnet50d", None, "attn_layer eca"),
        ("convnext_tiny_hnf", None, "head_norm_first"),
        ("resnet50d", Some(serde_json::json!({"block_args": {"attn_layer": "cbam"}})), "attn_layer = \"cbam\""),
        ("convnext_tiny", Some(serde_json::json!({"kernel_sizes": 5})), "kernel_sizes = 5"),
        ("resnet18", Some(serde_json::json!({"cardinality": 4})), "basic blocks take neither cardinality"),
        ("gc_efficientnetv2_rw_t", None, "se_layer=gc"),
        ("mixnet_s", None, "generator _gen_mixnet_s"),
        ("tf_efficientnetv2_s", Some(serde_json::json!({"pad_type": "valid"})), "pad_type is \"valid\""),
        ("efficientnetv2_rw_m", Some(serde_json::json!({"depth_multiplier": [1.2, 1.6]})), "2 values for 6 stages"),
    ] {
        let error = architecture_from_timm(name, args.as_ref())
            .and_then(|a| a.check().map(|()| a).map_err(|problem| medxfer_zoo::Error::Config { source_name: name.into(), problem }))
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{name}: {error}");
    }
}

/// The registry's `imagenet` group (models/imagenet/, written by the fixture script) builds each
/// model as its timm name and its hub repo's config.json do, with timm's tensors.
#[test]
fn the_imagenet_registry_group_builds_timms_models() {
    let registry = medxfer_zoo::Registry::load_default().unwrap();
    let group = &registry.groups()["imagenet"];
    assert!(group.len() >= 12, "{} entries", group.len());
    let full = json("full_size.json");
    for entry in group {
        let timm_name = entry.hub.trim_start_matches("timm/");
        assert_eq!(entry.architecture, architecture_from_timm(timm_name, None).unwrap(), "{}", entry.name);
        let config = serde_json::json!({
            "architecture": entry.name,
            "num_classes": entry.num_classes,
            "pretrained_cfg": {"input_size": [3, entry.preprocessing.crop, entry.preprocessing.crop]},
        });
        let from_hub = medxfer_zoo::entry_from_timm_config(&entry.hub, &config.to_string()).unwrap();
        assert_eq!(from_hub.architecture, entry.architecture, "{}", entry.name);
        let truth = &full[entry.name.as_str()];
        assert_eq!(entry.architecture.num_features() as u64, truth["num_features"].as_u64().unwrap(), "{}", entry.name);
        let model = Backbone::new(&entry.name, &entry.architecture, entry.num_classes, &Device::Cpu).unwrap();
        assert_eq!(model.params().parameter_count() as u64, truth["parameters"].as_u64().unwrap(), "{}", entry.name);
    }
}

/// A Swin from the hub is built for its pretrained_cfg's input size, as timm builds it.
#[test]
fn a_hub_swin_takes_its_pretrained_input_size() {
    let config = serde_json::json!({
        "architecture": "swin_tiny_patch4_window7_224",
        "num_classes": 1000,
        "pretrained_cfg": {"input_size": [3, 256, 256], "crop_pct": 1.0, "interpolation": "bicubic"}
    });
    let entry = medxfer_zoo::entry_from_timm_config("someone/swin_tiny_256", &config.to_string()).unwrap();
    let Architecture::Swin(swin) = &entry.architecture else { panic!("{:?}", entry.architecture) };
    assert_eq!((swin.img_size, entry.preprocessing.crop, entry.feature_dim, entry.head.as_str()), (256, 256, 768, "head.fc"));
    // A model takes its img_size only, and says so.
    let small = Architecture::Swin(medxfer_zoo::SwinConfig { img_size: 64, embed_dim: 12, ..swin.clone() });
    let model = Backbone::new("swin", &small, 3, &Device::Cpu).unwrap();
    let error = model.features(&Tensor::zeros((1, 3, 96, 96), candle_core::DType::F32, &Device::Cpu).unwrap(), false).unwrap_err();
    assert!(error.to_string().contains("takes 64x64 images only"), "{error}");
}

/// Every RegNet preset's stages (widths, depths, group widths) as timm resolves them from the
/// design-space parameters: the float32 width rule, the quantisation, torchvision's rounding for
/// the `_tv` models.
#[test]
fn regnet_presets_resolve_timms_stages() {
    let stages = json("regnet_stages.json");
    assert!(stages.as_object().unwrap().len() >= 30);
    for (name, truth) in stages.as_object().unwrap() {
        let config = medxfer_zoo::regnet_preset(name).unwrap_or_else(|| panic!("{name}: no preset"));
        let ours: Vec<[u64; 3]> = config.stages().unwrap().iter().map(|s| [s.width as u64, s.depth as u64, s.group_size as u64]).collect();
        let theirs: Vec<[u64; 3]> = serde_json::from_value(truth.clone()).unwrap();
        assert_eq!(ours, theirs, "{name}");
    }
}
