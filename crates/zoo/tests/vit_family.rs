//! The generalised ViT against timm: fixtures/make_vit_fixtures.py exported small random models
//! with the options of published checkpoints (UNI, Virchow2, Prov-GigaPath, H-optimus, DINOv2
//! with registers, DeiT distilled, DeiT III, a class-token-free ViT, one without qkv bias and
//! with a pre-norm), each with the config.json its hub would publish (only what the real one
//! says): the zoo builds each from that config and the checkpoint's tensors, and must give
//! timm's tokens, features (the authors' embedding recipe where they define one), logits and
//! gradients. Full-size presets are checked against timm's parameter counts and tensor shapes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use medxfer_zoo::{Architecture, Backbone, Embedding, VitConfig, architecture_from_timm, vit_preset};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vit")
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
    eprintln!("{what}: relative difference {:.2e}", difference / scale);
    assert!(difference <= 1e-4 * scale, "{what}: max difference {difference}, scale {scale}");
}

/// The model's tokens and features of `reference`'s input with `suffix` against the reference's.
fn assert_tokens_and_features(what: &str, model: &Backbone, reference: &HashMap<String, Tensor>, suffix: &str) {
    let input = &reference[&format!("input{suffix}")];
    assert_close(&format!("{what}: tokens"), &model.feature_map(input, false).unwrap(), &reference[&format!("feature_map{suffix}")]);
    assert_close(&format!("{what}: features"), &model.features(input, false).unwrap(), &reference[&format!("features{suffix}")]);
}

/// The gradients of the case's listed keys against the fixture's float64 ones, and one for
/// every trainable parameter.
fn assert_gradients(
    name: &str,
    model: &Backbone,
    grads: &candle_core::backprop::GradStore,
    case: &Value,
    reference: &HashMap<String, Tensor>,
) {
    for key in case["gradients"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()) {
        let var = model.params().var(key).unwrap_or_else(|| panic!("{name}: no {key}"));
        assert_close(&format!("{name} gradient of {key}"), grads.get(var.as_tensor()).unwrap(), &reference[&format!("grad.{key}")]);
    }
    for (key, var) in model.params().trainable_vars() {
        assert!(grads.get(var.as_tensor()).is_some(), "{name}: {key} got no gradient");
    }
}

/// The architecture a case's published config.json describes, with the recipe its registry
/// entry would name.
fn published(case: &Value) -> (Architecture, usize) {
    let config = &case["config_json"];
    let mut architecture = architecture_from_timm(config["architecture"].as_str().unwrap(), config.get("model_args")).unwrap();
    if let Architecture::Vit(vit) = &mut architecture {
        vit.embedding = serde_json::from_value(case["embedding"].clone()).unwrap();
    }
    (architecture, config["num_classes"].as_u64().unwrap() as usize)
}

fn vit(model: &Backbone) -> &VitConfig {
    let Architecture::Vit(config) = model.architecture() else { panic!("not a ViT") };
    config
}

#[test]
fn every_case_gives_timms_tokens_features_logits_and_gradients() {
    let cases = json("cases.json");
    for (name, case) in cases.as_object().unwrap() {
        let (architecture, classes) = published(case);
        let weights = fixtures().join(format!("{name}.safetensors"));
        let model = Backbone::load(name, &architecture, classes, &weights, &Device::Cpu).unwrap();
        assert_eq!(model.params().parameter_count() as u64, case["parameters"].as_u64().unwrap(), "{name}: parameters");
        let reference = reference(name);
        for side in case["sides"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()) {
            let suffix = if side == case["sides"][0].as_u64().unwrap() { String::new() } else { format!("_{side}") };
            let input = &reference[&format!("input{suffix}")];
            assert_close(
                &format!("{name} tokens at {side} px"),
                &model.feature_map(input, false).unwrap(),
                &reference[&format!("feature_map{suffix}")],
            );
            let (features, logits) = model.features_and_logits(input, false).unwrap();
            assert_close(&format!("{name} features at {side} px"), &features, &reference[&format!("features{suffix}")]);
            match reference.get(&format!("logits{suffix}")) {
                Some(truth) => assert_close(&format!("{name} logits at {side} px"), &logits, truth),
                None => assert_eq!(logits.dims(), &[2, 0], "{name}: a model without a head has no logits"),
            }
        }
        // Train mode: the same fixed loss as the fixture's float64 pass.
        // The forward pass as training runs it: what no backward rule reads is freed on the way.
        let (features, logits) = {
            let _release = candle_core::backprop::release_unread();
            model.features_and_logits(&reference["input"], true).unwrap()
        };
        let mut loss = (features * &reference["loss_weights"]).unwrap().sum_all().unwrap();
        if let Some(weights) = reference.get("logit_loss_weights") {
            loss = (loss + (logits * weights).unwrap().sum_all().unwrap()).unwrap();
        }
        // With no head on the logits' side the loss reaches every parameter.
        assert_gradients(name, &model, &loss.backward_releasing().unwrap(), case, &reference);
    }
}

