//! A family's timm presets as data: a TOML table of model name -> configuration, written by a
//! committed fixture script from timm itself, and an `[unsupported]` table of the family's other
//! models with the option that keeps each out. Each family's `presets.rs` holds one in a static
//! ([`family_presets`]).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// One family's presets.
#[derive(Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
pub(crate) struct PresetTable<T> {
    unsupported: BTreeMap<String, String>,
    #[serde(flatten)]
    presets: BTreeMap<String, T>,
}

impl<T: DeserializeOwned + Clone> PresetTable<T> {
    /// The table in `text`, a file compiled into the crate (`file` names it): a test of each
    /// family parses it, so a failure here is a build that was never tested.
    pub(crate) fn parse(text: &str, file: &str) -> Self {
        // Not reachable from input: the text is the crate's own, checked by its tests.
        #[allow(clippy::expect_used)]
        toml::from_str(text).expect(file)
    }

    /// The configuration timm's model `name` (a pretrained tag after `.` ignored) builds, before
    /// any `model_args`; `None` for a name the table does not list.
    pub(crate) fn get(&self, name: &str) -> Option<T> {
        self.presets.get(strip_tag(name)).cloned()
    }

    /// Why timm's model `name` is not built by the zoo (the option it lacks), when the table
    /// says so.
    pub(crate) fn unsupported(&self, name: &str) -> Option<&str> {
        self.unsupported.get(strip_tag(name)).map(String::as_str)
    }

    /// Every preset, by name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.presets.iter().map(|(name, config)| (name.as_str(), config))
    }
}

/// A family's `presets()` (its table, parsed once from `$text`, the family's
/// `include_str!("timm_presets.toml")`; `$file` names it) and its two lookups by timm name,
/// `$preset` and `$unsupported`. Each family's `presets.rs` invokes it once.
macro_rules! family_presets {
    ($config:ty, $text:expr, $file:literal, $preset:ident, $unsupported:ident) => {
        fn presets() -> &'static $crate::preset_table::PresetTable<$config> {
            static PRESETS: std::sync::OnceLock<$crate::preset_table::PresetTable<$config>> = std::sync::OnceLock::new();
            PRESETS.get_or_init(|| $crate::preset_table::PresetTable::parse($text, $file))
        }

        /// The configuration timm's model `name` (a pretrained tag after `.` ignored) builds,
        /// before any `model_args`; `None` for a name the table does not list.
        pub fn $preset(name: &str) -> Option<$config> {
            presets().get(name)
        }

        /// Why timm's model `name` of this family is not built by the zoo (the option it
        /// lacks), when the table says so.
        pub fn $unsupported(name: &str) -> Option<&'static str> {
            presets().unsupported(name)
        }
    };
}
pub(crate) use family_presets;

/// `resnet50.a1_in1k` -> `resnet50`.
fn strip_tag(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}
