//! timm's MobileNetV2, EfficientNet and EfficientNetV2 model names as configurations, from
//! `timm_presets.toml`: every model of timm's `efficientnet.py` whose generator and options the
//! zoo builds, with the generator its entry point calls and the keyword arguments it passes
//! (written by tests/fixtures/make_convnet_fixtures.py, which captures them without building),
//! and the others with what keeps them out.

use std::sync::OnceLock;

use super::EfficientNetConfig;
use crate::preset_table::PresetTable;

/// What [`efficientnet_preset`] understands, for error messages.
pub const EFFICIENTNET_PRESETS: &str = "timm's MobileNetV2, EfficientNet and EfficientNetV2 presets, tf_ ones included (crates/zoo/src/efficientnet/timm_presets.toml lists them)";

fn presets() -> &'static PresetTable<EfficientNetConfig> {
    static PRESETS: OnceLock<PresetTable<EfficientNetConfig>> = OnceLock::new();
    PRESETS.get_or_init(|| PresetTable::parse(include_str!("timm_presets.toml"), "efficientnet/timm_presets.toml"))
}

/// The configuration timm's model `name` (a pretrained tag after `.` ignored) builds, before
/// any `model_args`; `None` for a name the table does not list.
pub fn efficientnet_preset(name: &str) -> Option<EfficientNetConfig> {
    presets().get(name)
}

/// Why timm's model `name` of this family is not built by the zoo (what it lacks), when the
/// table says so.
pub fn efficientnet_unsupported(name: &str) -> Option<&'static str> {
    presets().unsupported(name)
}

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
