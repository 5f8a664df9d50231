//! Step 1: check a task's data and write its split manifests, OUT/splits/<task>/{train,val,test,
//! ood}.csv and split.json. Written once; every later run (and every shard) reads them back, so
//! the whole study sees one split.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use medxfer_data::{Catalog, Entry, Part, Role, Source, TaskSpec, ood_entries, read_manifest, scan_clean, split_task};

use crate::report::SplitNote;

/// Where the split comes from (`--splits`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitChoice {
    /// The authors' CSVs, one folder per task under this one (DIR/<task>/*train*.csv, ...).
    Authors(PathBuf),
    /// Regenerated as the reference's split was made (PROTOCOL.md).
    Faithful,
    /// The same fractions over patients/lesions/slides: no group in two parts.
    Grouped,
}

impl SplitChoice {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "faithful" => Ok(Self::Faithful),
            "grouped" => Ok(Self::Grouped),
            _ => match text.strip_prefix("authors:") {
                Some(dir) if !dir.is_empty() => Ok(Self::Authors(PathBuf::from(dir))),
                _ => bail!("--splits {text:?}: expected faithful, grouped or authors:DIR"),
            },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Authors(_) => "authors",
            Self::Faithful => "faithful",
            Self::Grouped => "grouped",
        }
    }
}

/// Refuses `--splits authors:DIR` before any work where a task whose split is not written yet
/// (no `split.json` under `splits(task)`) lacks its CSVs in DIR/<task>/: the study found it only
/// on reaching the task, after the demo's pretraining or the tasks before it.
pub fn check_authors_csvs(choice: &SplitChoice, tasks: &[TaskSpec], splits: impl Fn(&str) -> PathBuf) -> Result<()> {
    let SplitChoice::Authors(dir) = choice else { return Ok(()) };
    if !dir.is_dir() {
        bail!("--splits authors:{}: no such folder; it holds one folder of the authors' split CSVs per task (DIR/<task>/)", dir.display());
    }
    for task in tasks.iter().filter(|task| !splits(&task.name).join(NOTE_FILE).exists()) {
        medxfer_data::authors_csvs(&dir.join(&task.name)).with_context(|| {
            format!("--splits authors:{}: task {}'s CSVs go in {}", dir.display(), task.name, dir.join(&task.name).display())
        })?;
    }
    Ok(())
}

/// One task's four parts and the datasets' roots.
#[derive(Debug, Clone)]
pub struct TaskSplit {
    pub train: Vec<Entry>,
    pub val: Vec<Entry>,
    pub test: Vec<Entry>,
    pub ood: Vec<Entry>,
    pub id_root: PathBuf,
    pub ood_root: PathBuf,
    pub note: SplitNote,
}

pub const PARTS: [&str; 4] = ["train", "val", "test", "ood"];
pub const NOTE_FILE: &str = "split.json";

