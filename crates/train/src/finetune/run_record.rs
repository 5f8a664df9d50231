//! What shaped a run, recorded in its folder (`run-settings.json`) when it starts and compared
//! whenever it is continued or read back as finished: a rerun of `medxfer-train finetune` or
//! `search` into the same `--out` with another `--lr`, `--epochs`, `--batch`, ... is refused
//! naming the setting, where it would otherwise have resumed the old run under the new settings
//! (a schedule of two lengths in one history) or returned the old run's outcome as the new one's.
//! `cargo xtask reproduce` refuses such reruns earlier, from its own per-folder record; this one
//! guards every run, whoever starts it.
//!
//! Values are kept as text (Rust's shortest round-trip formatting for numbers), so that a value
//! compares equal to itself exactly however the file was parsed.

use std::collections::BTreeMap;
use std::path::Path;

use super::{RunData, RunSettings, Selection, SplitData};
use crate::error::{Error, Result};

/// The record's file name, in a run's folder.
pub const RUN_SETTINGS_FILE: &str = "run-settings.json";

/// What shaped a run beyond its settings: the backbone, and the images it trains and chooses
/// its epoch on (their decoded size, their count per class).
#[derive(Debug, Clone, PartialEq)]
pub struct RunInputs {
    /// The backbone's registry name.
    pub model: String,
    /// The shorter side the images were decoded to.
    pub resize: u32,
    /// Train images per class, as text: `{0: 20, 1: 11}`.
    pub train_images: String,
    /// Validation images per class.
    pub val_images: String,
}

impl RunInputs {
    /// The inputs of a run of `model` on `data`.
    pub fn of(model: &str, data: &RunData) -> Self {
        Self {
            model: model.to_string(),
            resize: data.train.cache.short_side(),
            train_images: per_class(&data.train),
            val_images: per_class(&data.val),
        }
    }
}

/// Settings recorded since a later version: a record without them (a run started before) passes
/// on them, where the others must all be there.
const LATER_SETTINGS: [&str; 4] = ["model", "resize", "train_images", "val_images"];

/// Settings recorded since a later version with one value before it: a record without one was
/// made with that value.
const DEFAULTED_SETTINGS: [(&str, &str); 2] = [("class_weights", "none"), ("sampler", "shuffle")];

/// Images per class of a split, as text.
fn per_class(split: &SplitData) -> String {
    let counts = split.labels.iter().fold(BTreeMap::<u32, usize>::new(), |mut counts, &label| {
        *counts.entry(label).or_default() += 1;
        counts
    });
    format!("{counts:?}")
}

/// A run's settings as setting name -> value as text.
fn as_text(settings: &RunSettings, inputs: &RunInputs) -> BTreeMap<&'static str, String> {
    let RunSettings {
        epochs,
        batch_size,
        seed,
        learning_rate,
        weight_decay,
        momentum,
        selection,
        patience,
        normalization,
        train_transform,
        crop,
        class_weights,
        sampler,
    } = settings;
    let selection = match selection {
        Selection::ValLoss => "val-loss",
        Selection::ValBalancedAccuracy => "val-balanced-accuracy",
    };
    BTreeMap::from([
        ("epochs", epochs.to_string()),
        ("batch_size", batch_size.to_string()),
        ("seed", seed.to_string()),
        ("learning_rate", format!("{learning_rate:?}")),
        ("weight_decay", format!("{weight_decay:?}")),
        ("momentum", format!("{momentum:?}")),
        ("selection", selection.to_string()),
        ("patience", patience.map_or("none".to_string(), |p| p.to_string())),
        ("normalization_mean", format!("{:?}", normalization.mean)),
        ("normalization_std", format!("{:?}", normalization.std)),
        ("train_crop", train_transform.size.to_string()),
        ("train_scale", format!("{:?}", train_transform.scale)),
        ("train_ratio", format!("{:?}", train_transform.ratio)),
        ("train_degrees", format!("{:?}", train_transform.degrees)),
        ("train_hue", format!("{:?}", train_transform.hue)),
        ("crop", crop.to_string()),
        ("class_weights", class_weights.as_str().to_string()),
        ("sampler", sampler.as_str().to_string()),
        ("model", inputs.model.clone()),
        ("resize", inputs.resize.to_string()),
        ("train_images", inputs.train_images.clone()),
        ("val_images", inputs.val_images.clone()),
    ])
}

