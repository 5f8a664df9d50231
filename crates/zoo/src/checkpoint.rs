//! Loading a checkpoint (safetensors, or a PyTorch pickle's tensors) into a model's store, with every tensor's name and shape
//! checked: what is missing, unexpected or mis-shaped is named. BatchNorm's
//! `num_batches_tracked` counters (I64 scalars timm's hub files may hold) are ignored.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::params::ParamStore;

/// What a checkpoint held beyond what the model needs (tolerated) and what it lacked (not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyReport {
    /// Model tensors the file lacks.
    pub missing: Vec<String>,
    /// File tensors the model does not have.
    pub unexpected: Vec<String>,
    /// Tensors of both whose shapes differ, with the two shapes.
    pub mis_shaped: Vec<String>,
    /// Tensors copied into the model.
    pub loaded: usize,
}

impl KeyReport {
    /// Whether every model tensor was loaded and nothing else was offered.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mis_shaped.is_empty()
    }

    pub(crate) fn describe(&self) -> String {
        let mut lines = Vec::new();
        for (what, names) in
            [("missing from the file", &self.missing), ("not in the model", &self.unexpected), ("of the wrong shape", &self.mis_shaped)]
        {
            if !names.is_empty() {
                let shown: Vec<&str> = names.iter().take(12).map(String::as_str).collect();
                let more = if names.len() > 12 { format!(" and {} more", names.len() - 12) } else { String::new() };
                lines.push(format!("  {} tensor(s) {what}: {}{more}", names.len(), shown.join(", ")));
            }
        }
        lines.join("\n")
    }
}

/// Tensors a checkpoint may hold that no model uses (BatchNorm's step counters).
pub(crate) fn ignored(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
}

/// Reads a checkpoint into tensors on the store's device: a safetensors file, or a PyTorch
/// pickle (`torch.save`'s zip format: `pytorch_model.bin`, `open_clip_pytorch_model.bin`),
/// whose tensors are read without executing anything (candle's pickle reader interprets the
/// opcodes that describe tensors and nothing else). A pickle whose tensors sit under
/// `state_dict`, `model` or `teacher` (DINO-style training checkpoints) is read from there.
pub fn read_checkpoint(path: &Path, store: &ParamStore) -> Result<Vec<(String, Tensor)>> {
    let bad = |problem: String| Error::Checkpoint { path: path.to_path_buf(), problem };
    let mut magic = [0u8; 4];
    let magic_read = std::fs::File::open(path).and_then(|mut f| std::io::Read::read(&mut f, &mut magic));
    let magic_read = magic_read.map_err(|e| bad(format!("cannot read the file: {e}")))?;
    let mut tensors: Vec<(String, Tensor)> = if magic_read == 4 && &magic == b"PK\x03\x04" {
        read_pickle(path)?.into_iter().map(|(k, t)| Ok((k, t.to_device(store.device())?))).collect::<Result<_>>()?
    } else {
        read_safetensors(path, store.device())?
    };
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tensors)
}

/// How to get a damaged weights file again. One in the Hugging Face cache
/// (`models--ORG--NAME/snapshots/REV/FILE`, a link to `blobs/HASH`) stays there: the hub is asked
/// only for files the cache lacks, so "download it again" did nothing until the file was removed.
fn redownload(path: &Path) -> String {
    let parts: Vec<&str> = path.iter().filter_map(|p| p.to_str()).collect();
    let snapshot = parts.iter().rposition(|p| *p == "snapshots").filter(|&i| i > 0 && i + 2 < parts.len());
    let repo = snapshot.and_then(|i| parts[i - 1].strip_prefix("models--")).map(|repo| repo.replacen("--", "/", 1));
    match repo {
        Some(repo) => {
            let blob = std::fs::read_link(path)
                .ok()
                .and_then(|_| std::fs::canonicalize(path).ok())
                .map(|blob| format!(" and the blob it links to ({})", blob.display()));
            format!(
                "it is in the Hugging Face cache, which the hub is not asked again for: delete it{}, then run `medxfer-zoo fetch {repo}`",
                blob.unwrap_or_default()
            )
        }
        None => "download or export it again".into(),
    }
}

