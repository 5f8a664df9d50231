//! What a dataset folder holds against what its TOML expects: images per task label, the
//! images of dropped classes, every problem at once (every image decoded unless asked to be
//! fast, so a corrupt or truncated file is found before a study meets it), and optionally exact
//! duplicate files.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use crate::catalog::DatasetSpec;
use crate::decode::load_rgb8;
use crate::error::Result;
use crate::layouts;
use crate::record::Problem;

/// How thorough a check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Decode every image (finds corrupt and truncated files; reads every byte).
    pub decode: bool,
    /// Hash every file and count exact duplicates.
    pub duplicates: bool,
}

impl Default for CheckOptions {
    /// Every image decoded, no duplicate hashing.
    fn default() -> Self {
        Self { decode: true, duplicates: false }
    }
}

/// Files whose bytes repeat another's: reported, not problems (the real Kaggle MRI set has 237).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicates {
    /// Files beyond the first of each content.
    pub files: usize,
    /// Contents held by more than one file.
    pub groups: usize,
}

/// A dataset folder as found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// Images the task uses.
    pub images: usize,
    /// Task label (as text) -> images.
    pub per_label: BTreeMap<String, usize>,
    /// Images of classes the label map drops.
    pub dropped: usize,
    /// Every problem: the layout's (sorted by path), then with `decode` the images that do not
    /// decode.
    pub problems: Vec<Problem>,
    /// Images decoded (0 without `decode`).
    pub decoded: usize,
    /// Exact duplicates, when asked for.
    pub duplicates: Option<Duplicates>,
}

/// Checks the dataset `spec` under `root`.
pub fn check_dataset(spec: &DatasetSpec, root: &Path, options: CheckOptions) -> Result<CheckReport> {
    let mut scan = layouts::scan_dataset(spec, root)?;
    let decoded = if options.decode { scan.records.len() } else { 0 };
    if options.decode {
        let corrupt: Vec<Problem> = scan
            .records
            .par_iter()
            .filter_map(|r| load_rgb8(&root.join(&r.path)).err().map(|e| Problem { path: r.path.clone().into(), problem: e.to_string() }))
            .collect();
        scan.problems.extend(corrupt);
    }
    let duplicates = options.duplicates.then(|| {
        let hashes: Vec<Option<String>> = scan
            .records
            .par_iter()
            .map(|r| std::fs::read(root.join(&r.path)).ok().map(|b| blake3::hash(&b).to_hex().to_string()))
            .collect();
        let mut groups: BTreeMap<String, usize> = BTreeMap::new();
        for hash in hashes.into_iter().flatten() {
            *groups.entry(hash).or_default() += 1;
        }
        Duplicates { files: groups.values().map(|n| n - 1).sum(), groups: groups.values().filter(|&&n| n > 1).count() }
    });
    let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
    for record in &scan.records {
        *per_label.entry(record.label.to_string()).or_default() += 1;
    }
    Ok(CheckReport { images: scan.records.len(), per_label, dropped: scan.dropped, problems: scan.problems, decoded, duplicates })
}
