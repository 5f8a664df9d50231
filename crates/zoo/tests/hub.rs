//! Weights through the hub path, against a fake cache directory laid out as hf-hub lays it out
//! (`models--org--name/refs/main` holding a revision, `snapshots/<rev>/model.safetensors`), with
//! no network.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use medxfer_zoo::{Architecture, Backbone, BlockKind, HubOptions, ModelEntry, Preprocessing, ResNetConfig, WEIGHTS_FILE, hub_file};

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
    let model = Backbone::pretrained(&entry, &options, &Device::Cpu).unwrap();
    let reference = candle_core::safetensors::load(fixtures().join("resnet_basic_min_ref.safetensors"), &Device::Cpu).unwrap();
    let (_, logits) = model.forward_t(&reference["input"], false).unwrap();
    let difference =
        (logits - &reference["logits"]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(difference < 1e-4, "{difference}");

    let error = hub_file("timm/not_cached.x", WEIGHTS_FILE, &options).unwrap_err().to_string();
    assert!(error.contains("timm/not_cached.x/model.safetensors") && error.contains(&cache.display().to_string()), "{error}");
    std::fs::remove_dir_all(&cache).ok();
}