#[test]
fn what_the_published_configs_omit_is_read_from_the_checkpoints() {
    let cases = json("cases.json");
    let load = |name: &str| {
        let (architecture, classes) = published(&cases[name]);
        let model = Backbone::load(name, &architecture, classes, &fixtures().join(format!("{name}.safetensors")), &Device::Cpu).unwrap();
        (architecture, model)
    };
    // UNI's config.json says vit_large_patch16_224 without init_values: LayerScale is found.
    let (stated, uni) = load("uni_like");
    assert!(matches!(&stated, Architecture::Vit(c) if c.init_values.is_none()));
    assert!(vit(&uni).init_values.is_some());
    // Virchow2's omits the packed SwiGLU its card passes by hand.
    let (stated, virchow) = load("virchow2_like");
    assert!(matches!(&stated, Architecture::Vit(c) if c.mlp == medxfer_zoo::MlpKind::Gelu));
    assert_eq!(vit(&virchow).mlp, medxfer_zoo::MlpKind::SwigluPacked);
    assert_eq!(vit(&virchow).embedding, Embedding::ClassTokenAndPatchMean);
    assert_eq!(virchow.num_features(), 64, "the class token and the patch mean, 32 wide each");
    // The class-token-free model pools by averaging, through fc_norm.
    let (_, gap) = load("gap_like");
    assert!(!vit(&gap).class_token && vit(&gap).use_fc_norm());
    // A configuration that states what the checkpoint contradicts is refused, naming both.
    let (mut wrong, _) = load("hoptimus_like");
    if let Architecture::Vit(config) = &mut wrong {
        config.reg_tokens = 8;
    }
    let error =
        Backbone::load("hoptimus_like", &wrong, 0, &fixtures().join("hoptimus_like.safetensors"), &Device::Cpu).unwrap_err().to_string();
    assert!(error.contains("reg_tokens is 8 but the checkpoint has 4") && error.contains("hoptimus_like.safetensors"), "{error}");
}

#[test]
fn a_fixed_size_model_refuses_another_grid_and_a_dynamic_one_resamples() {
    let cases = json("cases.json");
    let (architecture, _) = published(&cases["deit3_like"]);
    let model = Backbone::load("deit3_like", &architecture, 10, &fixtures().join("deit3_like.safetensors"), &Device::Cpu).unwrap();
    let error =
        model.features_and_logits(&Tensor::zeros((1, 3, 40, 40), DType::F32, &Device::Cpu).unwrap(), false).unwrap_err().to_string();
    assert!(error.contains("5 x 5 patch grid") && error.contains("dynamic_img_size"), "{error}");
}

