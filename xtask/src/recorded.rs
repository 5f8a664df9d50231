//! What shaped each step of a study, recorded beside its result: `OUT/features/<task>/
//! <backbone>/settings.json` (the pretrained features and their scores) and `OUT/runs/<task>/
//! <backbone>/settings.json` (the search, its A_opt and the OOD step made from it). `reproduce`
//! writes and checks them (`study::settings`); `--plan` and the report read them, so a results
//! folder says how it was made even when copied elsewhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The file name, in a features or a runs folder.
pub const SETTINGS_FILE: &str = "settings.json";

/// The weights' checksum: compared, as the other settings are.
pub const WEIGHTS: &str = "weights";
/// Where the weights were found: recorded for the reader, not compared (a path changes when a
/// folder is copied; the checksum does not).
pub const WEIGHTS_SOURCE: &str = "weights_source";

/// The extraction precision of the pretrained features (`--dtype`), recorded by the features step.
pub const DTYPE: &str = "dtype";

/// The backbone's `[architecture]` as its models/ entry gives it (JSON): an entry edited since
/// (`embedding`, `global_pool`, a depth) makes other features from the same weights, which the
/// weights' checksum does not see. Recorded since 2026-12; a record without it is trusted, as
/// before (nothing says what it was made with).
pub const ARCHITECTURE: &str = "architecture";

/// Settings recorded only since a later version, with the value every earlier record was made
/// with: a record without one compares as that value.
const LATER_SETTINGS: [(&str, &str); 3] = [(DTYPE, "f32"), ("class_weights", "none"), ("sampler", "shuffle")];

/// Which step's result a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Steps 2-3: pretrained features of the train split and their scores.
    Features,
    /// Steps 4-6: the search, A_opt, its OOD features, scores and accuracy.
    Search,
}

/// One folder's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub step: Step,
    pub task: String,
    pub backbone: String,
    /// Setting name -> value as text.
    pub settings: BTreeMap<String, String>,
}

/// A setting whose recorded value differs from this run's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Difference {
    pub setting: String,
    pub recorded: String,
    pub asked: String,
}

impl Difference {
    /// The option that sets it, for the message.
    pub fn option(&self) -> &'static str {
        match self.setting.as_str() {
            "trials" => "--trials",
            "epochs" => "--epochs",
            "batch" => "--batch",
            "seed" => "--seed",
            "resize" => "--resize",
            "crop" => "--crop",
            "normalization" => "--fix-std",
            "selection" => "--select",
            "patience" => "--patience",
            "class_weights" => "--class-weights",
            "sampler" => "--sampler",
            "halving" => "--halving/--halving-min-epochs",
            "splits" => "--splits",
            "precision" => "--precision/--matmul-tf32",
            DTYPE => "--dtype",
            WEIGHTS => "--weights (or the hub's weights)",
            _ => "its option",
        }
    }
}

/// A record, if the file exists.
pub fn read(path: &Path) -> Result<Option<Recorded>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is damaged; delete its folder to make those results again", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The compared settings that differ (a setting only one side has counts as a difference,
/// except the weights, which a check made before the weights are at hand does not know yet, and
/// a setting recorded only since a later version, which an earlier record was made with at its
/// one value then).
pub fn compare(recorded: &BTreeMap<String, String>, current: &BTreeMap<String, String>) -> Vec<Difference> {
    let mut keys: Vec<&String> = recorded.keys().chain(current.keys()).filter(|k| k.as_str() != WEIGHTS_SOURCE).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|key| {
            let earlier = LATER_SETTINGS.iter().find(|(name, _)| *name == key.as_str()).map(|(_, value)| value.to_string());
            (key, recorded.get(key).cloned().or(earlier), current.get(key))
        })
        .filter_map(|(key, recorded, current)| match (recorded.as_ref(), current) {
            (Some(r), Some(c)) if r == c => None,
            (Some(_), None) if key == WEIGHTS => None,
            (None, Some(_)) if key == ARCHITECTURE => None,
            (r, c) => Some(Difference {
                setting: key.clone(),
                recorded: r.cloned().unwrap_or_else(|| "(not recorded)".into()),
                asked: c.cloned().unwrap_or_else(|| "(not set)".into()),
            }),
        })
        .collect()
}

