//! Train/val/test splits from three sources, all giving one [`Manifest`]:
//! `authors` (the reference's split CSVs, re-rooted), `faithful` (the reference procedure,
//! seeded) and `grouped` (the same fractions over groups: patients, lesions, duplicate hashes,
//! so that no group spans two splits).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::catalog::{DatasetSpec, FaithfulSplit, TaskSpec};
use crate::error::{Error, Result};
use crate::record::{Problem, Record};

/// Which part of a dataset an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Trains the model.
    Train,
    /// Chooses the kept epoch and A_opt.
    Val,
    /// Measures the kept model.
    Test,
}

impl Part {
    /// The three parts, in order.
    pub const ALL: [Part; 3] = [Part::Train, Part::Val, Part::Test];

    /// `train`, `val` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Val => "val",
            Part::Test => "test",
        }
    }
}

/// Where a split came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The reference's own split CSVs.
    Authors,
    /// The reference's procedure, regenerated with a seed.
    Faithful,
    /// Leakage-free: the same fractions over groups.
    Grouped,
}

impl Source {
    /// As `--source` and manifest.json spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Authors => "authors",
            Source::Faithful => "faithful",
            Source::Grouped => "grouped",
        }
    }
}

/// One image of a split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The file, relative to the dataset root.
    pub path: String,
    /// The task label.
    pub label: u32,
    /// What the grouped split keeps together.
    pub group: String,
    /// The part it belongs to.
    pub split: Part,
    /// Of a DICOM file of several frames whose frames are each an image (`--dicom-frame all`),
    /// this entry's frame, counted from 1; `None` for a file read as one image. Never in a
    /// study's manifest: the study reads one image a file.
    #[serde(skip)]
    pub frame: Option<u32>,
}

/// Assigns every record of an ID dataset to train/val/test by the task's faithful rule.
pub fn faithful_split(records: &[Record], rule: &FaithfulSplit, seed: u64) -> Result<Vec<Entry>> {
    split_units(records, rule, seed, |record| record.path.clone())
}

/// The faithful rule's fractions over groups instead of images: no group spans two splits.
/// For a by-origin rule, test images whose group also occurs in the train origin (exact
/// duplicates of training images) are left out of the test set.
pub fn grouped_split(records: &[Record], rule: &FaithfulSplit, seed: u64) -> Result<Vec<Entry>> {
    let mut entries = split_units(records, rule, seed, |record| record.group.clone())?;
    if let FaithfulSplit::ByOrigin { .. } = rule {
        let trained: BTreeSet<String> = entries.iter().filter(|e| e.split != Part::Test).map(|e| e.group.clone()).collect();
        entries.retain(|e| e.split != Part::Test || !trained.contains(&e.group));
    }
    Ok(entries)
}

/// Every record of an OOD set, as test.
pub fn ood_entries(records: &[Record]) -> Vec<Entry> {
    records.iter().map(|r| Entry { path: r.path.clone(), label: r.label, group: r.group.clone(), split: Part::Test, frame: None }).collect()
}

