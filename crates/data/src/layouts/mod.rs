//! One reader per on-disk layout (../shared/docs/DATASETS.md). Each turns a root folder into a
//! [`Scan`]: the records the task uses, the count it dropped on purpose, and every problem met,
//! so that `check` can list them all at once. A missing root or index file is an error.

mod bach;
mod brain_kaggle;
mod breakhis;
mod cheng;
mod isic;
mod nins;
mod pad;
mod table;

use std::path::Path;

pub use breakhis::{BreakhisName, parse_file_name as parse_breakhis_name};
pub use cheng::{ChengSlice, read_cheng};
pub use isic::{CLASSES as ISIC_CLASSES, GROUND_TRUTH as ISIC_GROUND_TRUTH, METADATA as ISIC_METADATA};
pub use pad::{COLUMNS as PAD_COLUMNS, METADATA as PAD_METADATA};

use crate::catalog::{DatasetSpec, LayoutKind};
use crate::error::{Error, Result};
use crate::files::FileIndex;
use crate::record::{Record, Scan};

/// Reads the dataset under `root` with the reader its TOML names.
pub fn scan_dataset(spec: &DatasetSpec, root: &Path) -> Result<Scan> {
    let index = FileIndex::build(root)?;
    let scan = match spec.layout {
        LayoutKind::Isic2019 => isic::scan(spec, &index)?,
        LayoutKind::PadUfes20 => pad::scan(spec, &index)?,
        LayoutKind::Breakhis => breakhis::scan(spec, &index),
        LayoutKind::Bach => bach::scan(spec, &index)?,
        LayoutKind::BrainTumorKaggle => brain_kaggle::scan(spec, &index)?,
        LayoutKind::Cheng => cheng::scan(spec, &index)?,
        LayoutKind::Nins => nins::scan(spec, &index)?,
    };
    Ok(refuse_names_not_utf8(scan, &index).finish())
}

/// An image the layout takes whose name is not UTF-8 is a problem, not a record: its path in a
/// manifest (text) would name another file, and `check` said "cannot read: No such file or
/// directory" of a file the user can see (seen). A layout's own problem with such a file (it
/// could not be read for its hash) gives way to this one, which says what to do.
fn refuse_names_not_utf8(mut scan: Scan, index: &FileIndex) -> Scan {
    let not_utf8 = |path: &str| index.not_utf8.contains(path);
    let (unnamed, records): (Vec<Record>, Vec<Record>) = scan.records.into_iter().partition(|r| not_utf8(&r.path));
    scan.records = records;
    let mut named: Vec<String> = unnamed.into_iter().map(|r| r.path).collect();
    named.extend(scan.problems.extract_if(.., |p| p.path.to_str().is_some_and(not_utf8)).filter_map(|p| p.path.to_str().map(String::from)));
    named.sort();
    named.dedup();
    for path in named {
        scan.problem(path, "its name is not valid UTF-8 (shown here with \u{FFFD}), which the split manifests cannot hold; rename it");
    }
    scan
}

/// Adds an image of `class` to the scan: a record when the label map keeps the class, a drop
/// when it drops it, a problem when the class is unknown.
fn admit(scan: &mut Scan, spec: &DatasetSpec, path: &str, class: &str, group: String, origin: &str) {
    match spec.label_of(class) {
        Some(label) => scan.records.push(Record { path: path.into(), class: class.into(), label, group, origin: origin.into() }),
        None if spec.knows(class) => scan.dropped += 1,
        None => {
            let other_download = spec.lookalike_of(class).map_or(String::new(), |lookalike| {
                format!("; a class of {}, not of {}: the study's is at {}", lookalike.title, spec.title, spec.source)
            });
            scan.problem(
                path,
                format!(
                    "class {class:?} is not in {}.toml (mapped: {}){other_download}",
                    spec.name,
                    spec.labels.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        }
    }
}

/// Where a problem's file is: an image's path is relative to the root; the layout's own files
/// (the root itself, a ground-truth CSV) are given with the root already in front, which a
/// second join would repeat for a relative root (`data/isic/data/isic/...csv`).
fn located(root: &Path, path: &Path) -> std::path::PathBuf {
    if path.is_absolute() || path.starts_with(root) { path.to_path_buf() } else { root.join(path) }
}

/// The records of the dataset under `root`, for a step that needs it whole: a missing folder or
/// any problem is an error naming the first problem and the command that lists them all.
pub fn scan_clean(spec: &DatasetSpec, root: &Path) -> Result<Vec<Record>> {
    if !root.is_dir() {
        return Err(Error::Config {
            source_name: root.display().to_string(),
            problem: format!("no such folder; put the {} dataset there (see datasets/README.md)", spec.name),
        });
    }
    let scan = scan_dataset(spec, root)?;
    match scan.problems.first() {
        None => Ok(scan.records),
        Some(first) => Err(Error::Format {
            path: located(root, &first.path),
            problem: format!(
                "{}; {} has {} problem(s) in all: `medxfer-data check {} --root {}` lists them",
                first.problem,
                spec.name,
                scan.problems.len(),
                spec.name,
                root.display()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_problem_is_located_once_under_a_relative_or_absolute_root() {
        let relative = Path::new("data/isic");
        assert_eq!(located(relative, Path::new("ISIC_0000000.jpg")), Path::new("data/isic/ISIC_0000000.jpg"));
        assert_eq!(located(relative, relative), relative);
        assert_eq!(located(relative, &relative.join("truth.csv")), Path::new("data/isic/truth.csv"));
        let absolute = Path::new("/data/isic");
        assert_eq!(located(absolute, Path::new("a/b.jpg")), Path::new("/data/isic/a/b.jpg"));
        assert_eq!(located(absolute, &absolute.join("truth.csv")), Path::new("/data/isic/truth.csv"));
    }
}