/// Every record under a results folder, with its path, in path order.
pub fn records_in(out: &Path) -> Result<Vec<(PathBuf, Recorded)>> {
    let mut found = Vec::new();
    for tree in ["features", "runs"] {
        let pattern_root = out.join(tree);
        let Ok(tasks) = std::fs::read_dir(&pattern_root) else { continue };
        for task in tasks.flatten() {
            let Ok(backbones) = std::fs::read_dir(task.path()) else { continue };
            for backbone in backbones.flatten() {
                let path = backbone.path().join(SETTINGS_FILE);
                if let Some(record) = read(&path)? {
                    found.push((path, record));
                }
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// The records as a reader wants them: each distinct set of settings of a step once, with the
/// units it made; the weights per backbone.
pub fn describe(records: &[(PathBuf, Recorded)]) -> String {
    let mut text = String::new();
    for step in [Step::Features, Step::Search] {
        let mut sets: BTreeMap<Vec<(String, String)>, Vec<String>> = BTreeMap::new();
        for (_, record) in records.iter().filter(|(_, r)| r.step == step) {
            let settings: Vec<(String, String)> = record
                .settings
                .iter()
                // Per backbone, as its models/ entry says: each backbone's set otherwise.
                .filter(|(k, _)| ![WEIGHTS, WEIGHTS_SOURCE, ARCHITECTURE].contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            sets.entry(settings).or_default().push(format!("{} {}", record.task, record.backbone));
        }
        let what = match step {
            Step::Features => "pretrained features and scores",
            Step::Search => "searches (and the OOD steps of their A_opt)",
        };
        for (settings, units) in &sets {
            let listed = settings.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join("; ");
            let _ = writeln!(text, "- {what} of {} unit(s): {listed}", units.len());
        }
    }
    let mut weights: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for (_, record) in records {
        if let (Some(checksum), source) = (record.settings.get(WEIGHTS), record.settings.get(WEIGHTS_SOURCE)) {
            weights.entry(record.backbone.as_str()).or_default().insert(checksum.as_str(), source.map_or("", String::as_str));
        }
    }
    for (backbone, checksums) in weights {
        for (checksum, source) in checksums {
            let _ = writeln!(text, "- weights of {backbone}: {checksum} ({source})");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_record_round_trips_and_mutated_records_read_or_fail_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SETTINGS_FILE);
        let record = Recorded {
            step: Step::Search,
            task: "skin".into(),
            backbone: "resnet18".into(),
            settings: [("epochs", "100"), ("trials", "75"), (WEIGHTS, "blake3:00ff"), (WEIGHTS_SOURCE, "hub timm/resnet18.a1_in1k@abc")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let original = serde_json::to_string_pretty(&record).unwrap();
        std::fs::write(&path, &original).unwrap();
        assert_eq!(read(&path).unwrap(), Some(record.clone()));
        assert_eq!(read(&dir.path().join("absent.json")).unwrap(), None);
        // Only the compared settings count; the weights' source is for the reader.
        let mut moved = record.settings.clone();
        moved.insert(WEIGHTS_SOURCE.into(), "file /elsewhere/resnet18.safetensors".into());
        assert!(compare(&record.settings, &moved).is_empty());
        moved.insert("epochs".into(), "8".into());
        assert_eq!(compare(&record.settings, &moved), [Difference { setting: "epochs".into(), recorded: "100".into(), asked: "8".into() }]);
        let failures = medxfer_mutate::never_panics(
            1000,
            9,
            |m: &mut medxfer_mutate::Mutator| m.text(&original),
            |text: &String| {
                std::fs::write(&path, text).unwrap();
                if let Err(error) = read(&path) {
                    assert!(format!("{error:#}").contains(SETTINGS_FILE), "{error:#}");
                }
            },
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn a_record_made_before_the_dtype_was_recorded_was_made_in_f32() {
        let settings =
            |pairs: &[(&str, &str)]| -> BTreeMap<String, String> { pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        let earlier = settings(&[("crop", "224")]);
        assert!(compare(&earlier, &settings(&[("crop", "224"), (DTYPE, "f32")])).is_empty());
        assert_eq!(
            compare(&earlier, &settings(&[("crop", "224"), (DTYPE, "bf16")])),
            [Difference { setting: DTYPE.into(), recorded: "f32".into(), asked: "bf16".into() }]
        );
        // Recorded now, and asked otherwise: a difference like any other.
        assert_eq!(
            compare(&settings(&[(DTYPE, "f16")]), &settings(&[(DTYPE, "f32")])),
            [Difference { setting: DTYPE.into(), recorded: "f16".into(), asked: "f32".into() }]
        );
        assert_eq!(compare(&earlier, &earlier.clone()), []);
        // So was a search before class weights were: every image alike.
        assert!(compare(&earlier, &settings(&[("crop", "224"), ("class_weights", "none")])).is_empty());
        assert_eq!(
            compare(&earlier, &settings(&[("crop", "224"), ("class_weights", "balanced")])),
            [Difference { setting: "class_weights".into(), recorded: "none".into(), asked: "balanced".into() }]
        );
        // And before the sampler was: each image once, shuffled.
        assert!(compare(&earlier, &settings(&[("crop", "224"), ("sampler", "shuffle")])).is_empty());
        assert_eq!(
            compare(&earlier, &settings(&[("crop", "224"), ("sampler", "balanced")])),
            [Difference { setting: "sampler".into(), recorded: "shuffle".into(), asked: "balanced".into() }]
        );
    }

    /// A record made before the architecture was recorded is trusted; one recorded compares.
    #[test]
    fn an_architecture_is_compared_once_recorded() {
        let settings =
            |pairs: &[(&str, &str)]| -> BTreeMap<String, String> { pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        let now = settings(&[("crop", "224"), (ARCHITECTURE, "{\"depth\":12}")]);
        assert!(compare(&settings(&[("crop", "224")]), &now).is_empty());
        assert_eq!(
            compare(&settings(&[("crop", "224"), (ARCHITECTURE, "{\"depth\":6}")]), &now),
            [Difference { setting: ARCHITECTURE.into(), recorded: "{\"depth\":6}".into(), asked: "{\"depth\":12}".into() }]
        );
    }
}
