//! A split written next to the results: `manifest.csv` (path,label,group,split) and
//! `manifest.json` (where it came from, counts, a checksum of the files it covers), so every
//! later step and every rerun uses the same split. Both are written atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::split::{Entry, Leakage, Part, Source};

/// The split: one `path,label,group,split` row per image.
pub const MANIFEST_CSV: &str = "manifest.csv";
/// Where the split came from: [`ManifestInfo`].
pub const MANIFEST_JSON: &str = "manifest.json";

/// What manifest.json records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestInfo {
    /// The dataset split.
    pub dataset: String,
    /// Its task.
    pub task: String,
    /// How the split was made.
    pub source: Source,
    /// The seed of a faithful or grouped split.
    pub seed: u64,
    /// Images in all parts.
    pub images: usize,
    /// Split name -> task label -> count.
    pub counts: BTreeMap<String, BTreeMap<u32, usize>>,
    /// blake3 over the sorted "path<TAB>byte size" lines of the covered files.
    pub files_checksum: String,
    /// How much the split leaks across groups.
    pub leakage: Option<LeakageInfo>,
}

/// [`Leakage`] as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeakageInfo {
    /// Groups (patients, lesions, slides) in all.
    pub groups: usize,
    /// Groups with images in more than one part.
    pub groups_across_splits: usize,
    /// Validation images whose group also has training images.
    pub val_images_sharing_a_train_group: usize,
    /// Test images whose group also has training images.
    pub test_images_sharing_a_train_group: usize,
}

impl From<Leakage> for LeakageInfo {
    fn from(l: Leakage) -> Self {
        Self {
            groups: l.groups,
            groups_across_splits: l.groups_across_splits,
            val_images_sharing_a_train_group: l.val_images_sharing_a_train_group,
            test_images_sharing_a_train_group: l.test_images_sharing_a_train_group,
        }
    }
}

/// Counts per split and label.
pub fn split_counts(entries: &[Entry]) -> BTreeMap<String, BTreeMap<u32, usize>> {
    let mut counts: BTreeMap<String, BTreeMap<u32, usize>> = BTreeMap::new();
    for part in Part::ALL {
        for entry in entries.iter().filter(|e| e.split == part) {
            *counts.entry(part.name().to_string()).or_default().entry(entry.label).or_default() += 1;
        }
    }
    counts
}

/// The checksum of the files `entries` name, under `root`; a missing file is an error.
pub fn files_checksum(root: &Path, entries: &[Entry]) -> Result<String> {
    let mut lines: Vec<String> = Vec::with_capacity(entries.len());
    for entry in entries {
        let path = root.join(&entry.path);
        let size = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
        lines.push(format!("{}\t{size}\n", entry.path));
    }
    lines.sort();
    let mut hasher = blake3::Hasher::new();
    lines.iter().for_each(|line| {
        hasher.update(line.as_bytes());
    });
    Ok(hasher.finalize().to_hex().to_string())
}

/// Writes manifest.csv and manifest.json into `dir` (created if needed); returns their paths.
pub fn write_manifest(dir: &Path, entries: &[Entry], info: &ManifestInfo) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut writer = csv::Writer::from_writer(Vec::new());
    for entry in entries {
        writer.serialize(entry).map_err(|e| Error::format(dir.join(MANIFEST_CSV), e.to_string()))?;
    }
    let csv_bytes = writer.into_inner().map_err(|e| Error::format(dir.join(MANIFEST_CSV), e.to_string()))?;
    let (csv_path, json_path) = (dir.join(MANIFEST_CSV), dir.join(MANIFEST_JSON));
    medxfer_durable::write_atomic(&csv_path, &csv_bytes)?;
    let json = serde_json::to_vec_pretty(info).map_err(|e| Error::format(&json_path, e.to_string()))?;
    medxfer_durable::write_atomic(&json_path, &json)?;
    Ok((csv_path, json_path))
}

/// The manifest.json beside the manifest in `dir`, when there is one that reads (a split made by
/// hand, or by another tool, may have none).
pub fn read_manifest_info(dir: &Path) -> Option<ManifestInfo> {
    let bytes = std::fs::read(dir.join(MANIFEST_JSON)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Reads the manifest.csv at `path` back as a manifest of `dataset`: refused when the
/// manifest.json beside it says it is another dataset's (a BreakHis split given with
/// `--dataset bach` failed on its first image, "No such file", with the path under the wrong
/// root).
pub fn read_manifest_of(path: &Path, dataset: &str) -> Result<Vec<Entry>> {
    let info = path.parent().and_then(read_manifest_info);
    if let Some(info) = info.filter(|info| info.dataset != dataset) {
        return Err(Error::format(
            path,
            format!(
                "this is a manifest of {} (task {}), not of {dataset}: give that dataset, or a manifest of {dataset}",
                info.dataset, info.task
            ),
        ));
    }
    read_manifest(path)
}

/// Whether the images under `root` are still the files the split in `dir` was made from: the
/// checksum of their paths and sizes against the one its manifest.json records (a copy of the
/// data resized or recompressed in place since, or another release of it, trains under the same
/// names). `None` when they are, where there is no manifest.json to compare with, or where some
/// images are not there (a run of one part needs that part's alone, and its caller checks them);
/// else what differs, for a warning.
pub fn changed_manifest_files(dir: &Path, root: &Path) -> Result<Option<String>> {
    let Some(info) = read_manifest_info(dir) else { return Ok(None) };
    let entries = read_manifest(&dir.join(MANIFEST_CSV))?;
    // An image that cannot be read for its size is not there (its caller refuses those it needs).
    match files_checksum(root, &entries) {
        Ok(checksum) if checksum != info.files_checksum => {}
        _ => return Ok(None),
    }
    Ok(Some(format!(
        "{}: the split's {} images are not the files it was made from: their sizes are not those {} recorded (images replaced, resized or recompressed since the split, or another release of {}); they are used as they are now, and the results describe them",
        root.display(),
        entries.len(),
        dir.join(MANIFEST_JSON).display(),
        info.dataset
    )))
}

/// Reads a manifest.csv back.
pub fn read_manifest(path: &Path) -> Result<Vec<Entry>> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| Error::io(path, e))?;
    reader
        .deserialize()
        .enumerate()
        .map(|(line, row)| row.map_err(|e| Error::format(path, format!("line {}: {e} (expected path,label,group,split)", line + 2))))
        .collect()
}
