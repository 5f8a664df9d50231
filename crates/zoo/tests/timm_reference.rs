//! The zoo's models against timm itself: fixtures/make_fixtures.py exported small random
//! configurations (randomised norms and biases, calibrated running statistics) with their
//! eval- and train-mode outputs, updated running statistics and gradients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use medxfer_zoo::{Architecture, Backbone, DenseNetConfig, EfficientNetConfig, ResNetConfig, VitConfig};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// timm's tensors, on the device the models run on.
fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(format!("{name}_ref.safetensors")), &device()).unwrap()
}

/// Where the models run: the CPU, or `MEDXFER_TEST_DEVICE=cuda:N` with a `--features cuda`
/// build on a GPU machine (the same truth checks the CUDA path).
fn device() -> Device {
    match std::env::var("MEDXFER_TEST_DEVICE").as_deref() {
        Err(_) | Ok("cpu") => Device::Cpu,
        Ok(name) => {
            let index = name.strip_prefix("cuda:").and_then(|i| i.parse().ok()).expect("MEDXFER_TEST_DEVICE: cpu or cuda:N");
            Device::new_cuda(index).unwrap()
        }
    }
}

/// max|ours - timm| <= tolerance * max(1, max|timm|): ZOO.md's 1e-4 on the CPU; 5e-4 on a GPU,
/// where batch statistics are reduced in f32 (as PyTorch's CUDA kernels) and cuBLAS sums in
/// another order.
fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor) {
    let (ours, theirs) = (ours.to_device(&Device::Cpu).unwrap(), &theirs.to_device(&Device::Cpu).unwrap());
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shape");
    let difference = common::max_abs_difference(&ours, theirs);
    let scale = common::max_abs(theirs).max(1.0);
    let tolerance = if device().is_cpu() { 1e-4 } else { 5e-4 };
    eprintln!("{what}: relative difference {:.2e}", difference / scale);
    assert!(difference <= tolerance * scale, "{what}: max difference {difference}, scale {scale}");
}

/// Images smaller than a window somewhere in the network are errors that say so and give the
/// fix, never a panic: DenseNet's transitions (candle's pool), ResNet's and ViT's convolutions
/// (the kernels' window check).
#[test]
fn images_too_small_for_a_network_are_errors_naming_the_fix() {
    let architectures = common::paper_fixtures();
    for (name, side) in [("densenet_min", 8), ("resnet_basic_min", 0), ("vit_min", 8)] {
        let architecture = &architectures.iter().find(|(case, _)| *case == name).unwrap().1;
        let model = Backbone::new(name, architecture, 10, &Device::Cpu).unwrap();
        let input = Tensor::zeros((1, 3, side, side), candle_core::DType::F32, &Device::Cpu).unwrap();
        for train in [false, true] {
            let error = model.features_and_logits(&input, train).map(|_| "an output").unwrap_err().to_string();
            assert!(
                error.contains("does not fit") && error.contains("too small") && error.contains("larger"),
                "{name} at {side} px: {error}"
            );
        }
    }
}

fn loaded(name: &str, architecture: &Architecture) -> Backbone {
    let model = Backbone::new(name, architecture, 10, &device()).unwrap();
    let report = model.load_weights(&fixtures().join(format!("{name}.safetensors")), true).unwrap();
    assert!(report.is_exact(), "{name}: {report:?}");
    model
}

#[test]
fn eval_outputs_match_timm() {
    for (name, architecture) in common::paper_fixtures() {
        let model = loaded(name, &architecture);
        let reference = reference(name);
        for suffix in ["", "_rect"] {
            let Some(input) = reference.get(&format!("input{suffix}")) else { continue };
            assert_close(
                &format!("{name} feature_map{suffix}"),
                &model.feature_map(input, false).unwrap(),
                &reference[&format!("feature_map{suffix}")],
            );
            let (features, logits) = model.features_and_logits(input, false).unwrap();
            assert_close(&format!("{name} features{suffix}"), &features, &reference[&format!("features{suffix}")]);
            assert_close(&format!("{name} logits{suffix}"), &logits, &reference[&format!("logits{suffix}")]);
        }
    }
}