/// The largest safetensors header read (the real ones are kilobytes to a few megabytes).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// A safetensors file read tensor by tensor (an 8-byte little-endian header length, a JSON
/// header of name -> dtype, shape and data offsets, then the data): the file's bytes are never
/// held whole beside the tensors made of them, so a 4.5 GB checkpoint needs 4.5 GB, not 9.
/// Every offset and size is checked against the file before anything is read.
fn read_safetensors(path: &Path, device: &candle_core::Device) -> Result<Vec<(String, Tensor)>> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |problem: String| Error::Checkpoint { path: path.to_path_buf(), problem };
    let damaged = |what: String| bad(format!("not a valid safetensors file ({what}); it may be truncated: {}", redownload(path)));
    let mut file = std::fs::File::open(path).map_err(|e| bad(format!("cannot read the file: {e}")))?;
    let file_len = file.metadata().map_err(|e| bad(format!("cannot read the file: {e}")))?.len();
    let mut length = [0u8; 8];
    file.read_exact(&mut length).map_err(|_| damaged(format!("{file_len} bytes, shorter than the header length")))?;
    let header_len = u64::from_le_bytes(length);
    if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
        return Err(damaged(format!("a header of {header_len} bytes in a file of {file_len}")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| damaged(format!("the header: {e}")))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| damaged(format!("the header is not a JSON object: {e}")))?;
    let data_start = 8 + header_len;
    let mut entries = Vec::with_capacity(header.len());
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = match info["dtype"].as_str() {
            Some("F32") => DType::F32,
            Some("F16") => DType::F16,
            Some("BF16") => DType::BF16,
            Some("F64") => DType::F64,
            Some("I64") => DType::I64,
            Some("I32") => DType::I32,
            Some("I16") => DType::I16,
            Some("U32") => DType::U32,
            Some("U8") => DType::U8,
            other => return Err(bad(format!("tensor {name} has dtype {other:?}, which the zoo does not read"))),
        };
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .and_then(|dims| dims.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect())
            .ok_or_else(|| damaged(format!("tensor {name} has no valid shape")))?;
        let offsets = info["data_offsets"].as_array().and_then(|o| Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?)));
        let Some((start, end)) = offsets.filter(|(start, end)| start <= end) else {
            return Err(damaged(format!("tensor {name} has no valid data_offsets")));
        };
        let bytes = shape.iter().try_fold(dtype.size_in_bytes(), |n, &d| n.checked_mul(d));
        if bytes != usize::try_from(end - start).ok() {
            return Err(damaged(format!("tensor {name}: shape {shape:?} of {dtype:?} does not fill bytes {start}..{end}")));
        }
        if data_start.checked_add(end).is_none_or(|last| last > file_len) {
            return Err(damaged(format!("tensor {name} ends at byte {} of a {file_len}-byte file", data_start.saturating_add(end))));
        }
        entries.push((start, end, name.clone(), dtype, shape));
    }
    // In file order: one forward pass over the data.
    entries.sort_by_key(|entry| entry.0);
    let mut tensors = Vec::with_capacity(entries.len());
    let mut buffer = Vec::new();
    for (start, end, name, dtype, shape) in entries {
        buffer.resize((end - start) as usize, 0);
        file.seek(SeekFrom::Start(data_start + start))
            .and_then(|_| file.read_exact(&mut buffer))
            .map_err(|e| damaged(format!("tensor {name}: {e}")))?;
        tensors.push((name, Tensor::from_raw_buffer(&buffer, dtype, &shape, device)?));
    }
    Ok(tensors)
}

