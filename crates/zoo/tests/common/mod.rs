//! What more than one of the zoo's test binaries checks.

// Each test binary includes this module and uses a part of it.
#![allow(dead_code)]

use std::borrow::Borrow;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use medxfer_zoo::{Architecture, Backbone, BlockKind, DenseNetConfig, DepthMultiplier, EfficientNetConfig, ResNetConfig, VitConfig};

/// The train-mode logits, with the intermediates no backward rule reads freed during the
/// forward pass as training frees them (`release_unread`).
pub fn train_logits_freeing_unread(model: &Backbone, input: &Tensor) -> Tensor {
    let _release = candle_core::backprop::release_unread();
    model.features_and_logits(input, true).unwrap().1
}

/// `grads`, the gradients of `sum(logits * weights)` with the graph freed on the way
/// ([`train_logits_freeing_unread`], `backward_releasing`), against candle's own passes over
/// another forward pass, which keep the whole graph: every trainable parameter's gradient must
/// be the same bits, as none of the freed values is read.
pub fn assert_gradients_as_with_the_graph_kept(name: &str, model: &Backbone, input: &Tensor, weights: &Tensor, grads: &GradStore) {
    let (_, logits) = model.features_and_logits(input, true).unwrap();
    let kept = (&logits * weights).unwrap().sum_all().unwrap().backward().unwrap();
    let bits = |grads: &GradStore, var: &Tensor| {
        grads.get(var).map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect::<Vec<_>>())
    };
    for (key, var) in model.params().trainable_vars() {
        assert_eq!(bits(grads, var.as_tensor()), bits(&kept, var.as_tensor()), "{name}: {key}'s gradient, freed on the way and kept");
    }
}

/// The largest |t| over the entries, on any device and dtype; infinite where an entry is NaN,
/// which candle's `max` would pass over (so a NaN fails every bound).
pub fn max_abs(t: impl Borrow<Tensor>) -> f32 {
    let values = t
        .borrow()
        .to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>());
    values.unwrap().iter().fold(0f32, |m, v| if v.is_nan() { f32::INFINITY } else { m.max(v.abs()) })
}

/// The largest |a - b| over the entries, likewise.
pub fn max_abs_difference(a: impl Borrow<Tensor>, b: impl Borrow<Tensor>) -> f32 {
    max_abs((a.borrow() - b.borrow()).unwrap())
}

/// The paper's families' fixtures (fixtures/make_fixtures.py's CONFIGS) and their architectures.
pub fn paper_fixtures() -> Vec<(&'static str, Architecture)> {
    vec![
        (
            "resnet_basic_min",
            Architecture::ResNet(ResNetConfig { channels: [64, 8, 16, 32], ..ResNetConfig::plain(BlockKind::Basic, [1, 1, 1, 1]) }),
        ),
        (
            "resnet_bottleneck_min",
            Architecture::ResNet(ResNetConfig { channels: [4, 8, 16, 32], ..ResNetConfig::plain(BlockKind::Bottleneck, [1, 1, 1, 1]) }),
        ),
        ("densenet_min", Architecture::DenseNet(DenseNetConfig { growth_rate: 2, block_config: vec![2, 1, 1, 1], bn_size: 4 })),
        (
            "mobilenetv2_min",
            Architecture::EfficientNet(EfficientNetConfig {
                depth_multiplier: DepthMultiplier::Uniform(0.5),
                ..EfficientNetConfig::mobilenetv2(0.35)
            }),
        ),
        ("efficientnet_min", Architecture::EfficientNet(EfficientNetConfig::efficientnet(0.3, 0.5))),
        ("vit_min", Architecture::Vit(VitConfig::new(64, 16, 24, 2, 3))),
    ]
}
