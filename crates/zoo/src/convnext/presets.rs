//! timm's ConvNeXt model names as configurations, from `timm_presets.toml`: every model of timm's
//! `convnext.py` whose options the zoo's ConvNeXt has, with the keyword arguments timm's entry
//! point passes (written by tests/fixtures/make_convnet_fixtures.py, which captures them without
//! building), and the others with the option that keeps them out.

use super::ConvNextConfig;
use crate::preset_table::family_presets;

/// What [`convnext_preset`] understands, for error messages.
pub const CONVNEXT_PRESETS: &str = "timm's ConvNeXt and ConvNeXt-V2 presets (crates/zoo/src/convnext/timm_presets.toml lists them)";

family_presets!(ConvNextConfig, include_str!("timm_presets.toml"), "convnext/timm_presets.toml", convnext_preset, convnext_unsupported);

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
