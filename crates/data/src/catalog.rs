//! The catalog: datasets/*.toml (one file per dataset) and datasets/tasks.toml (the three tasks).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Which reader understands a dataset's on-disk layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutKind {
    /// ISIC 2019: a ground-truth CSV of one-hot classes, images in one folder.
    Isic2019,
    /// PAD-UFES-20: metadata.csv with a diagnostic column, images in parts.
    #[serde(rename = "pad-ufes-20")]
    PadUfes20,
    /// BreakHis: class, type and patient in folder and file names.
    Breakhis,
    /// ICIAR 2018 BACH: one folder per class of TIFF photos.
    Bach,
    /// Kaggle brain-tumour MRI: Training/ and Testing/ with class folders.
    BrainTumorKaggle,
    /// Cheng et al.'s figshare set: MATLAB v7.3 (.mat) slices.
    Cheng,
    /// NINS: one folder per diagnosis.
    Nins,
}

/// What a dataset is to its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The task's in-distribution set: split into train/val/test.
    Id,
    /// The task's out-of-distribution test set, used whole.
    Ood,
    /// Another in-distribution set the task can use instead (Cheng for brain).
    AlternativeId,
}

impl Role {
    /// As the catalog's TOML spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Id => "id",
            Role::Ood => "ood",
            Role::AlternativeId => "alternative-id",
        }
    }
}

/// Counts of the complete real dataset after the label map, for `check`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// Images the task uses.
    pub images: usize,
    /// Task label (as a string key, TOML's only kind) -> image count.
    pub per_label: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dropped {
    classes: Vec<String>,
    /// Classes neither mapped nor listed: an error (the default) or silently dropped (NINS,
    /// whose ~37 diagnosis folders the task uses six of).
    #[serde(default)]
    unlisted: Unlisted,
}

/// What a reader does with a class the dataset's TOML does not name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unlisted {
    /// Fail, naming the class (the default).
    #[default]
    Error,
    /// Drop its images silently.
    Drop,
}

/// One dataset: datasets/<name>.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// The name commands take (`breakhis`), also its folder under a study's data.
    pub name: String,
    /// The dataset's full name.
    pub title: String,
    /// Where it comes from (datasets/README.md says how to get it).
    pub source: String,
    /// Which reader understands its folder.
    pub layout: LayoutKind,
    /// The task it belongs to.
    pub task: String,
    /// In-distribution, OOD or alternative.
    pub role: Role,
    /// The path prefix of this dataset in the authors' split CSVs, stripped when re-rooting.
    pub authors_prefix: String,
    /// What the grouped split groups by, in words.
    pub group_key: String,
    /// Class name as the layout spells it -> task label. Other classes are dropped.
    pub labels: BTreeMap<String, u32>,
    /// How an alternative ID set is split when it stands in for the task's: the task's own rule
    /// assumes the ID set's layout (brain's Training/ and Testing/ folders), which another set
    /// lacks. An alternative set must give one; the task's ID set follows the task's.
    #[serde(default)]
    pub split: Option<FaithfulSplit>,
    #[serde(default)]
    dropped: Dropped,
    /// Counts of the complete real dataset.
    pub expected: Expected,
    /// Other downloads taken for this one, known by their class folders.
    #[serde(default, rename = "lookalike")]
    pub lookalikes: Vec<Lookalike>,
}

/// Another dataset whose download is taken for this one (Kaggle's most downloaded brain MRI set
/// for the paper's): an image of one of its classes is named as that set's, with where to get the
/// right one, where it was only "not in the TOML".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lookalike {
    /// Its full name.
    pub title: String,
    /// Its class folders that this dataset lacks.
    pub classes: Vec<String>,
}

impl DatasetSpec {
    /// The task label of a class, or None when the class is dropped.
    pub fn label_of(&self, class: &str) -> Option<u32> {
        self.labels.get(class).copied()
    }

    /// The other download that has `class` among its class folders, if one is known.
    pub fn lookalike_of(&self, class: &str) -> Option<&Lookalike> {
        self.lookalikes.iter().find(|lookalike| lookalike.classes.iter().any(|c| c == class))
    }

    /// Classes the label map drops on purpose (as opposed to unknown ones).
    pub fn dropped_classes(&self) -> &[String] {
        &self.dropped.classes
    }

    /// Whether `class` is known to this dataset, mapped or deliberately dropped.
    pub fn knows(&self, class: &str) -> bool {
        self.labels.contains_key(class) || self.dropped.classes.iter().any(|c| c == class) || self.dropped.unlisted == Unlisted::Drop
    }
}

/// How the faithful split of a task's ID set was made.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FaithfulSplit {
    /// Stratified train/val/test with these val and test fractions.
    Stratified {
        /// Fraction of each class to validation.
        val: f64,
        /// Fraction of each class to test.
        test: f64,
    },
    /// `test` of each class to test, then `val` of the rest to val (BreakHis).
    TestThenVal {
        /// Fraction of the rest to validation.
        val: f64,
        /// Fraction of each class to test, first.
        test: f64,
    },
    /// Images from `test_origin` are the test set; `train_origin` is split train/val by `val`.
    ByOrigin {
        /// Fraction of `train_origin` to validation.
        val: f64,
        /// The sub-collection split into train and validation.
        train_origin: String,
        /// The sub-collection that is the test set.
        test_origin: String,
    },
}

