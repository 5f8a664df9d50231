//! What a reader yields: one record per image the task uses, and every problem it met.

use std::path::PathBuf;

use serde::Serialize;

/// One image of a dataset, after the label map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// Path relative to the dataset root, with `/` separators.
    pub path: String,
    /// The class as the layout spells it (ground-truth column, folder, file-name code).
    pub class: String,
    /// The task label.
    pub label: u32,
    /// What the grouped split keeps together (lesion, patient, duplicate hash, or the image).
    pub group: String,
    /// A sub-collection the layout itself defines (the Kaggle MRI set's Training/Testing), or "".
    pub origin: String,
}

/// Something wrong with one file; `check` reports them all at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file: an image relative to the dataset root; the layout's own files (the root
    /// itself, a ground-truth CSV) with the root in front, as the command was given it.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

/// A reader's result: records sorted by path, images deliberately dropped, problems.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// The images the task uses, sorted by path.
    pub records: Vec<Record>,
    /// Images of classes the label map drops.
    pub dropped: usize,
    /// Every problem met, sorted by path.
    pub problems: Vec<Problem>,
}

impl Scan {
    pub(crate) fn problem(&mut self, path: impl Into<PathBuf>, problem: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), problem: problem.into() });
    }

    pub(crate) fn finish(mut self) -> Self {
        self.records.sort_by(|a, b| a.path.cmp(&b.path));
        self.problems.sort_by(|a, b| a.path.cmp(&b.path).then(a.problem.cmp(&b.problem)));
        self
    }
}