/// Splits `records` by units (images, or groups), stratified by label.
fn split_units(records: &[Record], rule: &FaithfulSplit, seed: u64, unit_of: impl Fn(&Record) -> String) -> Result<Vec<Entry>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut assignment: HashMap<String, Part> = HashMap::new();
    let (pool, fixed_test): (Vec<&Record>, Vec<&Record>) = match rule {
        FaithfulSplit::ByOrigin { train_origin, test_origin, .. } => {
            let unknown: Vec<&str> =
                records.iter().filter(|r| &r.origin != train_origin && &r.origin != test_origin).map(|r| r.path.as_str()).take(3).collect();
            if !unknown.is_empty() {
                return Err(Error::Split(format!("images outside {train_origin}/ and {test_origin}/: {}", unknown.join(", "))));
            }
            records.iter().partition(|r| &r.origin == train_origin)
        }
        _ => (records.iter().collect(), Vec::new()),
    };
    // Units by label; a unit's label is its most common one (groups never mix labels in the
    // study's datasets, but a wrong metadata row must not crash the split).
    let mut unit_sizes: BTreeMap<String, BTreeMap<u32, usize>> = BTreeMap::new();
    for record in &pool {
        *unit_sizes.entry(unit_of(record)).or_default().entry(record.label).or_default() += 1;
    }
    let mut by_label: BTreeMap<u32, Vec<(String, usize)>> = BTreeMap::new();
    for (unit, labels) in unit_sizes {
        let (&label, _) = labels.iter().max_by_key(|&(&label, &count)| (count, std::cmp::Reverse(label))).unwrap_or((&0, &0));
        by_label.entry(label).or_default().push((unit, labels.values().sum()));
    }
    for units in by_label.values_mut() {
        units.shuffle(&mut rng);
        let total: usize = units.iter().map(|(_, n)| n).sum();
        // Held-out sizes round up, as scikit-learn's train_test_split sizes its test part.
        let held_out = |fraction: f64, of: usize| (fraction * of as f64).ceil() as usize;
        let (test_target, val_target) = match rule {
            FaithfulSplit::Stratified { val, test } => (held_out(*test, total), held_out(*val, total)),
            FaithfulSplit::TestThenVal { val, test } => {
                let test_target = held_out(*test, total);
                (test_target, held_out(*val, total - test_target.min(total)))
            }
            FaithfulSplit::ByOrigin { val, .. } => (0, held_out(*val, total)),
        };
        // Each unit goes to the split furthest below its target (ties: test, val, train), so
        // a large group cannot empty a split that smaller ones could have filled.
        let mut targets = [test_target.min(total), val_target.min(total - test_target.min(total)), 0];
        targets[2] = total - targets[0] - targets[1];
        let mut filled = [0usize; 3];
        let mut chosen_parts = Vec::with_capacity(units.len());
        for (_, size) in units.iter() {
            let deficit = |i: usize| targets[i] as i64 - filled[i] as i64;
            let chosen = (0..3).fold(0, |best, i| if deficit(i) > deficit(best) { i } else { best });
            filled[chosen] += size;
            chosen_parts.push(chosen);
        }
        // A few units of very unequal sizes can leave a part that has a target empty (three
        // patients of 10, 1 and 1 images at 70/10/20: the large one fills train past its share,
        // both small ones go to test, whose 3 images neither fills). Each such part then takes
        // the smallest unit of the part holding the most, which keeps one: the proportions give
        // way, not the part. A split the greedy filled is left as it is.
        for part in 0..3 {
            let count = |p: usize| chosen_parts.iter().filter(|&&c| c == p).count();
            if targets[part] == 0 || count(part) > 0 {
                continue;
            }
            let Some(donor) = (0..3).filter(|&d| count(d) >= 2).max_by_key(|&d| count(d)) else { break };
            if let Some(smallest) = (0..units.len()).filter(|&i| chosen_parts[i] == donor).min_by_key(|&i| units[i].1) {
                chosen_parts[smallest] = part;
            }
        }
        for ((unit, _), chosen) in units.iter().zip(chosen_parts) {
            assignment.insert(unit.clone(), [Part::Test, Part::Val, Part::Train][chosen]);
        }
    }
    let mut entries: Vec<Entry> = pool
        .iter()
        .map(|r| Entry { path: r.path.clone(), label: r.label, group: r.group.clone(), split: assignment[&unit_of(r)], frame: None })
        .chain(fixed_test.iter().map(|r| Entry {
            path: r.path.clone(),
            label: r.label,
            group: r.group.clone(),
            split: Part::Test,
            frame: None,
        }))
        .collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// The authors' split CSVs in `dir`: a file name containing "train", "val" or "test" gives its
/// part; train and test must be there.
pub fn authors_csvs(dir: &Path) -> Result<Vec<(Part, std::path::PathBuf)>> {
    let mut found = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|e| Error::io(dir, format!("cannot list the folder of the authors' split CSVs: {e}")))? {
        let path = item.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        if !name.ends_with(".csv") {
            continue;
        }
        let part = [(Part::Train, "train"), (Part::Val, "val"), (Part::Test, "test")].into_iter().find(|(_, key)| name.contains(key));
        if let Some((part, _)) = part {
            found.push((part, path));
        }
    }
    for part in [Part::Train, Part::Test] {
        if !found.iter().any(|(p, _)| *p == part) {
            return Err(Error::Split(format!("{}: no CSV whose name contains {:?}", dir.display(), part.name())));
        }
    }
    found.sort();
    // A copy saved beside a CSV ("train (copy).csv", "trainval.csv") was read as a second one of
    // the same part, doubling its images (seen: 321 of 192).
    for part in Part::ALL {
        let names: Vec<String> = found
            .iter()
            .filter(|(p, _)| *p == part)
            .map(|(_, path)| path.file_name().unwrap_or_default().to_string_lossy().into_owned())
            .collect();
        if names.len() > 1 {
            return Err(Error::Split(format!(
                "{}: {} CSVs for the {} part ({}); keep one CSV per part there (its name containing train, val or test) and move the others away",
                dir.display(),
                names.len(),
                part.name(),
                names.join(", ")
            )));
        }
    }
    Ok(found)
}

