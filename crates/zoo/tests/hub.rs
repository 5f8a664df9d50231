//! Weights through the hub path, against a fake cache directory laid out as hf-hub lays it out
//! (`models--org--name/refs/main` holding a revision, `snapshots/<rev>/model.safetensors`), with
//! no network.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use medxfer_zoo::{Architecture, BlockKind, HubOptions, ModelEntry, Preprocessing, ResNetConfig, WEIGHTS_FILE, hub_file};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fake_cache(root: &Path, repo: &str, revision: &str, file: &Path) {
    let folder = root.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs/main"), revision).unwrap();
    let snapshot = folder.join("snapshots").join(revision);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::copy(file, snapshot.join(WEIGHTS_FILE)).unwrap();
}

#[test]
fn a_cached_hub_model_loads_offline() {
    let cache = std::env::temp_dir().join(format!("medxfer-hub-{}", std::process::id()));
    let repo = "timm/resnet_basic_min.test_in1k";
    fake_cache(&cache, repo, "0123abcd", &fixtures().join("resnet_basic_min.safetensors"));
    let options = HubOptions { cache_dir: Some(cache.clone()), offline: true, progress: false };
    let path = hub_file(repo, WEIGHTS_FILE, &options).unwrap();
    assert!(path.ends_with("snapshots/0123abcd/model.safetensors"), "{}", path.display());

    let entry = ModelEntry {
        name: "resnet_basic_min".into(),
        paper_name: "test".into(),
        hub: repo.into(),
        feature_dim: 32,
        head: "fc".into(),
        num_classes: 10,
        architecture: Architecture::ResNet(ResNetConfig { block: BlockKind::Basic, layers: [1, 1, 1, 1], channels: [64, 8, 16, 32] }),
        preprocessing: Preprocessing { mean: [0.5; 3], std: [0.5; 3], resize: 256, crop: 224, interpolation: "bilinear".into() },
    };
    let model = medxfer_zoo::pretrained(&entry, &options, &Device::Cpu).unwrap();
    let reference = candle_core::safetensors::load(fixtures().join("resnet_basic_min_ref.safetensors"), &Device::Cpu).unwrap();
    let (_, logits) = model.features_and_logits(&reference["input"], false).unwrap();
    let difference =
        (logits - &reference["logits"]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(difference < 1e-4, "{difference}");

    let error = hub_file("timm/not_cached.x", WEIGHTS_FILE, &options).unwrap_err().to_string();
    assert!(error.contains("timm/not_cached.x/model.safetensors") && error.contains(&cache.display().to_string()), "{error}");
    std::fs::remove_dir_all(&cache).ok();
}

/// timm's config.json of timm/resnet50.a1_in1k, as the hub serves it.
const RESNET50_CONFIG: &str = r#"{"architecture": "resnet50", "num_classes": 1000, "num_features": 2048, "pretrained_cfg": {"tag": "a1_in1k", "custom_load": false, "input_size": [3, 224, 224], "test_input_size": [3, 288, 288], "fixed_input_size": false, "interpolation": "bicubic", "crop_pct": 0.95, "test_crop_pct": 1.0, "crop_mode": "center", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000, "pool_size": [7, 7], "first_conv": "conv1", "classifier": "fc"}}"#;

#[test]
fn a_hub_id_outside_the_registry_is_built_from_its_timm_config() {
    let registry = medxfer_zoo::Registry::load_default().unwrap();
    let entry = medxfer_zoo::entry_from_timm_config("someone/resnet50.custom", RESNET50_CONFIG).unwrap();
    assert_eq!(entry.architecture, registry.get("resnet50").unwrap().architecture);
    assert_eq!((entry.feature_dim, entry.head.as_str(), entry.num_classes), (2048, "fc", 1000));
    assert_eq!((entry.preprocessing.resize, entry.preprocessing.crop, entry.preprocessing.interpolation.as_str()), (235, 224, "bicubic"));

    let error = medxfer_zoo::entry_from_timm_config("x/y", r#"{"architecture": "convnext_tiny"}"#).unwrap_err().to_string();
    assert!(error.contains("convnext_tiny") && error.contains("densenet121"), "{error}");

    // The whole path from a hub id: config.json with timm's model_args, then the weights.
    let cache = std::env::temp_dir().join(format!("medxfer-hub-config-{}", std::process::id()));
    let repo = "someone/vit_min.test";
    fake_cache(&cache, repo, "feed", &fixtures().join("vit_min.safetensors"));
    let config = r#"{"architecture": "vit_small_patch16_224", "model_args": {"img_size": 64, "embed_dim": 24, "num_heads": 3, "depth": 2}, "num_classes": 10, "num_features": 24, "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "input_size": [3, 64, 64], "crop_pct": 0.9}}"#;
    std::fs::write(cache.join("models--someone--vit_min.test/snapshots/feed/config.json"), config).unwrap();
    let options = HubOptions { cache_dir: Some(cache.clone()), offline: true, progress: false };
    let entry = registry.resolve(repo, &options).unwrap();
    let model = medxfer_zoo::pretrained(&entry, &options, &Device::Cpu).unwrap();
    let reference = candle_core::safetensors::load(fixtures().join("vit_min_ref.safetensors"), &Device::Cpu).unwrap();
    let (_, logits) = model.features_and_logits(&reference["input"], false).unwrap();
    let difference =
        (logits - &reference["logits"]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(difference < 1e-4, "{difference}");
    std::fs::remove_dir_all(&cache).ok();
}
