//! timm's ResNet model names as configurations, from `timm_presets.toml`: every model of timm's
//! `resnet.py` whose options the zoo's ResNet has, with the keyword arguments timm's entry point
//! passes (written by tests/fixtures/make_convnet_fixtures.py, which captures them without
//! building), and the others with the option that keeps them out.

use super::ResNetConfig;
use crate::preset_table::family_presets;

/// What [`resnet_preset`] understands, for error messages.
pub const RESNET_PRESETS: &str =
    "timm's ResNet, ResNet-C/D/S/T, ResNeXt, SE-ResNet(Xt) and wide ResNet presets (crates/zoo/src/resnet/timm_presets.toml lists them)";

family_presets!(ResNetConfig, include_str!("timm_presets.toml"), "resnet/timm_presets.toml", resnet_preset, resnet_unsupported);

#[cfg(test)]
mod tests {
    use super::super::{BlockAttention, BlockKind, StemType};
    use super::*;

    #[test]
    fn presets_carry_timms_arguments() {
        assert_eq!(resnet_preset("resnet50.a1_in1k").unwrap(), ResNetConfig::resnet50());
        assert_eq!(resnet_preset("resnet18").unwrap(), ResNetConfig::resnet18());
        let d = resnet_preset("resnet50d").unwrap();
        assert_eq!((d.stem_type, d.stem_width, d.avg_down), (StemType::Deep, 32, true));
        let x = resnet_preset("seresnext26d_32x4d").unwrap();
        assert_eq!(
            (x.block, x.cardinality, x.base_width, x.attn_layer, x.layers),
            (BlockKind::Bottleneck, 32, 4, Some(BlockAttention::Se), [2; 4])
        );
        assert_eq!(resnet_preset("wide_resnet50_2").unwrap().base_width, 128);
        assert_eq!(resnet_unsupported("ecaresnet50d"), Some("attn_layer eca"));
        assert!(resnet_preset("convnext_tiny").is_none() && resnet_unsupported("resnet50").is_none());
        for (_, config) in presets().iter() {
            config.check_options().unwrap();
        }
    }
}