/// The task's split: read back from `dir` when already written, else made from the data under
/// `data` (DATA/<dataset name>) and written.
pub fn prepare(catalog: &Catalog, task: &TaskSpec, data: &Path, choice: &SplitChoice, seed: u64, dir: &Path) -> Result<TaskSplit> {
    let id = catalog.dataset(&task.id)?;
    let ood_spec = catalog.dataset(&task.ood)?;
    let (id_root, ood_root) = (data.join(&id.name), data.join(&ood_spec.name));
    if let Some(split) = read(dir, &id_root, &ood_root)? {
        if split.note.source != choice.name() {
            bail!(
                "{} holds a split made with --splits {} but this run asks for {}: use another --out, or delete that folder and everything made from it",
                dir.display(),
                split.note.source,
                choice.name()
            );
        }
        if let Some(recorded) = split.note.seed.filter(|&recorded| recorded != seed && !matches!(choice, SplitChoice::Authors(_))) {
            bail!(
                "{} holds a split drawn with --seed {recorded} but this run asks for --seed {seed}: rerun with --seed {recorded}, or use another --out",
                dir.display()
            );
        }
        return Ok(split);
    }
    if id.role == Role::Ood {
        bail!("{} is an OOD set, not task {}'s training set", id.name, task.name);
    }
    let records = scan_clean(id, &id_root).map_err(|e| anyhow::anyhow!("{e}; or pass --data"))?;
    let (source, authors_dir) = match choice {
        SplitChoice::Faithful => (Source::Faithful, None),
        SplitChoice::Grouped => (Source::Grouped, None),
        SplitChoice::Authors(dir) => (Source::Authors, Some(dir.join(&task.name))),
    };
    let (entries, leakage) = split_task(&records, id, task, source, authors_dir.as_deref(), seed)?;
    let ood = ood_entries(&scan_clean(ood_spec, &ood_root).map_err(|e| anyhow::anyhow!("{e}; or pass --data"))?);
    let part = |p: Part| entries.iter().filter(|e| e.split == p).cloned().collect::<Vec<_>>();
    let (train, val, test) = (part(Part::Train), part(Part::Val), part(Part::Test));
    if train.is_empty() || val.is_empty() || test.is_empty() || ood.is_empty() {
        bail!(
            "task {}: the split leaves a part empty (train {}, val {}, test {}, ood {}); the study needs all four",
            task.name,
            train.len(),
            val.len(),
            test.len(),
            ood.len()
        );
    }
    let note = SplitNote {
        task: task.name.clone(),
        dataset: id.name.clone(),
        ood_dataset: ood_spec.name.clone(),
        source: choice.name().to_string(),
        seed: (!matches!(choice, SplitChoice::Authors(_))).then_some(seed),
        images: PARTS.iter().zip([&train, &val, &test, &ood]).map(|(p, e)| (p.to_string(), e.len())).collect(),
        leakage: format!(
            "{} of {} groups ({}) span parts; {} val and {} test images share a group with train",
            leakage.groups_across_splits,
            leakage.groups,
            id.group_key,
            leakage.val_images_sharing_a_train_group,
            leakage.test_images_sharing_a_train_group
        ),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, part) in PARTS.iter().zip([&train, &val, &test, &ood]) {
        write_entries(&dir.join(format!("{name}.csv")), part)?;
    }
    // The note last: its presence says the four files are complete.
    medxfer_durable::write_atomic(&dir.join(NOTE_FILE), &serde_json::to_vec_pretty(&note)?)?;
    Ok(TaskSplit { train, val, test, ood, id_root, ood_root, note })
}

/// `entries` as a CSV of `path,label,group,split`, written atomically.
fn write_entries(path: &Path, entries: &[Entry]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for entry in entries {
        writer.serialize(entry)?;
    }
    let bytes = writer.into_inner().context("flushing CSV")?;
    Ok(medxfer_durable::write_atomic(path, &bytes)?)
}