/// The authors' split from the CSVs in `dir` ([`authors_csvs`]); any row that does not match
/// the data is an error naming the first.
pub fn authors_split(records: &[Record], spec: &DatasetSpec, dir: &Path) -> Result<Vec<Entry>> {
    let csvs = authors_csvs(dir)?;
    let refs: Vec<(Part, &Path)> = csvs.iter().map(|(p, path)| (*p, path.as_path())).collect();
    let (entries, problems) = authors_split_from_csvs(records, spec, &refs)?;
    match problems.first() {
        Some(first) => Err(Error::Split(format!(
            "{} row(s) of the authors' CSVs do not match the data or repeat an image; the first: {}: {}",
            problems.len(),
            first.path.display(),
            first.problem
        ))),
        None => Ok(entries),
    }
}

/// The authors' split from their CSVs, one per part: every row re-rooted onto `records` by
/// its path after the dataset's `authors_prefix`; rows that match no record are problems.
pub fn authors_split_from_csvs(records: &[Record], spec: &DatasetSpec, csvs: &[(Part, &Path)]) -> Result<(Vec<Entry>, Vec<Problem>)> {
    let mut by_name: HashMap<&str, Vec<&Record>> = HashMap::new();
    for record in records {
        by_name.entry(crate::files::file_name(&record.path)).or_default().push(record);
    }
    let (mut entries, mut problems) = (Vec::new(), Vec::new());
    // Where each image was first listed: the paper's CSVs list every image once, so a second row
    // of an image (in another part, it is tested on what it trained on) is a problem.
    let mut listed: HashMap<String, (String, usize)> = HashMap::new();
    for &(part, csv_path) in csvs {
        let mut reader = csv::Reader::from_path(csv_path).map_err(|e| Error::io(csv_path, e))?;
        let header = reader.headers().map_err(|e| Error::format(csv_path, e.to_string()))?.clone();
        let column = |name: &str| header.iter().position(|h| h.trim() == name);
        let (Some(image_column), Some(label_column)) = (column("image"), column("label")) else {
            return Err(Error::format(
                csv_path,
                format!("expected columns image and label, the header is {:?}", header.iter().collect::<Vec<_>>()),
            ));
        };
        for (line, row) in reader.records().enumerate() {
            let row = row.map_err(|e| Error::format(csv_path, e.to_string()))?;
            let (image, label) = (row.get(image_column).unwrap_or("").trim(), row.get(label_column).unwrap_or("").trim());
            let mut report =
                |problem: String| problems.push(Problem { path: csv_path.to_path_buf(), problem: format!("line {}: {problem}", line + 2) });
            let relative = image.strip_prefix(spec.authors_prefix.as_str()).unwrap_or(image).trim_start_matches('/');
            let candidates = by_name.get(crate::files::file_name(relative)).map(Vec::as_slice).unwrap_or_default();
            // The longest common path suffix decides between same-named files.
            let suffix_len = |record: &Record| record.path.rsplit('/').zip(relative.rsplit('/')).take_while(|(a, b)| a == b).count();
            let best = candidates.iter().map(|r| (suffix_len(r), *r)).max_by_key(|&(n, _)| n);
            let tied = best.is_some_and(|(n, _)| candidates.iter().filter(|r| suffix_len(r) == n).count() > 1);
            let Some((_, record)) = best.filter(|_| !tied) else {
                report(if tied { format!("{image} matches several files") } else { format!("{image} is not among the scanned images") });
                continue;
            };
            let here = (csv_path.file_name().unwrap_or_default().to_string_lossy().into_owned(), line + 2);
            if let Some((first_csv, first_line)) = listed.get(&record.path) {
                report(format!("{image} is listed again (first at {first_csv} line {first_line}); each image belongs to one part, once"));
                continue;
            }
            listed.insert(record.path.clone(), here);
            match label.parse::<u32>() {
                Ok(label) if label == record.label => {
                    entries.push(Entry { path: record.path.clone(), label, group: record.group.clone(), split: part, frame: None });
                }
                Ok(label) => report(format!("{image} has label {label} but the label map gives {} ({})", record.label, record.class)),
                Err(_) => report(format!("label {label:?} is not a number")),
            }
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((entries, problems))
}

/// A task's train/val/test split of an ID dataset's `records` as `source` makes it (the authors'
/// CSVs from `authors_dir`), with every class checked present in every part, and how much it
/// leaks.
pub fn split_task(
    records: &[Record],
    spec: &DatasetSpec,
    task: &TaskSpec,
    source: Source,
    authors_dir: Option<&Path>,
    seed: u64,
) -> Result<(Vec<Entry>, Leakage)> {
    // An alternative ID set (Cheng's for brain) by its own rule: the task's assumes the layout of
    // the task's ID set ("images outside Training/ and Testing/").
    let rule = spec.split.as_ref().unwrap_or(&task.faithful);
    let entries = match source {
        Source::Faithful => faithful_split(records, rule, seed)?,
        Source::Grouped => grouped_split(records, rule, seed)?,
        Source::Authors => {
            let dir = authors_dir.ok_or_else(|| Error::Split("the authors' split needs the folder of their CSVs".into()))?;
            authors_split(records, spec, dir)?
        }
    };
    // Of the classes the dataset has: Cheng's set has no brain scan without a tumour.
    let labels: BTreeSet<u32> = spec.labels.values().copied().collect();
    check_classes_among(&entries, task, &labels)?;
    let leakage = leakage(&entries);
    Ok((entries, leakage))
}

/// Every class must occur in train and in test (val too, when it exists).
pub fn check_classes(entries: &[Entry], task: &TaskSpec) -> Result<()> {
    check_classes_among(entries, task, &(0..task.classes.len() as u32).collect())
}

/// [`check_classes`] over the task's classes `labels` only (those a dataset has).
fn check_classes_among(entries: &[Entry], task: &TaskSpec, labels: &BTreeSet<u32>) -> Result<()> {
    let mut counts: BTreeMap<(Part, u32), usize> = BTreeMap::new();
    for entry in entries {
        *counts.entry((entry.split, entry.label)).or_default() += 1;
    }
    let has_val = entries.iter().any(|e| e.split == Part::Val);
    for part in Part::ALL.into_iter().filter(|&p| p != Part::Val || has_val) {
        for (label, class) in task.classes.iter().enumerate().filter(|(label, _)| labels.contains(&(*label as u32))) {
            if !counts.contains_key(&(part, label as u32)) {
                return Err(Error::Split(format!(
                    "the {} split has no image of class {label} ({class}); a split needs every class (more data, or other fractions)",
                    part.name()
                )));
            }
        }
    }
    Ok(())
}

/// How much a split leaks: groups in more than one split, and held-out images that share a
/// group with a training image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Leakage {
    /// Groups (patients, lesions, slides) in all.
    pub groups: usize,
    /// Groups with images in more than one part.
    pub groups_across_splits: usize,
    /// Validation images whose group also has training images.
    pub val_images_sharing_a_train_group: usize,
    /// Test images whose group also has training images.
    pub test_images_sharing_a_train_group: usize,
}

/// How much `entries` leak: see [`Leakage`].
pub fn leakage(entries: &[Entry]) -> Leakage {
    let mut parts: HashMap<&str, BTreeSet<Part>> = HashMap::new();
    for entry in entries {
        parts.entry(&entry.group).or_default().insert(entry.split);
    }
    let shares = |part: Part| entries.iter().filter(|e| e.split == part && parts[e.group.as_str()].contains(&Part::Train)).count();
    Leakage {
        groups: parts.len(),
        groups_across_splits: parts.values().filter(|p| p.len() > 1).count(),
        val_images_sharing_a_train_group: shares(Part::Val),
        test_images_sharing_a_train_group: shares(Part::Test),
    }
}