/// One task: a section of datasets/tasks.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The name commands take (`skin`, `breast`, `brain`): the section's.
    #[serde(skip)]
    pub name: String,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// The in-distribution dataset, split into train/val/test.
    pub id: String,
    /// The out-of-distribution test set.
    pub ood: String,
    /// Other in-distribution datasets the task can use instead.
    #[serde(default)]
    pub alternatives: Vec<String>,
    /// How the reference split the ID set.
    pub faithful: FaithfulSplit,
    /// The sizes of the authors' split files, where known: what cost estimates assume before a
    /// results folder has splits of its own (`cargo xtask bench --device cuda:N`'s GPU-hours).
    #[serde(default)]
    pub reference_split: Option<ReferenceSplit>,
}

/// Images in each part of the authors' split of a task (../shared/docs/PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceSplit {
    /// Training images.
    pub train: usize,
    /// Validation images.
    pub val: usize,
    /// In-distribution test images.
    pub test: usize,
}

/// Every dataset and task of a datasets/ directory.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Every dataset, sorted by name.
    pub datasets: Vec<DatasetSpec>,
    /// Every task, in tasks.toml's order.
    pub tasks: Vec<TaskSpec>,
}

impl Catalog {
    /// The workspace's datasets/ directory, or `MEDXFER_DATASETS` when set.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("MEDXFER_DATASETS")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets"))
    }

    /// Reads the catalog of [`Catalog::default_dir`].
    pub fn load_default() -> Result<Self> {
        Self::load(&Self::default_dir())
    }

    /// Reads every dataset TOML and tasks.toml of `dir`, and checks they agree.
    pub fn load(dir: &Path) -> Result<Self> {
        let config_error = |path: &Path, problem: String| Error::Config { source_name: path.display().to_string(), problem };
        let listing = std::fs::read_dir(dir).map_err(|e| {
            config_error(dir, format!("cannot list the dataset catalog: {e}; set MEDXFER_DATASETS to the datasets/ directory"))
        })?;
        let mut paths: Vec<PathBuf> = listing.filter_map(|item| item.ok().map(|i| i.path())).collect();
        paths.sort();
        let read = |path: &Path| std::fs::read_to_string(path).map_err(|e| config_error(path, e.to_string()));
        let mut datasets = Vec::new();
        let mut tasks = Vec::new();
        for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
            if path.file_name().is_some_and(|n| n == "tasks.toml") {
                let table: BTreeMap<String, TaskSpec> = toml::from_str(&read(path)?).map_err(|e| config_error(path, e.to_string()))?;
                tasks = table.into_iter().map(|(name, task)| TaskSpec { name, ..task }).collect();
            } else {
                let spec: DatasetSpec = toml::from_str(&read(path)?).map_err(|e| config_error(path, e.to_string()))?;
                if path.file_stem().and_then(|s| s.to_str()) != Some(spec.name.as_str()) {
                    return Err(config_error(path, format!("name = {:?} must match the file name", spec.name)));
                }
                datasets.push(spec);
            }
        }
        let catalog = Self { datasets, tasks };
        catalog.validate(dir)?;
        Ok(catalog)
    }

    fn validate(&self, dir: &Path) -> Result<()> {
        let fail = |problem: String| Err(Error::Config { source_name: dir.display().to_string(), problem });
        if self.tasks.is_empty() {
            return fail("no tasks.toml (or it defines no task)".into());
        }
        for task in &self.tasks {
            for name in [&task.id, &task.ood].into_iter().chain(&task.alternatives) {
                let Some(dataset) = self.datasets.iter().find(|d| &d.name == name) else {
                    return fail(format!("task {} names dataset {name}, which has no {name}.toml", task.name));
                };
                if dataset.task != task.name {
                    return fail(format!("{name}.toml says task = {:?} but tasks.toml lists it under {}", dataset.task, task.name));
                }
                if let Some((class, label)) = dataset.labels.iter().find(|(_, label)| **label as usize >= task.classes.len()) {
                    return fail(format!(
                        "{name}.toml maps {class} to label {label}, but task {} has {} classes",
                        task.name,
                        task.classes.len()
                    ));
                }
            }
        }
        for dataset in &self.datasets {
            if !self.tasks.iter().any(|t| t.name == dataset.task) {
                return fail(format!("{}.toml names task {:?}, which tasks.toml does not define", dataset.name, dataset.task));
            }
            if dataset.role == Role::AlternativeId && dataset.split.is_none() {
                return fail(format!(
                    "{}.toml is an alternative ID set without `split`, the rule it is split by (its task's rule assumes the task's own ID set)",
                    dataset.name
                ));
            }
        }
        Ok(())
    }

    /// The dataset called `name`, or an error listing the known ones.
    pub fn dataset(&self, name: &str) -> Result<&DatasetSpec> {
        self.datasets.iter().find(|d| d.name == name).ok_or_else(|| Error::Config {
            source_name: name.into(),
            problem: format!("unknown dataset; known: {}", self.datasets.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")),
        })
    }

    /// The task called `name`, or an error listing the known ones.
    pub fn task(&self, name: &str) -> Result<&TaskSpec> {
        self.tasks.iter().find(|t| t.name == name).ok_or_else(|| Error::Config {
            source_name: name.into(),
            problem: format!("unknown task; known: {}", self.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")),
        })
    }
}
