//! The registry of models/*.toml: the ten backbones of the paper, each consistent with its
//! architecture and with timm (fixtures/full_size_shapes.json).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use candle_core::Device;
use medxfer_zoo::{Backbone, Registry};

#[test]
fn the_registry_lists_the_ten_paper_backbones_with_timms_sizes() {
    let registry = Registry::load_default().unwrap();
    let names: Vec<&str> = registry.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "densenet121",
            "densenet161",
            "densenet169",
            "efficientnet_b0",
            "mobilenetv2_050",
            "mobilenetv2_100",
            "resnet18",
            "resnet34",
            "resnet50",
            "vit_small_patch16_224"
        ]
    );
    let full: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/full_size_shapes.json")).unwrap(),
    )
    .unwrap();
    // The parameter counts issue 3 lists, in the registry's order.
    let counts = [7_978_856u64, 28_681_000, 14_149_480, 5_288_548, 1_968_680, 3_504_872, 11_689_512, 21_797_672, 25_557_032, 22_050_664];
    for (entry, count) in registry.entries().iter().zip(counts) {
        let model = Backbone::new(&entry.name, &entry.architecture, entry.num_classes, &Device::Cpu).unwrap();
        assert_eq!(model.params().parameter_count() as u64, count, "{}", entry.name);
        assert_eq!(full[&entry.name]["parameters"].as_u64().unwrap(), count, "{}", entry.name);
        assert_eq!(entry.feature_dim as u64, full[&entry.name]["num_features"].as_u64().unwrap(), "{}", entry.name);
        assert!(entry.hub.starts_with(&format!("timm/{}.", entry.name)), "{}", entry.hub);
    }
    assert_eq!(registry.get("timm/resnet50.a1_in1k").unwrap().name, "resnet50");
    assert!(registry.get("resnet51").unwrap_err().to_string().contains("resnet50"));
}

#[test]
fn an_inconsistent_entry_is_refused_with_its_file_named() {
    let dir = std::env::temp_dir().join(format!("medxfer-registry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(Registry::default_dir().join("resnet18.toml")).unwrap();
    std::fs::write(dir.join("resnet18.toml"), text.replace("feature_dim = 512", "feature_dim = 2048")).unwrap();
    let error = Registry::load(&dir).unwrap_err().to_string();
    assert!(error.contains("resnet18.toml") && error.contains("512"), "{error}");
    std::fs::write(dir.join("resnet18.toml"), text.replace("family = \"resnet\"", "family = \"alexnet\"")).unwrap();
    let error = Registry::load(&dir).unwrap_err().to_string();
    assert!(error.contains("resnet18.toml") && error.contains("alexnet"), "{error}");
    // A resize filter classify does not have was resized bilinearly, unsaid.
    std::fs::write(dir.join("resnet18.toml"), text.replace("interpolation = \"bilinear\"", "interpolation = \"lanczos\"")).unwrap();
    let error = Registry::load(&dir).unwrap_err().to_string();
    assert!(error.contains("resnet18.toml") && error.contains("interpolation \"lanczos\""), "{error}");
    // A folder without any entry (a wrong --models) is named as the mistake; it listed nothing.
    std::fs::remove_file(dir.join("resnet18.toml")).unwrap();
    std::fs::create_dir_all(dir.join("empty_group")).unwrap();
    let error = Registry::load(&dir).unwrap_err().to_string();
    assert!(error.contains(&dir.display().to_string()) && error.contains("no model entry here"), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Registry files written before the EfficientNet variant was renamed say `efficientnet_b0` for
/// every width and depth; they read as the same architecture as `efficientnet`.
#[test]
fn an_efficientnet_entry_of_the_old_spelling_reads_as_the_new() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/efficientnet_b0.toml")).unwrap();
    assert!(text.contains("variant = \"efficientnet\""), "{text}");
    let new: medxfer_zoo::ModelEntry = toml::from_str(&text).unwrap();
    let old: medxfer_zoo::ModelEntry =
        toml::from_str(&text.replace("variant = \"efficientnet\"", "variant = \"efficientnet_b0\"")).unwrap();
    assert_eq!(old, new);
    assert_eq!(new.architecture, medxfer_zoo::Architecture::EfficientNet(medxfer_zoo::EfficientNetConfig::efficientnet_b0()));
}