/// The parameters timm counts and the tensors (names and shapes) it has, for full-size presets
/// and for the registry's foundation models (models/foundation/*.toml) as their cards build
/// them with timm.
#[test]
fn full_size_presets_and_foundation_entries_have_timms_tensors() {
    let full = json("full_size.json");
    let registry = medxfer_zoo::Registry::load_default().unwrap();
    for (name, truth) in full.as_object().unwrap() {
        let timm_config: VitConfig = serde_json::from_value(truth["config"].clone()).unwrap();
        let ours = match (vit_preset(name), registry.get(name)) {
            (Some(preset), _) => preset,
            (None, Ok(entry)) => match &entry.architecture {
                Architecture::Vit(config) => config.clone(),
                other => panic!("{name}: {other:?}"),
            },
            (None, Err(error)) => panic!("{name}: neither a timm preset nor a registry entry: {error}"),
        };
        let shapes: BTreeMap<String, Vec<usize>> = serde_json::from_value(truth["shapes"].clone()).unwrap();
        let classes = shapes.get("head.weight").map_or(0, |s| s[0]);
        let model = Backbone::new(name, &Architecture::Vit(ours.clone()), classes, &Device::Cpu).unwrap();
        let mine: BTreeMap<String, Vec<usize>> =
            model.params().names().into_iter().map(|n| (n.clone(), model.params().var(&n).unwrap().dims().to_vec())).collect();
        assert_eq!(mine, shapes, "{name}: tensors");
        assert_eq!(model.params().parameter_count() as u64, truth["parameters"].as_u64().unwrap(), "{name}: parameters");
        assert_eq!(ours.parameter_count(classes), model.params().parameter_count(), "{name}: counted without building");
        assert_eq!(ours.num_heads, timm_config.num_heads, "{name}: heads");
    }
}

fn load_case(name: &str, file: &str) -> Backbone {
    let cases = json("cases.json");
    let (architecture, classes) = published(&cases[name]);
    Backbone::load(name, &architecture, classes, &fixtures().join(file), &Device::Cpu).unwrap()
}

#[test]
fn checkpoints_in_their_published_layouts_load_to_the_same_model() {
    // The original DINOv2 layout (register_tokens, mask_token, the class position in pos_embed).
    let reference_reg = reference("dinov2_reg_like");
    let model = load_case("dinov2_reg_like", "dinov2_reg_like.original.safetensors");
    assert_close("original DINOv2 logits", &model.features_and_logits(&reference_reg["input"], false).unwrap().1, &reference_reg["logits"]);
    // The original DINOv2 giant's SwiGLU as w12/w3.
    let reference_giant = reference("gigapath_like");
    let model = load_case("gigapath_like", "gigapath_like.original.safetensors");
    assert_close(
        "original DINOv2 giant features",
        &model.features(&reference_giant["input"], false).unwrap(),
        &reference_giant["features"],
    );
    // An open_clip tower as a PyTorch pickle: the trunk only.
    let reference_uni = reference("uni_like");
    let model = load_case("uni_like", "uni_like.open_clip.bin");
    assert_close("open_clip trunk features", &model.features(&reference_uni["input"], false).unwrap(), &reference_uni["features"]);
    assert_close("open_clip trunk at 48 px", &model.features(&reference_uni["input_48"], false).unwrap(), &reference_uni["features_48"]);
    // bf16 weights, read and converted.
    let reference_bf16 = candle_core::safetensors::load(fixtures().join("gap_like.bf16_ref.safetensors"), &Device::Cpu).unwrap();
    let model = load_case("gap_like", "gap_like.bf16.safetensors");
    assert_close("bf16 weights' logits", &model.features_and_logits(&reference_bf16["input"], false).unwrap().1, &reference_bf16["logits"]);
}

/// A CONCH-like tower's trunk with the card's embedding (the contrastive attentional pooler).
fn coca_config(case: &Value) -> VitConfig {
    let size = |key: &str| case["trunk"][key].as_u64().unwrap() as usize;
    VitConfig {
        dynamic_img_size: true,
        embedding: Embedding::AttentionalPool,
        attn_pool: Some(serde_json::from_value(case["attn_pool"].clone()).unwrap()),
        ..VitConfig::new(size("img_size"), size("patch_size"), size("embed_dim"), size("depth"), size("num_heads"))
    }
}

