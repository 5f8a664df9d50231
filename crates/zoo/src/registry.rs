//! The model registry: one TOML file per backbone in `models/` (name, hub repo, architecture,
//! preprocessing). Adding a file adds a backbone; nothing about the ten is written in code.

use std::path::{Path, PathBuf};

use crate::entry::ModelEntry;
use crate::error::{Error, Result};
use crate::hub::{CONFIG_FILE, HubOptions, hub_file};
use crate::timm_config::{MAX_CLASSES, entry_from_timm_config};

/// The backbones of a models/ directory, sorted by name.
#[derive(Debug, Clone)]
pub struct Registry {
    entries: Vec<ModelEntry>,
}

impl Registry {
    /// The workspace's models/ directory, or `MEDXFER_MODELS` when set.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("MEDXFER_MODELS").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
    }

    /// Reads the registry of [`Registry::default_dir`].
    pub fn load_default() -> Result<Self> {
        Self::load(&Self::default_dir())
    }

    /// Reads every `*.toml` of `dir`; each must describe a consistent backbone.
    pub fn load(dir: &Path) -> Result<Self> {
        let config_error = |path: &Path, problem: String| Error::Config { source_name: path.display().to_string(), problem };
        let listing = std::fs::read_dir(dir)
            .map_err(|e| config_error(dir, format!("cannot list the model registry: {e}; set MEDXFER_MODELS to the models/ directory")))?;
        let mut entries = Vec::new();
        for item in listing {
            let path = item.map_err(|e| config_error(dir, e.to_string()))?.path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| config_error(&path, format!("cannot read: {e}")))?;
            let entry: ModelEntry = toml::from_str(&text).map_err(|e| config_error(&path, format!("not a valid model entry: {e}")))?;
            if entry.architecture.num_features() != entry.feature_dim {
                return Err(config_error(
                    &path,
                    format!(
                        "feature_dim is {} but the architecture gives {} features",
                        entry.feature_dim,
                        entry.architecture.num_features()
                    ),
                ));
            }
            if entry.name.is_empty() || entry.name.contains(['/', '\\']) || entry.name.starts_with('.') {
                return Err(config_error(
                    &path,
                    format!("name '{}' must be a plain name (no '/', which hub ids have, and not starting with '.')", entry.name),
                ));
            }
            entry.architecture.check().map_err(|problem| config_error(&path, problem))?;
            entry.preprocessing.check().map_err(|problem| config_error(&path, problem))?;
            if !(1..=MAX_CLASSES).contains(&entry.num_classes) {
                return Err(config_error(&path, format!("num_classes is {}; expected 1 to {MAX_CLASSES}", entry.num_classes)));
            }
            if entry.architecture.head_key() != entry.head {
                return Err(config_error(
                    &path,
                    format!("head is '{}' but this family's classifier is '{}'", entry.head, entry.architecture.head_key()),
                ));
            }
            entries.push(entry);
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(pair) = entries.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(config_error(dir, format!("two files name the backbone '{}'", pair[0].name)));
        }
        Ok(Self { entries })
    }

    /// The entry of a registry name or hub id; a hub id the registry does not list is
    /// described from its repo's timm `config.json` (from the cache, or downloaded).
    pub fn resolve(&self, name_or_hub: &str, hub: &HubOptions) -> Result<ModelEntry> {
        match self.get(name_or_hub) {
            Ok(entry) => return Ok(entry.clone()),
            Err(error) if !name_or_hub.contains('/') => return Err(error),
            Err(_) => {}
        }
        let path = hub_file(name_or_hub, CONFIG_FILE, hub)?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Config { source_name: path.display().to_string(), problem: format!("cannot read: {e}") })?;
        entry_from_timm_config(name_or_hub, &text)
    }

    /// Every entry, sorted by name.
    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    /// The entry of a name or of a hub repo id.
    pub fn get(&self, name_or_hub: &str) -> Result<&ModelEntry> {
        self.entries.iter().find(|e| e.name == name_or_hub || e.hub == name_or_hub).ok_or_else(|| Error::Config {
            source_name: name_or_hub.to_string(),
            problem: format!(
                "not in the registry; known backbones: {}",
                self.entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        })
    }
}
