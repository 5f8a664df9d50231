//! timm's RegNet model names as configurations, from `timm_presets.toml`: every model of timm's
//! `regnet.py` whose options the zoo's RegNet has, with its `model_cfgs` entry (written by
//! tests/fixtures/make_convnet_fixtures.py, which reads that table; the test of every preset's
//! resolved stages against timm's is in tests/convnet_family.rs), and the others with the option
//! that keeps them out.

use std::sync::OnceLock;

use super::RegNetConfig;
use crate::preset_table::PresetTable;

/// What [`regnet_preset`] understands, for error messages.
pub const REGNET_PRESETS: &str = "timm's RegNet-X and RegNet-Y presets (crates/zoo/src/regnet/timm_presets.toml lists them)";

fn presets() -> &'static PresetTable<RegNetConfig> {
    static PRESETS: OnceLock<PresetTable<RegNetConfig>> = OnceLock::new();
    PRESETS.get_or_init(|| PresetTable::parse(include_str!("timm_presets.toml"), "regnet/timm_presets.toml"))
}

/// The configuration timm's model `name` (a pretrained tag after `.` ignored) builds, before
/// any `model_args`; `None` for a name the table does not list.
pub fn regnet_preset(name: &str) -> Option<RegNetConfig> {
    presets().get(name)
}

/// Why timm's model `name` of this family is not built by the zoo (the option it lacks), when
/// the table says so.
pub fn regnet_unsupported(name: &str) -> Option<&'static str> {
    presets().unsupported(name)
}
