//! Where a backbone's pretrained weights come from, and what they are: a study keys its results
//! by the weights' content (a checksum), never by the backbone's name alone, so two checkpoints
//! of one architecture (`resnet50`'s registry weights and `timm/resnet50.tv_in1k`) never share
//! features, runs or a table row, and weights swapped under a name are noticed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use medxfer_zoo::{HubOptions, ModelEntry, weights_file};

/// Where pretrained weights come from.
#[derive(Debug, Clone)]
pub enum Weights {
    /// The Hugging Face hub (its cache first), each entry's `hub` repo.
    Hub(HubOptions),
    /// DIR/<backbone>.safetensors (the demo's, or weights copied by hand to an offline cluster;
    /// a hub id's `/` is written `--`).
    Dir(PathBuf),
}

/// What a weights file is: its content's checksum (what results are keyed by) and where it was
/// found (for the reader; a copied results folder keeps the checksum, not the path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsIdentity {
    /// `blake3:<hex>` of the file's bytes.
    pub checksum: String,
    /// `hub <repo>@<revision>` or `file <path>`.
    pub source: String,
}

impl WeightsIdentity {
    /// The first 16 hex digits of the checksum: enough to tell files apart in a file name.
    pub fn short(&self) -> &str {
        let hex = self.checksum.strip_prefix("blake3:").unwrap_or(&self.checksum);
        &hex[..hex.len().min(16)]
    }
}

impl Weights {
    /// The pretrained weights file of `entry`.
    pub fn file(&self, entry: &ModelEntry) -> Result<PathBuf> {
        match self {
            Weights::Hub(options) => Ok(weights_file(entry, options)?),
            Weights::Dir(dir) => {
                let path = file_in(dir, &entry.name);
                if !path.exists() {
                    anyhow::bail!("{}: no weights for {}; put them there or drop --weights to use the hub", path.display(), entry.name);
                }
                Ok(path)
            }
        }
    }

    /// The identity of `entry`'s weights (the file fetched first if need be).
    pub fn identity(&self, entry: &ModelEntry) -> Result<WeightsIdentity> {
        let path = self.file(entry)?;
        let source = match self {
            Weights::Hub(_) => format!("hub {}@{}", entry.hub, hub_revision(&path).unwrap_or("unknown")),
            Weights::Dir(_) => format!("file {}", path.display()),
        };
        Ok(WeightsIdentity { checksum: checksum(&path)?, source })
    }
}

/// Where a `--weights` folder holds `backbone`'s weights: DIR/<backbone>.safetensors.
pub fn file_in(dir: &Path, backbone: &str) -> PathBuf {
    dir.join(format!("{}.safetensors", folder_name(backbone)))
}

/// A backbone name as one path component: a hub id's `/` becomes `--`, as the hub cache writes it.
pub fn folder_name(backbone: &str) -> String {
    backbone.replace('/', "--")
}

/// The revision of a file in the hub cache (`.../snapshots/<revision>/<file>`).
fn hub_revision(path: &Path) -> Option<&str> {
    let snapshot = path.parent()?;
    (snapshot.parent()?.file_name()? == "snapshots").then(|| snapshot.file_name()?.to_str()).flatten()
}

/// `blake3:<hex>` of a file, computed once per process for a file of unchanged length and
/// modification time (a study visits each backbone once per task).
pub fn checksum(path: &Path) -> Result<String> {
    /// Length and modification time when hashed, and the checksum.
    type Stamped = (u64, std::time::SystemTime, String);
    static KNOWN: Mutex<Option<HashMap<PathBuf, Stamped>>> = Mutex::new(None);
    let metadata = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let stamp = (metadata.len(), metadata.modified().unwrap_or(std::time::UNIX_EPOCH));
    let mut known = KNOWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((len, modified, hash)) = known.get_or_insert_with(HashMap::new).get(path)
        && (*len, *modified) == stamp
    {
        return Ok(hash.clone());
    }
    let mut hasher = blake3::Hasher::new();
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    hasher.update_reader(std::io::BufReader::with_capacity(1 << 20, file)).with_context(|| format!("cannot read {}", path.display()))?;
    let hash = format!("blake3:{}", hasher.finalize().to_hex());
    known.get_or_insert_with(HashMap::new).insert(path.to_path_buf(), (stamp.0, stamp.1, hash.clone()));
    Ok(hash)
}
