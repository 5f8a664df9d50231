//! Files from the Hugging Face hub through hf-hub, the crate candle uses: the standard cache
//! (`HF_HOME`, `models--org--name/refs/main -> snapshots/<rev>/file`) is read first, so a cached
//! model works offline; otherwise the file is downloaded, unless offline use is asked for.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo};

use candle_core::Device;

use crate::backbone::Backbone;
use crate::entry::ModelEntry;
use crate::error::{Error, Result};

/// The weights file of timm's hub repos.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// timm's configuration file (architecture, num_features, pretrained_cfg); transformers' too
/// (model_type, hidden_size, ...).
pub const CONFIG_FILE: &str = "config.json";

/// A transformers repo's image processor settings (mean, std, sizes, resampling).
pub const PROCESSOR_FILE: &str = "preprocessor_config.json";

/// Where hub files come from.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// The hub cache directory; `None` for the standard one (`$HF_HOME/hub` or ~/.cache/huggingface/hub).
    pub cache_dir: Option<PathBuf>,
    /// Never download: a file not in the cache is an error.
    pub offline: bool,
    /// Show a progress bar while downloading.
    pub progress: bool,
    /// The hub's address (`HF_ENDPOINT`, a mirror); `None` for huggingface.co.
    pub endpoint: Option<String>,
    /// How long to keep trying when the network fails or another process holds the download.
    pub retry: HubRetry,
}

/// Waiting instead of failing: shards that start together on a cold cache all want the same
/// files (hf-hub lets one download each and gives the others up after 5 s), and a network that
/// drops a connection now and then should not end a day-long shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubRetry {
    /// Tries of a download that fails for the network's sake (the first included).
    pub attempts: u32,
    /// The wait before the second try; doubled for each next one, up to a minute.
    pub first_delay: Duration,
    /// How long to wait, in all, for another process's download of the same file.
    pub wait_for_others: Duration,
}

impl Default for HubRetry {
    /// 6 tries over about a minute; 30 minutes for another process's download.
    fn default() -> Self {
        Self { attempts: 6, first_delay: Duration::from_secs(2), wait_for_others: Duration::from_secs(30 * 60) }
    }
}

impl HubOptions {
    /// The standard cache; offline when `HF_HUB_OFFLINE` is 1 or true; `HF_ENDPOINT` when set.
    pub fn from_env() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty());
        Self { cache_dir: None, offline, progress: true, endpoint, retry: HubRetry::default() }
    }

    /// The cache folder: `cache_dir`, else `HF_HUB_CACHE`, else `$HF_HOME/hub` (or
    /// ~/.cache/huggingface/hub), as huggingface_hub resolves it.
    fn cache(&self) -> Cache {
        match (&self.cache_dir, std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty())) {
            (Some(dir), _) => Cache::new(dir.clone()),
            (None, Some(dir)) => Cache::new(PathBuf::from(dir)),
            (None, None) => Cache::from_env(),
        }
    }
}

/// The hub token for gated repos: `HF_TOKEN`, else the token file `huggingface-cli login`
/// writes (`$HF_HOME/token`). Read when a download needs it, never kept in [`HubOptions`] (whose
/// `Debug` would print it).
fn token() -> Option<String> {
    std::env::var("HF_TOKEN").ok().filter(|t| !t.trim().is_empty()).map(|t| t.trim().to_string()).or_else(|| Cache::from_env().token())
}

/// What a failed download calls for.
enum Failure {
    /// Another process holds the file's download lock: wait for it.
    Busy,
    /// The network or the server failed: try again later.
    Passing,
    /// The hub said no: trying again will not help; what to do instead.
    Permanent(String),
    /// The hub has no such repo or file (404).
    Absent(String),
}

fn classify(error: &ApiError, repo_id: &str) -> Failure {
    match error {
        ApiError::LockAcquisition(_) => Failure::Busy,
        ApiError::RequestError(request) => match **request {
            ureq::Error::StatusCode(401 | 403) => Failure::Permanent(format!(
                "the hub refused access ({error}): the repo is gated or private; accept its terms at https://huggingface.co/{repo_id} \
                 with your account and set HF_TOKEN to a token of that account (or run `huggingface-cli login`)"
            )),
            ureq::Error::StatusCode(404) => {
                Failure::Absent(format!("the hub has no such repo or file ({error}); check the name at https://huggingface.co/{repo_id}"))
            }
            ureq::Error::StatusCode(code) if (400..500).contains(&code) && code != 408 && code != 429 => {
                Failure::Permanent(format!("the download failed ({error})"))
            }
            _ => Failure::Passing,
        },
        ApiError::MissingHeader(_) | ApiError::InvalidHeader(_) => Failure::Permanent(format!("the download failed ({error})")),
        _ => Failure::Passing,
    }
}

