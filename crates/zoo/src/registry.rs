//! The model registry: one TOML file per backbone in `models/` (name, hub repo, architecture,
//! preprocessing). Adding a file adds a backbone; nothing about the ten is written in code.
//! The files of `models/` itself are the study's backbones (the paper's ten: what `all` means);
//! each subfolder is a named group of more (`models/foundation/`: the medical foundation
//! models), taken by name or by the group's name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::entry::ModelEntry;
use crate::error::{Error, Result};
use crate::hub::{CONFIG_FILE, HubOptions, PROCESSOR_FILE, hub_file};
use crate::timm_config::{MAX_CLASSES, entry_from_timm_config};
use crate::transformers_config::{entry_from_transformers_config, is_transformers_config};

/// The backbones of a models/ directory, sorted by name.
#[derive(Debug, Clone)]
pub struct Registry {
    entries: Vec<ModelEntry>,
    groups: BTreeMap<String, Vec<ModelEntry>>,
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

    /// Reads every `*.toml` of `dir` (the study's backbones) and of each of its subfolders (a
    /// group named by the folder); each must describe a consistent backbone, every name once.
    pub fn load(dir: &Path) -> Result<Self> {
        let config_error = |path: &Path, problem: String| Error::Config { source_name: path.display().to_string(), problem };
        let (entries, subfolders) = Self::read_folder(dir)?;
        let mut groups = BTreeMap::new();
        for folder in subfolders {
            let name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let (group, _) = Self::read_folder(&folder)?;
            if name == "all" || entries.iter().any(|e| e.name == name) {
                return Err(config_error(&folder, format!("a group may not be named '{name}': a backbone or 'all' has that name")));
            }
            groups.insert(name, group);
        }
        let mut names: Vec<&str> = entries.iter().chain(groups.values().flatten()).map(|e| e.name.as_str()).collect();
        if names.is_empty() {
            // Else `list` printed an empty table and every name was "not in the registry; known
            // backbones: " (nothing): the folder is the mistake, not the name.
            return Err(config_error(
                dir,
                "no model entry here (no *.toml in it or its subfolders); give --models (or MEDXFER_MODELS) the workspace's models/ directory".into(),
            ));
        }
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(config_error(dir, format!("two files name the backbone '{}'", pair[0])));
        }
        Ok(Self { entries, groups })
    }

    /// The entries of one folder's `*.toml` files, sorted by name, and its subfolders.
    fn read_folder(dir: &Path) -> Result<(Vec<ModelEntry>, Vec<PathBuf>)> {
        let config_error = |path: &Path, problem: String| Error::Config { source_name: path.display().to_string(), problem };
        let listing = std::fs::read_dir(dir)
            .map_err(|e| config_error(dir, format!("cannot list the model registry: {e}; set MEDXFER_MODELS to the models/ directory")))?;
        let mut entries = Vec::new();
        let mut subfolders = Vec::new();
        for item in listing {
            let path = item.map_err(|e| config_error(dir, e.to_string()))?.path();
            if path.is_dir() && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                subfolders.push(path);
                continue;
            }
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
            if entry.num_classes == 0 && !entry.architecture.builds_headless() {
                return Err(config_error(&path, "num_classes is 0; only the ViT family is built without a pretrained head".into()));
            }
            if entry.num_classes > MAX_CLASSES {
                return Err(config_error(
                    &path,
                    format!("num_classes is {}; expected 0 (no pretrained head) to {MAX_CLASSES}", entry.num_classes),
                ));
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
        subfolders.sort();
        Ok((entries, subfolders))
    }

    /// The entry of a registry name or hub id; a hub id the registry does not list is
    /// described from its repo's timm `config.json` (from the cache, or downloaded).
    pub fn resolve(&self, name_or_hub: &str, hub: &HubOptions) -> Result<ModelEntry> {
        match self.get(name_or_hub) {
            Ok(entry) => return Ok(entry.clone()),
            Err(error) if !name_or_hub.contains('/') => return Err(error),
            Err(_) => {}
        }
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path)
                .map_err(|e| Error::Config { source_name: path.display().to_string(), problem: format!("cannot read: {e}") })
        };
        let text = read(hub_file(name_or_hub, CONFIG_FILE, hub)?)?;
        if is_transformers_config(&text) {
            // The image processor's settings, when the repo has them (else ImageNet's).
            let processor = match hub_file(name_or_hub, PROCESSOR_FILE, hub) {
                Ok(path) => Some(read(path)?),
                Err(Error::Hub { absent: true, .. }) => None,
                Err(error) => return Err(error),
            };
            return entry_from_transformers_config(name_or_hub, &text, processor.as_deref());
        }
        entry_from_timm_config(name_or_hub, &text)
    }

    /// The study's backbones (the files of `models/` itself), sorted by name.
    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    /// The groups of more backbones (`models/<group>/`), by name.
    pub fn groups(&self) -> &BTreeMap<String, Vec<ModelEntry>> {
        &self.groups
    }

    /// The backbones a list of names asks for: `all` (the study's backbones), a group's name
    /// (its backbones), a registry name or hub id (that one; [`Registry::resolve`]).
    pub fn select(&self, names: &[String], hub: &HubOptions) -> Result<Vec<ModelEntry>> {
        // Each once by name (a hub id outside the registry is built under that name).
        self.names(names)?.iter().map(|name| self.resolve(name, hub)).collect()
    }

    /// The names [`Registry::select`] gives the backbones `names` asks for, without asking the hub:
    /// a hub id outside the registry is named by itself. For checks that must not need the
    /// network (a Slurm login node checking a `--weights` folder before submitting).
    pub fn names(&self, names: &[String]) -> Result<Vec<String>> {
        let mut selected: Vec<String> = Vec::new();
        for name in names {
            let more: Vec<String> = match (name.as_str(), self.groups.get(name)) {
                ("all", _) => self.entries.iter().map(|e| e.name.clone()).collect(),
                (_, Some(group)) => group.iter().map(|e| e.name.clone()).collect(),
                _ => match self.get(name) {
                    Ok(entry) => vec![entry.name.clone()],
                    Err(_) if name.contains('/') => vec![name.clone()],
                    Err(error) => return Err(error),
                },
            };
            for name in more {
                if !selected.contains(&name) {
                    selected.push(name);
                }
            }
        }
        Ok(selected)
    }

    /// The entry of a name or of a hub repo id, in `models/` or one of its groups.
    pub fn get(&self, name_or_hub: &str) -> Result<&ModelEntry> {
        let mut all = self.entries.iter().chain(self.groups.values().flatten());
        all.find(|e| e.name == name_or_hub || e.hub == name_or_hub).ok_or_else(|| Error::Config {
            source_name: name_or_hub.to_string(),
            problem: format!(
                "not in the registry; known backbones: {}; groups: all{}",
                self.entries.iter().chain(self.groups.values().flatten()).map(|e| e.name.as_str()).collect::<Vec<_>>().join(", "),
                self.groups.keys().map(|g| format!(", {g}")).collect::<String>()
            ),
        })
    }
}