fn read(dir: &Path, id_root: &Path, ood_root: &Path) -> Result<Option<TaskSplit>> {
    let note_path = dir.join(NOTE_FILE);
    if !note_path.exists() {
        return Ok(None);
    }
    let note: SplitNote = serde_json::from_slice(&std::fs::read(&note_path)?)
        .with_context(|| format!("{} is damaged; delete {} to make the split again", note_path.display(), dir.display()))?;
    let read = |name: &str| read_manifest(&dir.join(format!("{name}.csv")));
    Ok(Some(TaskSplit {
        train: read("train")?,
        val: read("val")?,
        test: read("test")?,
        ood: read("ood")?,
        id_root: id_root.to_path_buf(),
        ood_root: ood_root.to_path_buf(),
        note,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use medxfer_data::scan_dataset;

    use super::*;
    use std::collections::BTreeMap;

    /// `--splits authors:DIR` without the CSVs a task needs is refused; a task whose split is
    /// written needs none (a resumed study whose CSVs moved).
    #[test]
    fn the_authors_csvs_are_checked_only_for_the_splits_still_to_make() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::load_default().unwrap();
        let tasks = vec![catalog.task("brain").unwrap().clone(), catalog.task("breast").unwrap().clone()];
        let (authors, out) = (dir.path().join("authors"), dir.path().join("out"));
        let splits = |task: &str| out.join(task);
        let choice = SplitChoice::Authors(authors.clone());
        let message = |choice: &SplitChoice| format!("{:#}", check_authors_csvs(choice, &tasks, splits).unwrap_err());
        assert!(message(&choice).contains("authors: no such folder"), "{}", message(&choice));
        for part in ["train", "test"] {
            std::fs::create_dir_all(authors.join("brain")).unwrap();
            std::fs::write(authors.join("brain").join(format!("brain_{part}.csv")), "image,label\n").unwrap();
        }
        assert!(message(&choice).contains("task breast's CSVs go in") && message(&choice).contains("cannot list"), "{}", message(&choice));
        std::fs::create_dir_all(authors.join("breast")).unwrap();
        let text = message(&choice);
        assert!(text.contains("task breast's CSVs go in") && text.contains("no CSV whose name contains \"train\""), "{text}");
        // Breast's split written already: nothing more to read.
        std::fs::create_dir_all(out.join("breast")).unwrap();
        std::fs::write(out.join("breast").join(NOTE_FILE), "{}").unwrap();
        check_authors_csvs(&choice, &tasks, splits).unwrap();
        check_authors_csvs(&SplitChoice::Faithful, &tasks, |_: &str| dir.path().join("none")).unwrap();
    }

    /// The breast task from a BreakHis replica and the authors' CSVs: every third image to test,
    /// every fifth of the rest to val.
    #[test]
    fn the_authors_split_is_used_as_given_written_once_and_not_mixed_with_another() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::load_default().unwrap();
        let task = catalog.task("breast").unwrap();
        let data = dir.path().join("data");
        medxfer_data::synth::synthesize(catalog.dataset("breakhis").unwrap(), &data.join("breakhis"), 6, 1).unwrap();
        medxfer_data::synth::synthesize(catalog.dataset("bach").unwrap(), &data.join("bach"), 3, 2).unwrap();
        let records = scan_dataset(catalog.dataset("breakhis").unwrap(), &data.join("breakhis")).unwrap().records;
        let mut expected: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut csvs: BTreeMap<&str, String> = ["train", "val", "test"].into_iter().map(|p| (p, "image,label\n".to_string())).collect();
        for (i, record) in records.iter().enumerate() {
            let part = if i % 3 == 0 {
                "test"
            } else if i % 5 == 0 {
                "val"
            } else {
                "train"
            };
            // The authors' absolute paths: /breakhisv1/ then the path inside the archive.
            csvs.get_mut(part).unwrap().push_str(&format!("/breakhisv1/{},{}\n", record.path, record.label));
            expected.entry(part).or_default().push(record.path.clone());
        }
        let authors = dir.path().join("authors");
        std::fs::create_dir_all(authors.join("breast")).unwrap();
        for (part, text) in &csvs {
            std::fs::write(authors.join("breast").join(format!("breakhis_{part}.csv")), text).unwrap();
        }
        let out = dir.path().join("splits/breast");
        let choice = SplitChoice::parse(&format!("authors:{}", authors.display())).unwrap();
        let split = prepare(&catalog, task, &data, &choice, 0, &out).unwrap();
        let paths = |entries: &[Entry]| entries.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&split.train), expected["train"]);
        assert_eq!(paths(&split.val), expected["val"]);
        assert_eq!(paths(&split.test), expected["test"]);
        assert_eq!(split.ood.len(), 3 * 3, "BACH's Normal class is dropped");
        assert_eq!(split.note.source, "authors");
        assert_eq!(split.note.images["test"], expected["test"].len());
        // Read back, not remade; another source is refused.
        let again = prepare(&catalog, task, &data, &choice, 0, &out).unwrap();
        assert_eq!(paths(&again.test), expected["test"]);
        let error = prepare(&catalog, task, &data, &SplitChoice::Grouped, 0, &out).unwrap_err().to_string();
        assert!(error.contains("made with --splits authors but this run asks for grouped"), "{error}");
        assert!(SplitChoice::parse("authors:").is_err() && SplitChoice::parse("random").is_err());
    }
}
