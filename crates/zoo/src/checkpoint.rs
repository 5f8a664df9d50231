//! Loading a safetensors checkpoint into a model's store, with every tensor's name and shape
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

    fn describe(&self) -> String {
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

fn ignored(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
}

/// Reads a safetensors file into tensors on the store's device.
pub fn read_checkpoint(path: &Path, store: &ParamStore) -> Result<Vec<(String, Tensor)>> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::Checkpoint { path: path.to_path_buf(), problem: format!("cannot read the file: {e}") })?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, store.device()).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        problem: format!("not a valid safetensors file ({e}); it may be truncated: download or export it again"),
    })?;
    let mut tensors: Vec<(String, Tensor)> = tensors.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tensors)
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
        let value = if tensor.dtype() == DType::F32 { tensor.clone() } else { tensor.to_dtype(DType::F32)? };
        var.set(&value)?;
        report.loaded += 1;
    }
    report.missing = wanted.difference(&seen).cloned().collect();
    if !report.missing.is_empty() || !report.mis_shaped.is_empty() || (strict && !report.unexpected.is_empty()) {
        return Err(Error::KeyMismatch { path: source.to_path_buf(), model: model.to_string(), report: report.describe() });
    }
    Ok(report)
}
