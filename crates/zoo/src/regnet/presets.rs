//! timm's RegNet model names as configurations, from `timm_presets.toml`: every model of timm's
//! `regnet.py` whose options the zoo's RegNet has, with its `model_cfgs` entry (written by
//! tests/fixtures/make_convnet_fixtures.py, which reads that table; the test of every preset's
//! resolved stages against timm's is in tests/convnet_family.rs), and the others with the option
//! that keeps them out.

use super::RegNetConfig;
use crate::preset_table::family_presets;

/// What [`regnet_preset`] understands, for error messages.
pub const REGNET_PRESETS: &str = "timm's RegNet-X and RegNet-Y presets (crates/zoo/src/regnet/timm_presets.toml lists them)";

family_presets!(RegNetConfig, include_str!("timm_presets.toml"), "regnet/timm_presets.toml", regnet_preset, regnet_unsupported);
