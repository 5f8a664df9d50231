//! Grad-CAM against PyTorch's autograd on timm's models: fixtures/make_grad_cam_fixtures.py
//! took the gradient of each image's class score with respect to the target layer (a ConvNet's
//! and Swin's `forward_features`, a ViT's `blocks[-1].norm1` through a hook, as
//! pytorch-grad-cam's recipe) in float64, and wrote the maps. Every family and head the zoo
//! has: mean-pooled linear heads (ResNet, DenseNet, MobileNetV2, EfficientNet, RegNet),
//! ConvNeXt's normed head, Swin's token grid, ViTs pooled by the class token, by the patch mean
//! after registers, with LayerScale, and distilled (two heads).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use medxfer_zoo::{Architecture, Backbone, architecture_from_timm};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("grad_cam_ref.safetensors"), &Device::Cpu).unwrap()
}

/// A case of convnet/ or vit/ as its published config.json describes it.
fn published(folder: &str, name: &str) -> Architecture {
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join(folder).join("cases.json")).unwrap()).unwrap();
    let config = &cases[name]["config_json"];
    let mut architecture = architecture_from_timm(config["architecture"].as_str().unwrap(), config.get("model_args")).unwrap();
    if let (Architecture::Vit(vit), Some(embedding)) = (&mut architecture, cases[name].get("embedding")) {
        vit.embedding = serde_json::from_value(embedding.clone()).unwrap();
    }
    architecture
}

/// Each case: its model with the fixture's weights, and the input the script used.
fn cases() -> Vec<(String, Backbone, Tensor)> {
    let convnet_input = reference()["convnet_input"].clone();
    let fixture_input = |path: PathBuf| candle_core::safetensors::load(path, &Device::Cpu).unwrap()["input"].clone();
    let mut cases = Vec::new();
    for (name, architecture) in common::paper_fixtures() {
        if name == "resnet_bottleneck_min" {
            continue;
        }
        let model = Backbone::load(name, &architecture, 10, &fixtures().join(format!("{name}.safetensors")), &Device::Cpu).unwrap();
        let input = if name == "vit_min" { fixture_input(fixtures().join("vit_min_ref.safetensors")) } else { convnet_input.clone() };
        cases.push((name.to_string(), model, input));
    }
    for (folder, name) in [
        ("convnet", "convnext_atto_like"),
        ("convnet", "regnety_like"),
        ("convnet", "swin_like"),
        ("vit", "gap_like"),
        ("vit", "deit3_like"),
        ("vit", "deit_distilled_like"),
    ] {
        let weights = fixtures().join(folder).join(format!("{name}.safetensors"));
        let model = Backbone::load(name, &published(folder, name), 10, &weights, &Device::Cpu).unwrap();
        let input = if folder == "vit" || name == "swin_like" {
            fixture_input(fixtures().join(folder).join(format!("{name}_ref.safetensors")))
        } else {
            convnet_input.clone()
        };
        cases.push((name.to_string(), model, input));
    }
    cases
}

fn classes_of(reference: &HashMap<String, Tensor>, name: &str) -> Vec<u32> {
    reference[&format!("{name}.classes")].to_dtype(DType::U32).unwrap().to_vec1().unwrap()
}

#[test]
fn maps_are_pytorchs_for_every_family_and_head() {
    let reference = reference();
    let cases = cases();
    assert_eq!(cases.len(), 11);
    for (name, model, input) in &cases {
        let classes = classes_of(&reference, name);
        let ours = model.grad_cam(input, &classes).unwrap();
        let theirs = &reference[&format!("{name}.cam")];
        assert_eq!(ours.dims(), theirs.dims(), "{name}: shape");
        let scale = common::max_abs(theirs);
        let difference = common::max_abs_difference(&ours, theirs);
        eprintln!("{name}: {:?} map, max {scale:.4}, relative difference {:.2e}", ours.dims(), difference / scale);
        assert!(scale > 0.0 && difference <= 1e-4 * scale, "{name}: max difference {difference}, largest value {scale}");
    }
}

/// The map is the class's: another class gives another map (a map that ignored the class, or
/// took the predicted one, would pass the test above only where the fixture's class was it).
#[test]
fn another_class_gives_another_map() {
    let reference = reference();
    let (name, model, input) = &cases()[0];
    let classes = classes_of(&reference, name);
    let others: Vec<u32> = classes.iter().map(|c| (c + 1) % 10).collect();
    let difference = common::max_abs_difference(model.grad_cam(input, &others).unwrap(), &reference[&format!("{name}.cam")]);
    assert!(difference > 1e-3 * common::max_abs(&reference[&format!("{name}.cam")]), "{name}: {difference}");
}

#[test]
fn a_class_per_image_of_the_models_classes_is_required() {
    let (name, model, input) = &cases()[0];
    let error = model.grad_cam(input, &[1]).unwrap_err().to_string();
    assert!(error.contains(name.as_str()) && error.contains("1 classes for 2 images"), "{error}");
    let error = model.grad_cam(input, &[1, 10]).unwrap_err().to_string();
    assert!(error.contains("class 10 of a model with 10 classes"), "{error}");
}
