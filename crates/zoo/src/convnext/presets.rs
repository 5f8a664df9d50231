//! timm's ConvNeXt model names as configurations, from `timm_presets.toml`: every model of timm's
//! `convnext.py` whose options the zoo's ConvNeXt has, with the keyword arguments timm's entry
//! point passes (written by tests/fixtures/make_convnet_fixtures.py, which captures them without
//! building), and the others with the option that keeps them out.

use std::sync::OnceLock;

use super::ConvNextConfig;
use crate::preset_table::PresetTable;

/// What [`convnext_preset`] understands, for error messages.
pub const CONVNEXT_PRESETS: &str = "timm's ConvNeXt and ConvNeXt-V2 presets (crates/zoo/src/convnext/timm_presets.toml lists them)";

fn presets() -> &'static PresetTable<ConvNextConfig> {
    static PRESETS: OnceLock<PresetTable<ConvNextConfig>> = OnceLock::new();
    PRESETS.get_or_init(|| PresetTable::parse(include_str!("timm_presets.toml"), "convnext/timm_presets.toml"))
}

/// The configuration timm's model `name` (a pretrained tag after `.` ignored) builds, before
/// any `model_args`; `None` for a name the table does not list.
pub fn convnext_preset(name: &str) -> Option<ConvNextConfig> {
    presets().get(name)
}

/// Why timm's model `name` of this family is not built by the zoo (the option it lacks), when
/// the table says so.
pub fn convnext_unsupported(name: &str) -> Option<&'static str> {
    presets().unsupported(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_carry_timms_arguments() {
        let tiny = convnext_preset("convnext_tiny.in12k_ft_in1k").unwrap();
        assert_eq!(
            (tiny.depths, tiny.dims, tiny.conv_mlp, tiny.use_grn, tiny.layer_scale),
            ([3, 3, 9, 3], [96, 192, 384, 768], false, false, true)
        );
        let atto = convnext_preset("convnextv2_atto").unwrap();
        assert!(atto.conv_mlp && atto.use_grn && !atto.layer_scale);
        assert_eq!(convnext_preset("convnext_xxlarge").unwrap().norm_eps, 1e-5);
        assert_eq!(convnext_unsupported("convnext_tiny_hnf"), Some("head_norm_first=True"));
        for (_, config) in presets().iter() {
            config.check_options().unwrap();
        }
    }
}
