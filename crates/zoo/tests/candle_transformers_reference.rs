//! A second, independent reference: candle-transformers' DINOv2 (`models::dinov2`), written by
//! other hands from the original DINOv2 code. The same random weights in both, at its fixed
//! 518 px input: the zoo's ViT with DINOv2's options and the embedding candle's model feeds its
//! head (the class token and the patch mean) must give its logits. (candle's model hard-codes a
//! LayerNorm epsilon of 1e-5 and a batch of one; the zoo is told the same epsilon.)

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use medxfer_zoo::{Architecture, Backbone, Embedding, vit_preset};
use rand::{Rng, SeedableRng};

#[test]
fn the_zoo_vit_gives_candle_transformers_dinov2_logits() {
    let (depth, dim, heads) = (2, 48, 3);
    let mut config = vit_preset("vit_small_patch14_dinov2").unwrap();
    (config.depth, config.embed_dim, config.num_heads, config.layer_norm_eps, config.embedding) =
        (depth, dim, heads, 1e-5, Embedding::ClassTokenAndPatchMean);
    let architecture = Architecture::Vit(config);
    // Random weights under the names both models use (timm's and DINOv2's agree here).
    let template = Backbone::new("template", &architecture, 1000, &Device::Cpu).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut tensors = HashMap::new();
    for name in template.params().names() {
        let shape = template.params().var(&name).unwrap().dims().to_vec();
        let count: usize = shape.iter().product();
        let fan_in = if shape.len() > 1 { shape[1..].iter().product::<usize>() } else { 1 };
        let scale = if name.contains("norm") && name.ends_with("weight") || name.ends_with("gamma") {
            None
        } else {
            Some(1.0 / (fan_in as f64).sqrt())
        };
        let values: Vec<f32> = (0..count)
            .map(|_| match scale {
                None => rng.random_range(0.5..1.5),
                Some(s) => (rng.random_range(-1.0..1.0) * s * 1.7) as f32,
            })
            .collect();
        tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("dinov2.safetensors");
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let ours = Backbone::load("dinov2", &architecture, 1000, &weights, &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let theirs = candle_transformers::models::dinov2::DinoVisionTransformer::new(vb, depth, dim, heads).unwrap();

    let pixels: Vec<f32> = (0..3 * 518 * 518).map(|_| rng.random_range(-2.0..2.0)).collect();
    let input = Tensor::from_vec(pixels, (1, 3, 518, 518), &Device::Cpu).unwrap();
    let expected = theirs.forward(&input).unwrap();
    let (_, logits) = ours.features_and_logits(&input, false).unwrap();
    let difference = common::max_abs_difference(&logits, &expected);
    let scale = common::max_abs(expected).max(1.0);
    assert!(difference <= 1e-4 * scale, "max difference {difference}, scale {scale}");
    assert!(scale > 0.1, "the logits are not all near zero ({scale}): the comparison means something");
}