#[test]
fn conch_like_towers_give_the_cards_embedding_through_the_attentional_pooler() {
    let cases = json("coca.json");
    for (name, case) in cases.as_object().unwrap() {
        let config = coca_config(case);
        let weights = fixtures().join(format!("{name}.open_clip.bin"));
        let model = Backbone::load(name, &Architecture::Vit(config.clone()), 0, &weights, &Device::Cpu).unwrap();
        assert_eq!(model.params().parameter_count() as u64, case["parameters"].as_u64().unwrap(), "{name}: parameters");
        assert_eq!(config.parameter_count(0), model.params().parameter_count(), "{name}: counted without building");
        assert_eq!(model.num_features() as u64, case["attn_pool"]["dim"].as_u64().unwrap(), "{name}: the pooler's width");
        let reference = reference(name);
        let sides: Vec<u64> = case["sides"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect();
        for &side in &sides {
            let suffix = if side == sides[0] { String::new() } else { format!("_{side}") };
            assert_tokens_and_features(&format!("{name} at {side} px"), &model, &reference, &suffix);
        }
        // Train mode: the fixture's float64 gradients of the same loss, and one for every parameter.
        let features = {
            let _release = candle_core::backprop::release_unread();
            model.features(&reference["input"], true).unwrap()
        };
        let loss = (features * &reference["loss_weights"]).unwrap().sum_all().unwrap();
        assert_gradients(name, &model, &loss.backward_releasing().unwrap(), case, &reference);
    }
    let conch = &cases["conch_like"];
    let weights = fixtures().join("conch_like.open_clip.bin");
    let reference = reference("conch_like");
    // In f16 (the pooler's softmax taken in f32), near the f32 truth.
    let half = Backbone::load_in("conch_like", &Architecture::Vit(coca_config(conch)), 0, &weights, &Device::Cpu, DType::F16).unwrap();
    let features = half.features(&reference["input"].to_dtype(DType::F16).unwrap(), false).unwrap().to_dtype(DType::F32).unwrap();
    let truth = &reference["features"];
    let difference = common::max_abs_difference(&features, truth);
    let scale = common::max_abs(truth);
    assert!(difference > 0.0 && difference <= 1e-2 * scale, "f16 embedding: {difference} at scale {scale}");
    // The same tower with the trunk's class token as its embedding: the poolers are left out.
    let trunk = VitConfig { embedding: Embedding::ClassToken, attn_pool: None, ..coca_config(conch) };
    let model = Backbone::load("conch_trunk", &Architecture::Vit(trunk), 0, &weights, &Device::Cpu).unwrap();
    assert_close(
        "the trunk's class token",
        &model.features(&reference["input"], false).unwrap(),
        &reference["feature_map"].narrow(1, 0, 1).unwrap().squeeze(1).unwrap(),
    );
    // A pooler the checkpoint lacks, or of another width, is refused, naming what disagrees.
    let refused = |config: VitConfig, file: &str| {
        let error = Backbone::load("conch", &Architecture::Vit(config), 0, &fixtures().join(file), &Device::Cpu).unwrap_err().to_string();
        assert!(error.contains(file), "{error}");
        error
    };
    let error = refused(coca_config(&cases["conch_packed_like"]), "uni_like.open_clip.bin");
    assert!(error.contains("no attn_pool_contrast.query"), "{error}");
    let narrow = VitConfig { attn_pool: Some(medxfer_zoo::AttnPool { dim: 16, heads: 4 }), ..coca_config(conch) };
    let error = refused(narrow, "conch_like.open_clip.bin");
    assert!(error.contains("attn_pool's dim is 16") && error.contains("[1, 32]"), "{error}");
    // A pooler without its shape is refused before anything is read.
    let shapeless = VitConfig { attn_pool: None, ..coca_config(conch) };
    let error = Backbone::new("conch", &Architecture::Vit(shapeless), 0, &Device::Cpu).unwrap_err().to_string();
    assert!(error.contains("attn_pool = {"), "{error}");
}

#[test]
fn transformers_checkpoints_give_transformers_outputs() {
    for name in ["hf_vit", "hf_dinov2", "hf_dinov2_swiglu", "hf_dinov2_registers", "hf_dinov2_registers_swiglu"] {
        let folder = fixtures().join(name);
        let config = std::fs::read_to_string(folder.join("config.json")).unwrap();
        assert!(medxfer_zoo::is_transformers_config(&config), "{name}");
        let processor = std::fs::read_to_string(folder.join("preprocessor_config.json")).ok();
        let entry = medxfer_zoo::entry_from_transformers_config(&format!("someone/{name}"), &config, processor.as_deref()).unwrap();
        assert_eq!((entry.num_classes, entry.feature_dim), (0, 24), "{name}");
        let reference = reference(name);
        for weights in ["model.safetensors", "pytorch_model.bin"] {
            let model = Backbone::load_entry(&entry, &folder.join(weights), &Device::Cpu).unwrap();
            for suffix in ["", "_48"] {
                assert_tokens_and_features(&format!("{name} {weights}{suffix}"), &model, &reference, suffix);
            }
        }
    }
    // RAD-DINO's image processor settings become the entry's preprocessing.
    let folder = fixtures().join("hf_dinov2");
    let processor = std::fs::read_to_string(folder.join("preprocessor_config.json")).unwrap();
    let entry = medxfer_zoo::entry_from_transformers_config(
        "microsoft/rad-dino",
        &std::fs::read_to_string(folder.join("config.json")).unwrap(),
        Some(&processor),
    )
    .unwrap();
    let p = &entry.preprocessing;
    assert_eq!((p.resize, p.crop, p.mean[0], p.std[2], p.interpolation.as_str()), (518, 518, 0.5307, 0.2583, "bicubic"));
}

#[test]
fn damaged_pickles_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixtures().join("hf_vit/pytorch_model.bin")).unwrap();
    let cases = json("cases.json");
    let (architecture, _) = published(&cases["uni_like"]);
    for cut in [4, 100, bytes.len() / 2, bytes.len() - 30] {
        let path = dir.path().join(format!("cut{cut}.bin"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let error = Backbone::load("x", &architecture, 0, &path, &Device::Cpu).unwrap_err().to_string();
        assert!(error.contains(&format!("cut{cut}.bin")), "{error}");
    }
}

#[test]
fn half_precision_extraction_stays_near_the_f32_truth() {
    let cases = json("cases.json");
    let (architecture, classes) = published(&cases["virchow2_like"]);
    let reference = reference("virchow2_like");
    // bf16 needs a GPU (candle has no bf16 matrix product on the CPU), and says so.
    let error =
        Backbone::load_in("v", &architecture, 0, &fixtures().join("virchow2_like.safetensors"), &Device::Cpu, DType::BF16).unwrap_err();
    assert!(error.to_string().contains("bf16 needs a GPU"), "{error}");
    let gpu = std::env::var("MEDXFER_TEST_DEVICE").ok().filter(|d| d.starts_with("cuda"));
    let dtypes: &[DType] = if gpu.is_some() { &[DType::BF16, DType::F16] } else { &[DType::F16] };
    let device = match &gpu {
        Some(name) => Device::new_cuda(name.trim_start_matches("cuda:").parse().unwrap()).unwrap(),
        None => Device::Cpu,
    };
    for &dtype in dtypes {
        let model =
            Backbone::load_in("virchow2_like", &architecture, classes, &fixtures().join("virchow2_like.safetensors"), &device, dtype)
                .unwrap();
        assert_eq!(model.params().dtype(), dtype);
        let features = model.features(&reference["input"].to_device(&device).unwrap(), false).unwrap();
        assert_eq!(features.dtype(), dtype);
        let features = features.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
        let truth = &reference["features"];
        let difference = common::max_abs_difference(&features, truth);
        let scale = common::max_abs(truth);
        // bf16 keeps 8 bits of mantissa: a few parts in a hundred through two blocks.
        let tolerance = if dtype == DType::BF16 { 5e-2 } else { 1e-2 };
        eprintln!("{dtype:?}: relative difference {:.2e}", difference / scale);
        assert!(difference <= tolerance * scale, "{dtype:?}: {difference} of {scale}");
    }
}