#[test]
fn train_mode_outputs_running_statistics_and_gradients_match_timm() {
    for (name, architecture) in common::paper_fixtures() {
        let model = loaded(name, &architecture);
        let reference = reference(name);
        // The forward pass as training runs it: what no backward rule reads is freed on the way.
        let logits = common::train_logits_freeing_unread(&model, &reference["input"]);
        assert_close(&format!("{name} train logits"), &logits, &reference["train_logits"]);
        let mut checked = 0;
        for (key, value) in &reference {
            if let Some(param) = key.strip_prefix("train_state.") {
                assert_close(&format!("{name} {param} after one train step"), model.params().var(param).unwrap().as_tensor(), value);
                checked += 1;
            }
        }
        let expected_statistics = if name.starts_with("vit") { 0 } else { 10 };
        assert!(checked >= expected_statistics, "{name}: only {checked} running statistics");

        let loss = (&logits * &reference["loss_weights"]).unwrap().sum_all().unwrap();
        let grads = loss.backward_releasing().unwrap();
        common::assert_gradients_as_with_the_graph_kept(name, &model, &reference["input"], &reference["loss_weights"], &grads);
        for (key, var) in model.params().trainable_vars() {
            let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: {key} received no gradient"));
            let norm = grad.abs().unwrap().sum_all().unwrap().to_device(&Device::Cpu).unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0, "{name}: {key} has an all-zero gradient");
            if let Some(expected) = reference.get(&format!("grad.{key}")) {
                assert_close(&format!("{name} gradient of {key}"), grad, expected);
            }
        }
    }
}

