//! Files from the Hugging Face hub through hf-hub, the crate candle uses: the standard cache
//! (`HF_HOME`, `models--org--name/refs/main -> snapshots/<rev>/file`) is read first, so a cached
//! model works offline; otherwise the file is downloaded, unless offline use is asked for.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};

use candle_core::Device;

use crate::backbone::Backbone;
use crate::entry::ModelEntry;
use crate::error::{Error, Result};

/// The weights file of timm's hub repos.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// timm's configuration file (architecture, num_features, pretrained_cfg).
pub const CONFIG_FILE: &str = "config.json";

/// Where hub files come from.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// The hub cache directory; `None` for the standard one (`$HF_HOME/hub` or ~/.cache/huggingface/hub).
    pub cache_dir: Option<PathBuf>,
    /// Never download: a file not in the cache is an error.
    pub offline: bool,
    /// Show a progress bar while downloading.
    pub progress: bool,
}

impl HubOptions {
    /// The standard cache; offline when `HF_HUB_OFFLINE` is 1 or true.
    pub fn from_env() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        Self { cache_dir: None, offline, progress: true }
    }

    fn cache(&self) -> Cache {
        match &self.cache_dir {
            Some(dir) => Cache::new(dir.clone()),
            None => Cache::from_env(),
        }
    }
}

/// The local path of `filename` in hub repo `repo_id` (for example `timm/resnet50.a1_in1k`).
pub fn hub_file(repo_id: &str, filename: &str, options: &HubOptions) -> Result<PathBuf> {
    let cache = options.cache();
    if let Some(path) = cache.repo(Repo::model(repo_id.to_string())).get(filename) {
        return Ok(path);
    }
    let cache_path = cache.path().clone();
    let not_cached = |why: String| Error::Hub {
        repo: repo_id.to_string(),
        file: filename.to_string(),
        problem: format!(
            "{why}, and it is not in the hub cache {}; run `medxfer-zoo fetch {repo_id}` on a machine with network and copy that cache here, \
             set HF_HOME to a cache that has it, or pass the weights file directly",
            cache_path.display()
        ),
    };
    if options.offline {
        return Err(not_cached("offline (HF_HUB_OFFLINE)".to_string()));
    }
    let api = ApiBuilder::from_cache(cache)
        .with_progress(options.progress)
        .build()
        .map_err(|e| not_cached(format!("the hub client failed to start ({e})")))?;
    api.model(repo_id.to_string()).download(filename).map_err(|e| not_cached(format!("the download failed ({e})")))
}

/// The local path of a registry entry's pretrained weights (its `hub` repo's weights file).
pub fn weights_file(entry: &ModelEntry, options: &HubOptions) -> Result<PathBuf> {
    hub_file(&entry.hub, WEIGHTS_FILE, options)
}

/// A registry backbone with its pretrained weights from the hub (the cache first), every
/// tensor checked.
pub fn pretrained(entry: &ModelEntry, options: &HubOptions, device: &Device) -> Result<Backbone> {
    let model = Backbone::from_entry(entry, device)?;
    model.load_weights(&weights_file(entry, options)?, true)?;
    Ok(model)
}

/// Whether a string names a hub repo (`org/name`) rather than a local file.
pub fn looks_like_hub_id(text: &str) -> bool {
    let path = Path::new(text);
    !path.exists() && text.split('/').count() == 2 && !text.ends_with(".safetensors")
}
