//! timm's MobileNetV2, EfficientNet and EfficientNetV2 model names as configurations, from
//! `timm_presets.toml`: every model of timm's `efficientnet.py` whose generator and options the
//! zoo builds, with the generator its entry point calls and the keyword arguments it passes
//! (written by tests/fixtures/make_convnet_fixtures.py, which captures them without building),
//! and the others with what keeps them out.

use super::EfficientNetConfig;
use crate::preset_table::family_presets;

/// What [`efficientnet_preset`] understands, for error messages.
pub const EFFICIENTNET_PRESETS: &str = "timm's MobileNetV2, EfficientNet and EfficientNetV2 presets, tf_ ones included (crates/zoo/src/efficientnet/timm_presets.toml lists them)";

family_presets!(
    EfficientNetConfig,
    include_str!("timm_presets.toml"),
    "efficientnet/timm_presets.toml",
    efficientnet_preset,
    efficientnet_unsupported
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::efficientnet::{DepthMultiplier, EfficientNetVariant, Padding};

    #[test]
    fn presets_carry_timms_arguments() {
        let s = efficientnet_preset("tf_efficientnetv2_s.in21k_ft_in1k").unwrap();
        assert_eq!((s.variant, s.bn_eps, s.padding), (EfficientNetVariant::EfficientNetV2S, 1e-3, Padding::Same));
        let rw_m = efficientnet_preset("efficientnetv2_rw_m").unwrap();
        assert!(rw_m.rw);
        assert_eq!(rw_m.depth_multiplier, DepthMultiplier::PerStage(vec![1.2, 1.2, 1.2, 1.2, 1.6, 1.6]));
        assert_eq!(efficientnet_preset("mobilenetv2_050").unwrap(), EfficientNetConfig::mobilenetv2(0.5));
        assert!(efficientnet_preset("mobilenetv2_120d").unwrap().fix_stem_head);
        assert_eq!(efficientnet_unsupported("efficientnet_lite0"), Some("generator _gen_efficientnet_lite"));
        for (_, config) in presets().iter() {
            config.check_options().unwrap();
        }
    }
}
