//! timm's Swin Transformer v1 model names as configurations, from `timm_presets.toml`: every
//! model of timm's `swin_transformer.py` whose options the zoo's Swin has, with the keyword
//! arguments timm's entry point passes and the `img_size` its default pretrained configuration
//! sets (written by tests/fixtures/make_convnet_fixtures.py, which captures them without
//! building), and the others with the option that keeps them out.

use super::SwinConfig;
use crate::preset_table::family_presets;

/// What [`swin_preset`] understands, for error messages.
pub const SWIN_PRESETS: &str = "timm's Swin Transformer v1 presets (crates/zoo/src/swin/timm_presets.toml lists them)";

family_presets!(SwinConfig, include_str!("timm_presets.toml"), "swin/timm_presets.toml", swin_preset, swin_unsupported);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_carry_timms_arguments() {
        let tiny = swin_preset("swin_tiny_patch4_window7_224.ms_in1k").unwrap();
        assert_eq!((tiny.img_size, tiny.window_size, tiny.embed_dim, tiny.num_features()), (224, 7, 96, 768));
        assert_eq!((tiny.depths, tiny.num_heads), (vec![2, 2, 6, 2], vec![3, 6, 12, 24]));
        let base = swin_preset("swin_base_patch4_window12_384").unwrap();
        assert_eq!((base.img_size, base.window_size), (384, 12));
        assert!(swin_unsupported("swin_s3_tiny_224").is_some());
        for (_, config) in presets().iter() {
            config.check_options().unwrap();
        }
    }
}
