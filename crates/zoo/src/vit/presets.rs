//! timm's ViT model names as configurations, from `timm_presets.toml`: every `vit_*` and
//! `deit*` model of timm whose options the zoo's ViT has, with the options timm resolves for it
//! (written by tests/fixtures/make_vit_fixtures.py, which builds each model on the meta device
//! and reads them back), and the others with the option that keeps them out.

use super::config::VitConfig;
use crate::preset_table::family_presets;

/// What [`vit_preset`] understands, for error messages.
pub const VIT_PRESETS: &str = "timm's ViT, DeiT, DeiT III and DINOv2 presets (crates/zoo/src/vit/timm_presets.toml lists them)";

family_presets!(VitConfig, include_str!("timm_presets.toml"), "vit/timm_presets.toml", vit_preset, vit_unsupported);

/// Every preset's name.
pub fn vit_preset_names() -> impl Iterator<Item = &'static str> {
    presets().iter().map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::super::config::{GlobalPool, MlpKind};
    use super::*;

    #[test]
    fn presets_carry_timms_resolved_options() {
        assert!(vit_preset_names().count() > 100);
        assert_eq!(vit_preset("vit_small_patch16_224").unwrap(), VitConfig::vit_small_patch16_224());
        assert_eq!(vit_preset("vit_small_patch16_224.augreg_in21k_ft_in1k").unwrap(), VitConfig::vit_small_patch16_224());
        let reg = vit_preset("vit_large_patch14_reg4_dinov2").unwrap();
        assert_eq!((reg.img_size, reg.patch_size, reg.reg_tokens, reg.no_embed_class), (518, 14, 4, true));
        assert!(reg.init_values.is_some());
        let giant = vit_preset("vit_giant_patch14_dinov2").unwrap();
        assert_eq!(
            (giant.embed_dim, giant.depth, giant.num_heads, giant.mlp, giant.mlp_hidden()),
            (1536, 40, 24, MlpKind::SwigluPacked, 8192)
        );
        assert_eq!(vit_preset("vit_giant_patch14_224").unwrap().mlp_hidden(), 6144);
        let deit = vit_preset("deit_base_distilled_patch16_384").unwrap();
        assert!(deit.distilled && deit.img_size == 384 && deit.prefix_tokens() == 2);
        let gap = vit_preset("vit_base_patch16_gap_224").unwrap();
        assert_eq!((gap.class_token, gap.global_pool, gap.use_fc_norm(), gap.num_heads), (false, GlobalPool::Avg, false, 16));
        assert!(vit_preset("convnext_tiny").is_none());
        assert_eq!(vit_unsupported("vit_7b_patch16_dinov3"), Some("class Eva"));
        assert_eq!(vit_unsupported("vit_small_patch16_224"), None);
    }
}
