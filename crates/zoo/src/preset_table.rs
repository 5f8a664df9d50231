//! A family's timm presets as data: a TOML table of model name -> configuration, written by a
//! committed fixture script from timm itself, and an `[unsupported]` table of the family's other
//! models with the option that keeps each out. Each family (`vit/presets.rs`,
//! `resnet/presets.rs`, `convnext/presets.rs`) holds one in a static.

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

/// `resnet50.a1_in1k` -> `resnet50`.
fn strip_tag(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}