/// The local path of `filename` in hub repo `repo_id` (for example `timm/resnet50.a1_in1k`):
/// from the cache, else downloaded, waiting for another process's download of it and retrying
/// a failing network as `options.retry` says.
pub fn hub_file(repo_id: &str, filename: &str, options: &HubOptions) -> Result<PathBuf> {
    check_repo_id(repo_id)?;
    let cache = options.cache();
    let cached = || options.cache().repo(Repo::model(repo_id.to_string())).get(filename);
    if let Some(path) = cached() {
        return Ok(path);
    }
    let cache_path = cache.path().clone();
    let missing = |why: String, absent: bool| Error::Hub {
        absent,
        repo: repo_id.to_string(),
        file: filename.to_string(),
        problem: format!(
            "{why}, and it is not in the hub cache {}; run `medxfer-zoo fetch {repo_id}` on a machine with network and copy that cache here, \
             set HF_HOME to a cache that has it, or pass the weights file directly",
            cache_path.display()
        ),
    };
    let not_cached = |why: String| missing(why, false);
    if options.offline {
        return Err(not_cached("offline (HF_HUB_OFFLINE)".to_string()));
    }
    let mut builder = ApiBuilder::from_cache(cache).with_progress(options.progress);
    if let Some(token) = token() {
        builder = builder.with_token(Some(token));
    }
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().map_err(|e| not_cached(format!("the hub client failed to start ({e})")))?;
    let repo = api.model(repo_id.to_string());
    let (mut failures, mut delay, waiting_since) = (0, options.retry.first_delay, Instant::now());
    loop {
        let error = match repo.download(filename) {
            Ok(path) => return Ok(path),
            Err(error) => error,
        };
        // Another process may have finished it meanwhile.
        if let Some(path) = cached() {
            return Ok(path);
        }
        match classify(&error, repo_id) {
            Failure::Permanent(why) => return Err(not_cached(why)),
            Failure::Absent(why) => return Err(missing(why, true)),
            Failure::Busy if waiting_since.elapsed() < options.retry.wait_for_others => {
                eprintln!("{repo_id}/{filename}: another process is downloading it; waiting");
                std::thread::sleep(options.retry.first_delay);
            }
            Failure::Busy => {
                return Err(not_cached(format!(
                    "another process held its download for over {:.0} s ({error})",
                    options.retry.wait_for_others.as_secs_f64()
                )));
            }
            Failure::Passing => {
                failures += 1;
                if failures >= options.retry.attempts {
                    return Err(not_cached(format!(
                        "the download failed {failures} time(s) (on a machine without network, HF_HUB_OFFLINE=1 fails at once instead), the last: {error}"
                    )));
                }
                eprintln!("{repo_id}/{filename}: the download failed ({error}); trying again in {:.0} s", delay.as_secs_f64());
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Refuses what cannot be a hub repo id (`owner/name`, each of letters, digits, `-`, `_` and
/// `.`, without `..`), before any cache lookup or download: a typo such as `timm/resnet50/a1`
/// would otherwise be retried as a failing download for a minute.
pub fn check_repo_id(repo_id: &str) -> Result<()> {
    let part_ok =
        |part: &str| !part.is_empty() && !part.contains("..") && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    match repo_id.split_once('/') {
        Some((owner, name)) if part_ok(owner) && part_ok(name) => Ok(()),
        _ => Err(Error::Config {
            source_name: repo_id.to_string(),
            problem: "not a registry name, and not a hub repo id (owner/name of letters, digits, '-', '_' and '.', e.g. \
                      timm/resnet50.a1_in1k)"
                .to_string(),
        }),
    }
}

/// The weights files a repo may publish, in the order timm looks for them: safetensors first,
/// then PyTorch pickles (read for their tensors only, never executed), an open_clip model's
/// last.
pub const WEIGHTS_FILES: [&str; 3] = [WEIGHTS_FILE, "pytorch_model.bin", "open_clip_pytorch_model.bin"];

/// The local path of a registry entry's pretrained weights: the first of [`WEIGHTS_FILES`] in
/// the hub cache, else the first the hub has.
pub fn weights_file(entry: &ModelEntry, options: &HubOptions) -> Result<PathBuf> {
    let cache = options.cache();
    let repo = cache.repo(Repo::model(entry.hub.clone()));
    if let Some(path) = WEIGHTS_FILES.iter().find_map(|file| repo.get(file)) {
        return Ok(path);
    }
    for file in WEIGHTS_FILES {
        match hub_file(&entry.hub, file, options) {
            Err(Error::Hub { absent: true, .. }) => continue,
            other => return other,
        }
    }
    Err(Error::Hub {
        repo: entry.hub.clone(),
        file: WEIGHTS_FILE.to_string(),
        problem: format!("the repo has none of {}; check the name at https://huggingface.co/{}", WEIGHTS_FILES.join(", "), entry.hub),
        absent: true,
    })
}

/// A registry backbone with its pretrained weights from the hub (the cache first), every
/// tensor checked.
pub fn pretrained(entry: &ModelEntry, options: &HubOptions, device: &Device) -> Result<Backbone> {
    Backbone::load_entry(entry, &weights_file(entry, options)?, device)
}

/// Whether a string names a hub repo (`org/name`) rather than a local file.
pub fn looks_like_hub_id(text: &str) -> bool {
    let path = Path::new(text);
    !path.exists() && text.split('/').count() == 2 && !text.ends_with(".safetensors")
}