/// The command-line option that sets `setting`, for the message.
fn option(setting: &str) -> &'static str {
    match setting {
        "epochs" => "--epochs",
        "batch_size" => "--batch",
        "seed" => "--seed",
        "learning_rate" => "--lr",
        "weight_decay" => "--wd",
        "selection" => "--select",
        "patience" => "--patience",
        "class_weights" => "--class-weights",
        "sampler" => "--sampler",
        "normalization_mean" | "normalization_std" => "--fix-std, or the backbone's preprocessing",
        "crop" | "train_crop" => "--crop",
        "model" => "--model",
        "resize" => "--resize",
        "train_images" | "val_images" => "--split, --root",
        _ => "no option: the run was made by another version or by hand",
    }
}

/// Refuses `settings` and `inputs` when `dir` holds a run recorded with other ones; a folder
/// without a record (no run yet, or one made before runs were recorded) passes.
pub fn check(dir: &Path, settings: &RunSettings, inputs: &RunInputs) -> Result<()> {
    let Some(mut recorded) = recorded(dir)? else { return Ok(()) };
    for (setting, value) in DEFAULTED_SETTINGS {
        recorded.entry(setting.to_string()).or_insert_with(|| value.to_string());
    }
    let mut asked = as_text(settings, inputs);
    asked.retain(|setting, _| recorded.contains_key(*setting) || !LATER_SETTINGS.contains(setting));
    let none = "(not recorded)".to_string();
    let differences: Vec<String> = asked
        .keys()
        .copied()
        .chain(recorded.keys().map(String::as_str))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter_map(|setting| {
            let (then, now) = (recorded.get(setting).unwrap_or(&none), asked.get(setting).unwrap_or(&none));
            (then != now).then(|| format!("{setting} was {then}, this run asks for {now} ({})", option(setting)))
        })
        .collect();
    if differences.is_empty() {
        return Ok(());
    }
    Err(Error::OtherSettings { dir: dir.to_path_buf(), differences })
}

/// The settings recorded in the run folder `dir` (setting name -> value as text), or `None`
/// where it holds no record (no run, or one made before runs were recorded).
pub fn recorded(dir: &Path) -> Result<Option<BTreeMap<String, String>>> {
    let path = dir.join(RUN_SETTINGS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io { path, problem: e.to_string() }),
    };
    let recorded = serde_json::from_slice(&bytes).map_err(|e| Error::Io {
        path: path.clone(),
        problem: format!(
            "not a run-settings record ({e}): medxfer-train writes it when a run starts; restore it, or start the run again in a new --out"
        ),
    })?;
    Ok(Some(recorded))
}