#[test]
fn the_ten_full_size_backbones_have_timms_parameter_counts_and_shapes() {
    let text = std::fs::read_to_string(fixtures().join("full_size_shapes.json")).unwrap();
    let full: serde_json::Value = serde_json::from_str(&text).unwrap();
    let models = [
        ("resnet18", Architecture::ResNet(ResNetConfig::resnet18())),
        ("resnet34", Architecture::ResNet(ResNetConfig::resnet34())),
        ("resnet50", Architecture::ResNet(ResNetConfig::resnet50())),
        ("densenet121", Architecture::DenseNet(DenseNetConfig::densenet121())),
        ("densenet161", Architecture::DenseNet(DenseNetConfig::densenet161())),
        ("densenet169", Architecture::DenseNet(DenseNetConfig::densenet169())),
        ("mobilenetv2_050", Architecture::EfficientNet(EfficientNetConfig::mobilenetv2(0.5))),
        ("mobilenetv2_100", Architecture::EfficientNet(EfficientNetConfig::mobilenetv2(1.0))),
        ("efficientnet_b0", Architecture::EfficientNet(EfficientNetConfig::efficientnet_b0())),
        ("vit_small_patch16_224", Architecture::Vit(VitConfig::vit_small_patch16_224())),
    ];
    for (name, architecture) in models {
        let model = Backbone::new(name, &architecture, 1000, &Device::Cpu).unwrap();
        assert_eq!(model.params().parameter_count() as u64, full[name]["parameters"].as_u64().unwrap(), "{name}");
        let shapes = full[name]["shapes"].as_object().unwrap();
        let mut expected: Vec<&String> = shapes.keys().filter(|k| !k.ends_with("num_batches_tracked")).collect();
        expected.sort();
        assert_eq!(model.params().names().iter().collect::<Vec<_>>(), expected, "{name}: tensor names");
        for key in expected {
            let dims: Vec<usize> = shapes[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!(model.params().var(key).unwrap().dims(), dims.as_slice(), "{name}: {key}");
        }
        assert_eq!(model.num_features() as u64, full[name]["num_features"].as_u64().unwrap());
    }
}

#[test]
fn a_checkpoint_that_does_not_fit_names_what_is_wrong() {
    let (name, architecture) = &common::paper_fixtures()[0];
    // The bottleneck checkpoint in the basic model: wrong keys and shapes.
    let model = Backbone::new(name, architecture, 10, &device()).unwrap();
    let error = model.load_weights(&fixtures().join("resnet_bottleneck_min.safetensors"), true).unwrap_err().to_string();
    assert!(error.contains("resnet_bottleneck_min.safetensors"), "{error}");
    assert!(error.contains("not in the model") && error.contains("layer1.0.conv3.weight"), "{error}");
    assert!(error.contains("of the wrong shape"), "{error}");

    let dir = std::env::temp_dir().join(format!("medxfer-zoo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(fixtures().join(format!("{name}.safetensors"))).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let error = model.load_weights(&truncated, true).unwrap_err().to_string();
    assert!(error.contains("truncated.safetensors") && error.contains("truncated"), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_replaced_head_is_fresh_seeded_trainable_and_keeps_the_features() {
    let (name, architecture) = &common::paper_fixtures()[0];
    let mut model = loaded(name, architecture);
    let reference = reference(name);
    let features_before = model.features(&reference["input"], false).unwrap();
    model.replace_head(3, 7).unwrap();
    assert_eq!(model.num_classes().unwrap(), 3);
    let (features, logits) = model.features_and_logits(&reference["input"], false).unwrap();
    assert_close("features after the head changed", &features, &features_before);
    assert_eq!(logits.dims(), &[2, 3]);
    // PyTorch's default bound 1/sqrt(fan_in), fan_in = 32 here; the same seed, the same head.
    let weight = model.params().var("fc.weight").unwrap();
    assert_eq!(weight.dims(), &[3, 32]);
    let largest = common::max_abs(weight.as_tensor());
    assert!(largest <= 1.0 / 32f32.sqrt() && largest > 0.5 / 32f32.sqrt(), "{largest}");
    let mut again = loaded(name, architecture);
    again.replace_head(3, 7).unwrap();
    let same = (again.params().var("fc.weight").unwrap().as_tensor() - weight.as_tensor())
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(same, 0.0);
    let names: Vec<String> = model.params().trainable_vars().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"fc.weight".to_string()) && names.contains(&"fc.bias".to_string()));
}

#[test]
fn torchvision_checkpoints_load_under_timms_names_and_give_torchvisions_outputs() {
    let cases = [("tv_mobilenetv2_min", "mobilenetv2_min"), ("tv_efficientnet_min", "efficientnet_min"), ("tv_vit_min", "vit_min")];
    let architectures = common::paper_fixtures();
    for (file, twin) in cases {
        let architecture = &architectures.iter().find(|(name, _)| *name == twin).unwrap().1;
        let model = Backbone::new(file, architecture, 10, &device()).unwrap();
        let report = model.load_weights(&fixtures().join(format!("{file}.safetensors")), true).unwrap();
        assert!(report.is_exact(), "{file}: {report:?}");
        let reference = reference(file);
        let (features, logits) = model.features_and_logits(&reference["input"], false).unwrap();
        assert_close(&format!("{file} features"), &features, &reference["features"]);
        assert_close(&format!("{file} logits"), &logits, &reference["logits"]);
    }
    // Legacy torchvision DenseNet names (norm.1, conv.2, ...).
    let architecture = &architectures.iter().find(|(name, _)| *name == "densenet_min").unwrap().1;
    let model = Backbone::new("densenet_min", architecture, 10, &device()).unwrap();
    model.load_weights(&fixtures().join("densenet_min_legacy.safetensors"), true).unwrap();
    let reference = reference("densenet_min");
    assert_close("legacy densenet logits", &model.features_and_logits(&reference["input"], false).unwrap().1, &reference["logits"]);
}

#[test]
fn a_vit_checkpoint_runs_at_another_image_size_with_timms_resampled_positions() {
    let architecture = Architecture::Vit(VitConfig::new(96, 16, 24, 2, 3));
    let model = Backbone::new("vit_min_96", &architecture, 10, &device()).unwrap();
    model.load_weights(&fixtures().join("vit_min.safetensors"), true).unwrap();
    let reference = reference("vit_min_96");
    assert_close("resampled pos_embed", model.params().var("pos_embed").unwrap().as_tensor(), &reference["pos_embed"]);
    assert_close("logits at 96 px", &model.features_and_logits(&reference["input"], false).unwrap().1, &reference["logits"]);
}

#[test]
fn eval_mode_keeps_no_graph_train_mode_does() {
    let (name, architecture) = &common::paper_fixtures()[2];
    let model = loaded(name, architecture);
    let reference = reference(name);
    let (_, eval_logits) = model.features_and_logits(&reference["input"], false).unwrap();
    let grads = eval_logits.sum_all().unwrap().backward().unwrap();
    assert!(model.params().trainable_vars().iter().all(|(_, var)| grads.get(var.as_tensor()).is_none()));
    let (_, train_logits) = model.features_and_logits(&reference["input"], true).unwrap();
    let grads = train_logits.sum_all().unwrap().backward().unwrap();
    assert!(model.params().trainable_vars().iter().all(|(_, var)| grads.get(var.as_tensor()).is_some()));
}
