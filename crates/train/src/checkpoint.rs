//! Run checkpoints: one safetensors file per epoch holding the model's tensors, the optimizer's
//! momentum buffers (`optimizer.<name>`) and the run's state as JSON metadata, written to a
//! temporary file and renamed, so a file either is complete or does not exist. The two newest
//! are kept: a checkpoint that fails to load (truncated, corrupt) falls back to the one before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// The metadata key holding the run state.
pub const STATE_KEY: &str = "medxfer.run_state";
/// The prefix of optimizer tensors.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub model: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    /// The run state's JSON.
    pub state: String,
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.to_path_buf(), problem: e.to_string() }
}

/// The file of epoch `epoch` (1-based count of completed epochs) in `dir`.
pub fn epoch_path(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(format!("epoch-{epoch:04}.safetensors"))
}

/// Writes `tensors` (+ metadata) to `path` atomically.
pub fn write_tensors(path: &Path, tensors: &HashMap<String, Tensor>, metadata: HashMap<String, String>) -> Result<()> {
    // Tensors must be contiguous and on the CPU for serialisation.
    let cpu: Vec<(String, Tensor)> =
        tensors.iter().map(|(name, t)| Ok((name.clone(), t.to_device(&Device::Cpu)?.contiguous()?))).collect::<Result<_>>()?;
    let pending = medxfer_durable::PendingFile::new(path)?;
    safetensors::serialize_to_file(cpu.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata), pending.path())
        .map_err(|e| io_error(pending.path(), e))?;
    Ok(pending.commit()?)
}

/// Reads a safetensors file with its metadata; any damage is an error naming the file.
pub fn read_tensors(path: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::Checkpoint(format!("{}: unreadable header ({e})", path.display())))?;
    let info = metadata.metadata().clone().unwrap_or_default();
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?;
    Ok((tensors, info))
}

/// Writes epoch `epoch`'s checkpoint and deletes all but the two newest.
pub fn save(dir: &Path, epoch: usize, model: &HashMap<String, Tensor>, optimizer: &HashMap<String, Tensor>, state: &str) -> Result<()> {
    let mut tensors = model.clone();
    for (name, buffer) in optimizer {
        tensors.insert(format!("{OPTIMIZER_PREFIX}{name}"), buffer.clone());
    }
    write_tensors(&epoch_path(dir, epoch), &tensors, HashMap::from([(STATE_KEY.to_string(), state.to_string())]))?;
    for (_, path) in list(dir)?.into_iter().rev().skip(2) {
        // Another process on the same run may have removed it first.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(&path, e)),
            _ => {}
        }
    }
    Ok(())
}

/// Epoch checkpoints in `dir`, oldest first.
fn list(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let epoch = name.strip_prefix("epoch-")?.strip_suffix(".safetensors")?.parse().ok()?;
            Some((epoch, path))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The run state of the newest checkpoint of `dir` whose header reads, from the header alone
/// (the tensors are not read): what a resume continues from, for readers such as the halving
/// promotions and `--plan` that must agree with it even when a kill fell between a checkpoint
/// and the history file written after it.
pub fn newest_state(dir: &Path) -> Option<String> {
    use std::io::Read;
    let list = list(dir).ok()?;
    list.into_iter().rev().find_map(|(_, path)| {
        let mut file = std::fs::File::open(&path).ok()?;
        let file_length = file.metadata().ok()?.len();
        let mut length = [0u8; 8];
        file.read_exact(&mut length).ok()?;
        // A header is a few kilobytes; a length past 64 MiB is damage, not a header.
        let length = u64::from_le_bytes(length).min(64 << 20);
        let mut header = Vec::new();
        file.take(length).read_to_end(&mut header).ok()?;
        let header_length = header.len() as u64;
        let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
        // Whole, as a resume would find it: the file reaches the end of its last tensor.
        let data_end = header.as_object()?.values().filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64()).max().unwrap_or(0);
        if file_length < 8 + header_length + data_end {
            return None;
        }
        header.get("__metadata__")?.get(STATE_KEY)?.as_str().map(str::to_string)
    })
}

/// The newest checkpoint of `dir` that loads, with a warning (returned) for each newer one that
/// did not; None when there is none.
pub fn latest(dir: &Path, device: &Device) -> Result<(Option<Checkpoint>, Vec<String>)> {
    let mut warnings = Vec::new();
    for (_, path) in list(dir)?.into_iter().rev() {
        match read_tensors(&path, device) {
            Ok((tensors, info)) => {
                let Some(state) = info.get(STATE_KEY).cloned() else {
                    warnings.push(format!("{}: no run state in the metadata; skipped", path.display()));
                    continue;
                };
                let (optimizer, model): (HashMap<_, _>, HashMap<_, _>) =
                    tensors.into_iter().partition(|(n, _)| n.starts_with(OPTIMIZER_PREFIX));
                let optimizer = optimizer.into_iter().map(|(n, t)| (n[OPTIMIZER_PREFIX.len()..].to_string(), t)).collect();
                return Ok((Some(Checkpoint { path, model, optimizer, state }), warnings));
            }
            Err(e) => warnings.push(format!("{e}; falling back to the previous checkpoint")),
        }
    }
    Ok((None, warnings))
}
