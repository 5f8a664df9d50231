#![allow(clippy::unwrap_used)]
//! Thousands of damaged inputs to the zoo's parsers: registry TOMLs and hub `config.json` files
//! (text mutated), and checkpoints (bytes mutated: truncated, header sizes at boundary
//! integers). Each answers with an error or a value, never a panic; a configuration that parses
//! builds a network only within the sizes `Architecture::check` allows.

use std::path::PathBuf;

use candle_core::Device;
use medxfer_mutate::{Mutator, never_panics};
use medxfer_zoo::{Architecture, Backbone, BlockKind, Registry, ResNetConfig, entry_from_timm_config};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn assert_none(failures: Vec<String>) {
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn mutated_registry_tomls_load_or_fail_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let sources = Registry::default_dir();
    for (i, name) in ["resnet18.toml", "densenet121.toml", "efficientnet_b0.toml", "vit_small_patch16_224.toml"].iter().enumerate() {
        let original = std::fs::read_to_string(sources.join(name)).unwrap();
        assert_none(never_panics(
            300,
            i as u64,
            |m: &mut Mutator| m.text(&original),
            |text: &String| {
                std::fs::write(dir.path().join(name), text).unwrap();
                match Registry::load(dir.path()) {
                    Ok(registry) => {
                        for entry in registry.entries() {
                            assert!(entry.architecture.check().is_ok() && entry.preprocessing.check().is_ok());
                        }
                    }
                    Err(error) => assert!(error.to_string().contains(name), "{error}"),
                }
            },
        ));
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
}

#[test]
fn mutated_config_jsons_build_an_entry_or_fail_naming_the_file() {
    let configs = [
        r#"{"architecture": "resnet50", "num_classes": 1000, "num_features": 2048, "pretrained_cfg": {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.95, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000}}"#,
        r#"{"architecture": "vit_small_patch16_224", "model_args": {"img_size": 64, "embed_dim": 24, "num_heads": 3, "depth": 2}, "num_classes": 10, "num_features": 24, "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "input_size": [3, 64, 64], "crop_pct": 0.9}}"#,
        r#"{"architecture": "densenet121", "model_args": {"growth_rate": 2, "block_config": [2, 1, 1, 1]}, "num_classes": 10}"#,
    ];
    for (i, original) in configs.iter().enumerate() {
        assert_none(never_panics(
            1000,
            10 + i as u64,
            |m: &mut Mutator| m.text(original),
            |text: &String| match entry_from_timm_config("someone/mutant", text) {
                Ok(entry) => assert!(entry.architecture.check().is_ok() && entry.preprocessing.check().is_ok()),
                Err(error) => assert!(error.to_string().contains("someone/mutant"), "{error}"),
            },
        ));
    }
}

#[test]
fn mutated_checkpoints_load_or_fail_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(fixtures().join("resnet_basic_min.safetensors")).unwrap();
    let architecture =
        Architecture::ResNet(ResNetConfig { channels: [64, 8, 16, 32], ..ResNetConfig::plain(BlockKind::Basic, [1, 1, 1, 1]) });
    let model = Backbone::new("resnet_basic_min", &architecture, 10, &Device::Cpu).unwrap();
    model.load_weights(&fixtures().join("resnet_basic_min.safetensors"), true).unwrap();
    let path = dir.path().join("mutant.safetensors");
    assert_none(never_panics(
        400,
        21,
        |m: &mut Mutator| m.bytes(&original),
        |bytes: &Vec<u8>| {
            std::fs::write(&path, bytes).unwrap();
            if let Err(error) = model.load_weights(&path, true) {
                assert!(error.to_string().contains("mutant.safetensors"), "{error}");
            }
        },
    ));
}

#[test]
fn mutated_transformers_configs_and_vit_checkpoints_fail_naming_the_file() {
    let folder = fixtures().join("vit/hf_dinov2_registers");
    let config = std::fs::read_to_string(folder.join("config.json")).unwrap();
    assert_none(never_panics(
        600,
        31,
        |m: &mut Mutator| m.text(&config),
        |text: &String| match medxfer_zoo::entry_from_transformers_config("someone/mutant", text, None) {
            Ok(entry) => assert!(entry.architecture.check().is_ok() && entry.preprocessing.check().is_ok()),
            Err(error) => assert!(error.to_string().contains("someone/mutant"), "{error}"),
        },
    ));
    // A ViT built from its checkpoint (fit_to_checkpoint reads names and shapes): mutated
    // safetensors and mutated pickles load or fail naming the file.
    let dir = tempfile::tempdir().unwrap();
    let entry = medxfer_zoo::entry_from_transformers_config("someone/x", &config, None).unwrap();
    for (seed, file, count) in [(41, "model.safetensors", 300), (42, "pytorch_model.bin", 150)] {
        let original = std::fs::read(folder.join(file)).unwrap();
        let path = dir.path().join(format!("mutant-{file}"));
        assert_none(never_panics(
            count,
            seed,
            |m: &mut Mutator| m.bytes(&original),
            |bytes: &Vec<u8>| {
                std::fs::write(&path, bytes).unwrap();
                if let Err(error) = Backbone::load_entry(&entry, &path, &Device::Cpu) {
                    assert!(error.to_string().contains("mutant-"), "{error}");
                }
            },
        ));
    }
}
