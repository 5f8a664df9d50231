//! `reproduce`'s side of the settings records (`crate::recorded`): a rerun compares the
//! settings it would use with the recorded ones before any work and refuses a difference, naming
//! the setting and the fix (the recorded value, or a new --out); `--extend` lets a search grow by
//! trials (the Halton sequence's first points do not change).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use medxfer_zoo::ModelEntry;

use super::Study;
use crate::recorded::{ARCHITECTURE, DTYPE, Difference, Recorded, SETTINGS_FILE, Step, WEIGHTS, WEIGHTS_SOURCE, compare, read};
use crate::weights::WeightsIdentity;

impl Study {
    /// The settings a step's result depends on, as this run would use them; the weights'
    /// identity when known (it needs the weights file).
    pub fn shaping(&self, step: Step, entry: &ModelEntry, weights: Option<&WeightsIdentity>) -> Result<BTreeMap<String, String>> {
        let options = &self.options;
        let normalization = medxfer_data::Normalization::study(entry.preprocessing.mean, entry.preprocessing.std, self.fix_std);
        let mut settings: BTreeMap<String, String> = [
            ("splits", self.splits.name().to_string()),
            ("seed", options.seed.to_string()),
            ("resize", self.resize.to_string()),
            ("crop", options.crop.to_string()),
            ("normalization", format!("mean {:?} std {:?}", normalization.mean, normalization.std)),
            ("precision", self.gpu.recorded()),
            (ARCHITECTURE, serde_json::to_string(&entry.architecture)?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if step == Step::Features {
            settings.insert(DTYPE.to_string(), self.extract_dtype.as_str().to_string());
        }
        if step == Step::Search {
            let halving = self.halving.map_or("none".to_string(), |h| format!("eta {} first rung {} epochs", h.eta, h.min_epochs));
            for (key, value) in [
                ("trials", self.trials.to_string()),
                ("epochs", options.epochs.to_string()),
                ("batch", options.batch_size.to_string()),
                ("selection", format!("{:?}", options.selection)),
                ("patience", options.patience.map_or("none".to_string(), |p| p.to_string())),
                ("class_weights", options.class_weights.as_str().to_string()),
                ("sampler", options.sampler.as_str().to_string()),
                ("halving", halving),
            ] {
                settings.insert(key.to_string(), value);
            }
        }
        if let Some(identity) = weights {
            settings.insert(WEIGHTS.to_string(), identity.checksum.clone());
            settings.insert(WEIGHTS_SOURCE.to_string(), identity.source.clone());
        }
        Ok(settings)
    }

    /// Where a step's record lives.
    pub fn settings_path(&self, step: Step, task: &str, backbone: &str) -> PathBuf {
        match step {
            Step::Features => self.layout.features_dir(task, backbone).join(SETTINGS_FILE),
            Step::Search => self.layout.runs(task, backbone).join(SETTINGS_FILE),
        }
    }

    /// Every recorded setting that differs from this run's, over all units, before any work:
    /// one error naming each setting, its recorded and asked values and the fix. A search that
    /// only grows by trials is allowed with `--extend`. The weights are compared per unit, when
    /// their file is at hand ([`Study::record`]).
    pub fn check_recorded(&self) -> Result<()> {
        let mut differences: BTreeMap<Difference, Vec<PathBuf>> = BTreeMap::new();
        for task in &self.tasks {
            for entry in &self.backbones {
                for step in [Step::Features, Step::Search] {
                    let path = self.settings_path(step, &task.name, &entry.name);
                    let Some(recorded) = read(&path)? else {
                        refuse_unrecorded(&path)?;
                        continue;
                    };
                    for difference in compare(&recorded.settings, &self.shaping(step, entry, None)?) {
                        if difference.setting == WEIGHTS || self.extends(&difference) {
                            continue;
                        }
                        differences.entry(difference).or_default().push(path.clone());
                    }
                }
            }
        }
        if differences.is_empty() {
            return Ok(());
        }
        let mut message = format!("{} holds results made with other settings than this run asks for:\n", self.layout.out.display());
        for (difference, paths) in &differences {
            if difference.setting == ARCHITECTURE {
                let _ = writeln!(
                    message,
                    "  architecture: {} ({} folder(s), e.g. {}); the backbone's models/ entry was edited since: restore its [architecture] to continue them",
                    changed_fields(&difference.recorded, &difference.asked),
                    paths.len(),
                    paths[0].display()
                );
                continue;
            }
            let _ = writeln!(
                message,
                "  {}: made with {}, this run asks for {} ({} folder(s), e.g. {}); rerun with {} {} to continue them",
                difference.setting,
                difference.recorded,
                difference.asked,
                paths.len(),
                paths[0].display(),
                difference.option(),
                difference.recorded
            );
            if difference.setting == "trials" && self.halving.is_none() && more(difference) {
                let _ =
                    writeln!(message, "    or add --extend to add the new trials to every search (the first Halton points stay the same)");
            }
        }
        message.push_str("or give a new --out for a study with the new settings; nothing was started");
        bail!(message)
    }

    /// Whether `--extend` allows this difference: more trials, without halving.
    fn extends(&self, difference: &Difference) -> bool {
        self.extend && self.halving.is_none() && difference.setting == "trials" && more(difference)
    }

    /// Before a unit's step uses its weights: compares the weights and every other setting with
    /// the step's record, or writes the record when there is none (first come, first kept: two
    /// shards starting together write the same record). With `--extend`, a record of fewer trials
    /// is rewritten with this run's.
    pub fn record(&self, step: Step, task: &str, entry: &ModelEntry, weights: &WeightsIdentity) -> Result<()> {
        let path = self.settings_path(step, task, &entry.name);
        let current = self.shaping(step, entry, Some(weights))?;
        let record = Recorded { step, task: task.to_string(), backbone: entry.name.clone(), settings: current.clone() };
        let Some(recorded) = read(&path)? else {
            medxfer_durable::write_atomic(&path, &serde_json::to_vec_pretty(&record)?)?;
            return Ok(());
        };
        let differences = compare(&recorded.settings, &current);
        if let Some(weights_differ) = differences.iter().find(|d| d.setting == WEIGHTS) {
            bail!(
                "{}: the {} results there were made with other weights ({}, {}) than this run's {} ({}): \
                 give a new --out, or name this checkpoint by its hub id so that it gets folders of its own",
                path.display(),
                entry.name,
                weights_differ.recorded,
                recorded.settings.get(WEIGHTS_SOURCE).map_or("unknown source", String::as_str),
                weights.checksum,
                weights.source
            );
        }
        if differences.iter().any(|d| !self.extends(d)) {
            // check_recorded refused these before any work; a record written since by another
            // process with other settings is refused the same way.
            self.check_recorded()?;
            bail!("{}: recorded settings differ from this run's: {differences:?}", path.display());
        }
        if !differences.is_empty() {
            medxfer_durable::write_atomic(&path, &serde_json::to_vec_pretty(&record)?)?;
        }
        Ok(())
    }
}

/// A folder with results but no record was made by a medxfer that did not record its settings:
/// nothing says they match this run's. A temporary file left by a write killed mid-way (the
/// record's own first write, most likely) is not a result.
fn refuse_unrecorded(path: &Path) -> Result<()> {
    let folder = path.parent().unwrap_or(path);
    let holds_results =
        std::fs::read_dir(folder).is_ok_and(|entries| entries.flatten().any(|entry| !medxfer_durable::is_leftover(&entry.file_name())));
    if holds_results {
        bail!(
            "{} holds results without a record of the settings that made them ({SETTINGS_FILE}; an older medxfer made them): \
             nothing says they match this run's; give a new --out, or delete that folder to make them again",
            folder.display()
        );
    }
    Ok(())
}

/// The fields two architectures (JSON objects) differ in, as "num_heads: made with 2, the
/// entry now gives 4"; the whole of each where they are not objects.
fn changed_fields(recorded: &str, asked: &str) -> String {
    let object = |text: &str| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).ok();
    let (Some(recorded_fields), Some(asked_fields)) = (object(recorded), object(asked)) else {
        return format!("made with {recorded}, the entry now gives {asked}");
    };
    let mut keys: Vec<&String> = recorded_fields.keys().chain(asked_fields.keys()).collect();
    keys.sort();
    keys.dedup();
    let shown = |value: Option<&serde_json::Value>| value.map_or_else(|| "(absent)".to_string(), ToString::to_string);
    keys.into_iter()
        .filter(|key| recorded_fields.get(*key) != asked_fields.get(*key))
        .map(|key| format!("{key}: made with {}, the entry now gives {}", shown(recorded_fields.get(key)), shown(asked_fields.get(key))))
        .collect::<Vec<_>>()
        .join("; ")
}

fn more(difference: &Difference) -> bool {
    matches!((difference.recorded.parse::<usize>(), difference.asked.parse::<usize>()), (Ok(r), Ok(a)) if a > r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_unrecorded_only_when_it_holds_more_than_a_killed_write_left() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("runs/breast/resnet18");
        let record = folder.join(SETTINGS_FILE);
        refuse_unrecorded(&record).expect("a folder not made yet holds nothing");
        std::fs::create_dir_all(&folder).unwrap();
        refuse_unrecorded(&record).expect("an empty folder holds nothing");
        // What a kill during the record's own first write leaves.
        std::fs::write(folder.join(format!(".{SETTINGS_FILE}.host-4242-0.partial")), b"{\"st").unwrap();
        refuse_unrecorded(&record).expect("a leftover temporary file is not a result");
        std::fs::write(folder.join("search.json"), b"{}").unwrap();
        let error = refuse_unrecorded(&record).unwrap_err().to_string();
        assert!(error.contains("without a record") && error.contains("resnet18"), "{error}");
    }

    /// Only the fields that differ, a field gone or added said as absent; text that is not an
    /// object, whole.
    #[test]
    fn an_edited_architecture_is_told_by_its_changed_fields() {
        let recorded = r#"{"family":"vit","depth":12,"num_heads":6,"embedding":"pool"}"#;
        let asked = r#"{"family":"vit","depth":12,"num_heads":12,"reg_tokens":4}"#;
        assert_eq!(
            changed_fields(recorded, asked),
            "embedding: made with \"pool\", the entry now gives (absent); num_heads: made with 6, the entry now gives 12; \
             reg_tokens: made with (absent), the entry now gives 4"
        );
        assert_eq!(changed_fields("vit", recorded), format!("made with vit, the entry now gives {recorded}"));
    }
}