/// Records `settings` in `dir` unless a record is there already (which [`check`] compared).
pub fn record(dir: &Path, settings: &RunSettings, inputs: &RunInputs) -> Result<()> {
    let path = dir.join(RUN_SETTINGS_FILE);
    if path.exists() {
        return Ok(());
    }
    let json =
        serde_json::to_vec_pretty(&as_text(settings, inputs)).map_err(|e| Error::Io { path: path.clone(), problem: e.to_string() })?;
    Ok(medxfer_durable::write_atomic(&path, &json)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Normalization;

    fn settings() -> RunSettings {
        RunSettings::reference(0.1 + 0.2, 1e-5, Normalization::study(Normalization::IMAGENET.mean, Normalization::IMAGENET.std, false))
    }

    fn inputs() -> RunInputs {
        RunInputs { model: "resnet18".into(), resize: 256, train_images: "{0: 20, 1: 11}".into(), val_images: "{0: 4, 1: 3}".into() }
    }

    #[test]
    fn a_record_compares_equal_to_its_settings_and_names_each_difference() {
        let dir = tempfile::tempdir().unwrap();
        check(dir.path(), &settings(), &inputs()).unwrap();
        record(dir.path(), &settings(), &inputs()).unwrap();
        // 0.1 + 0.2 is not 0.3: the text keeps every bit.
        check(dir.path(), &settings(), &inputs()).unwrap();
        let other = RunSettings { learning_rate: 0.3, epochs: 20, ..settings() };
        match check(dir.path(), &other, &inputs()) {
            Err(Error::OtherSettings { differences, .. }) => {
                assert_eq!(differences.len(), 2, "{differences:?}");
                assert!(differences[0].starts_with("epochs was 100, this run asks for 20 (--epochs)"), "{differences:?}");
                assert!(
                    differences[1].starts_with("learning_rate was 0.30000000000000004, this run asks for 0.3 (--lr)"),
                    "{differences:?}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // A second record does not replace the first.
        record(dir.path(), &other, &inputs()).unwrap();
        assert!(check(dir.path(), &other, &inputs()).is_err());
    }

    #[test]
    fn another_backbone_or_other_images_are_refused_and_an_older_record_passes_without_them() {
        let dir = tempfile::tempdir().unwrap();
        record(dir.path(), &settings(), &inputs()).unwrap();
        let cases = [
            (RunInputs { model: "resnet50".into(), ..inputs() }, "model was resnet18, this run asks for resnet50 (--model)"),
            (RunInputs { resize: 128, ..inputs() }, "resize was 256, this run asks for 128 (--resize)"),
            (
                RunInputs { val_images: "{0: 5, 1: 3}".into(), ..inputs() },
                "val_images was {0: 4, 1: 3}, this run asks for {0: 5, 1: 3} (--split, --root)",
            ),
        ];
        for (other, difference) in cases {
            match check(dir.path(), &settings(), &other) {
                Err(Error::OtherSettings { differences, .. }) => assert_eq!(differences, [difference]),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        // A record written before these were recorded holds only the settings.
        let path = dir.path().join(RUN_SETTINGS_FILE);
        let mut older: BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        older.retain(|setting, _| !LATER_SETTINGS.contains(&setting.as_str()));
        assert_eq!(older.len(), as_text(&settings(), &inputs()).len() - LATER_SETTINGS.len());
        std::fs::write(&path, serde_json::to_vec(&older).unwrap()).unwrap();
        check(dir.path(), &settings(), &RunInputs { model: "resnet50".into(), ..inputs() }).unwrap();
        assert!(check(dir.path(), &RunSettings { epochs: 20, ..settings() }, &inputs()).is_err(), "the settings are still compared");
    }

    #[test]
    fn class_weights_and_sampler_are_compared_and_a_record_without_them_was_made_without() {
        let cases = [
            ("class_weights", "none", RunSettings { class_weights: crate::ClassWeights::Balanced, ..settings() }, "--class-weights"),
            ("sampler", "shuffle", RunSettings { sampler: crate::Sampler::Balanced, ..settings() }, "--sampler"),
        ];
        for (setting, reference, balanced, option) in cases {
            let dir = tempfile::tempdir().unwrap();
            record(dir.path(), &balanced, &inputs()).unwrap();
            check(dir.path(), &balanced, &inputs()).unwrap();
            match check(dir.path(), &settings(), &inputs()) {
                Err(Error::OtherSettings { differences, .. }) => {
                    assert_eq!(differences, [format!("{setting} was balanced, this run asks for {reference} ({option})")]);
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
            // Written before the setting was recorded: the reference's.
            let path = dir.path().join(RUN_SETTINGS_FILE);
            let mut older: BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            older.remove(setting).unwrap();
            std::fs::write(&path, serde_json::to_vec(&older).unwrap()).unwrap();
            check(dir.path(), &settings(), &inputs()).unwrap();
            let message = format!("{:?}", check(dir.path(), &balanced, &inputs()).unwrap_err());
            assert!(message.contains(&format!("{setting} was {reference}, this run asks for balanced")), "{message}");
        }
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(RUN_SETTINGS_FILE), b"{\"epochs\": ").unwrap();
        let message = check(dir.path(), &settings(), &inputs()).unwrap_err().to_string();
        assert!(message.contains(RUN_SETTINGS_FILE) && message.contains("new --out"), "{message}");
    }
}