/// The tensors of a PyTorch zip pickle, on the CPU.
fn read_pickle(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |problem: String| Error::Checkpoint { path: path.to_path_buf(), problem };
    let read = |key: Option<&str>| -> Result<Vec<(String, Tensor)>> {
        // candle's reader indexes into what the file says without checking every length; a
        // damaged or hostile file must give an error, not bring the process down.
        let owned = path.to_path_buf();
        let key = key.map(str::to_string);
        let outcome = std::panic::catch_unwind(move || candle_core::pickle::read_all_with_key(&owned, key.as_deref()));
        match outcome {
            Ok(Ok(tensors)) => Ok(tensors),
            Ok(Err(e)) => Err(bad(format!(
                "not a readable PyTorch checkpoint ({e}); it may be truncated or in a layout other than torch.save's zip: {}, \
                 or convert it to safetensors",
                redownload(path)
            ))),
            Err(_) => {
                Err(bad(format!("a damaged PyTorch checkpoint (its pickle does not describe tensors consistently): {}", redownload(path))))
            }
        }
    };
    let tensors = read(None)?;
    if !tensors.is_empty() {
        return Ok(tensors);
    }
    for key in ["state_dict", "model", "teacher"] {
        if let Ok(tensors) = read(Some(key))
            && !tensors.is_empty()
        {
            return Ok(tensors);
        }
    }
    Err(bad("a PyTorch checkpoint with no tensors at its top level nor under state_dict, model or teacher".into()))
}

/// After building a model on preloaded tensors (`offered`, from `source`): every tensor the
/// model asked for was offered in its shape, and nothing else when `strict`; what was offered
/// and not used is dropped.
pub(crate) fn check_preloaded(store: &ParamStore, offered: &[String], source: &Path, model: &str, strict: bool) -> Result<KeyReport> {
    let requested = store.requested();
    let mut report = KeyReport { mis_shaped: store.mis_shaped(), ..Default::default() };
    let offered_set: BTreeSet<&String> = offered.iter().collect();
    let mis_shaped: BTreeSet<&str> = report.mis_shaped.iter().map(|m| m.split(' ').next().unwrap_or_default()).collect();
    report.missing = requested.iter().filter(|n| !offered_set.contains(n) && !mis_shaped.contains(n.as_str())).cloned().collect();
    report.unexpected = offered.iter().filter(|n| !requested.contains(*n)).cloned().collect();
    report.loaded = requested.len() - report.missing.len() - report.mis_shaped.len();
    for name in &report.unexpected {
        store.remove(name)?;
    }
    if !report.missing.is_empty() || !report.mis_shaped.is_empty() || (strict && !report.unexpected.is_empty()) {
        return Err(Error::KeyMismatch { path: source.to_path_buf(), model: model.to_string(), report: report.describe() });
    }
    Ok(report)
}

/// Copies the named tensors into the store. Fails, naming every problem, unless each model
/// tensor is present with its shape; extra tensors are reported, and refused when `strict`.
pub fn load_into(store: &ParamStore, tensors: &[(String, Tensor)], source: &Path, model: &str, strict: bool) -> Result<KeyReport> {
    let wanted: BTreeSet<String> = store.names().into_iter().collect();
    let mut report = KeyReport::default();
    let mut seen = BTreeSet::new();
    for (name, tensor) in tensors {
        if ignored(name) {
            continue;
        }
        let Some(var) = store.var(name) else {
            report.unexpected.push(name.clone());
            continue;
        };
        seen.insert(name.clone());
        if var.dims() != tensor.dims() {
            report.mis_shaped.push(format!("{name} (file {:?}, model {:?})", tensor.dims(), var.dims()));
            continue;
        }
        let value = if tensor.dtype() == var.dtype() { tensor.clone() } else { tensor.to_dtype(var.dtype())? };
        var.set(&value)?;
        report.loaded += 1;
    }
    report.missing = wanted.difference(&seen).cloned().collect();
    if !report.missing.is_empty() || !report.mis_shaped.is_empty() || (strict && !report.unexpected.is_empty()) {
        return Err(Error::KeyMismatch { path: source.to_path_buf(), model: model.to_string(), report: report.describe() });
    }
    Ok(report)
}
