//! `reproduce --plan`: what is left to do and how long it should take, from the throughput the
//! study's own finished epochs measured; starts nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;
use medxfer_train::{history, summarize_search, trial_dir};

use super::Study;
use super::splits::NOTE_FILE;
use crate::report::SplitNote;
use crate::results::Setting;

/// One unit's state.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitPlan {
    pub task: String,
    pub backbone: String,
    pub id_scores: bool,
    pub finished: usize,
    pub diverged: usize,
    pub pending: usize,
    /// Epochs still to train in this unit's search.
    pub epochs_left: usize,
    pub ood: bool,
    /// Estimated seconds, when this backbone's throughput has been measured.
    pub seconds: Option<f64>,
}

/// The state of every unit, and the measured seconds per training image of each backbone.
pub fn plan(study: &Study) -> Vec<UnitPlan> {
    let layout = &study.layout;
    let train_images = |task: &str| -> Option<usize> {
        let note: SplitNote = serde_json::from_slice(&std::fs::read(layout.splits(task).join(NOTE_FILE)).ok()?).ok()?;
        note.images.get("train").copied()
    };
    // Seconds per (epoch x train image) of each backbone, over every epoch it has run.
    let mut throughput: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for task in &study.tasks {
        let Some(images) = train_images(&task.name) else { continue };
        for entry in &study.backbones {
            for trial in 0..study.trials {
                let history = history(&trial_dir(&layout.runs(&task.name, &entry.name), trial));
                let sum = throughput.entry(entry.name.as_str()).or_default();
                for record in history {
                    sum.0 += record.seconds;
                    sum.1 += images as f64;
                }
            }
        }
    }
    let mut units = Vec::new();
    for task in &study.tasks {
        for entry in &study.backbones {
            let dir = layout.runs(&task.name, &entry.name);
            let summary = summarize_search(&dir, study.trials);
            let epochs_left: usize =
                summary.pending.iter().map(|&t| study.options.epochs.saturating_sub(history(&trial_dir(&dir, t)).len())).sum();
            let measured = throughput.get(entry.name.as_str()).filter(|(_, images)| *images > 0.0).map(|(s, images)| s / images);
            let rate = measured.or_else(|| study.benchmarked_rates.get(&entry.name).map(|images_per_second| 1.0 / images_per_second));
            let seconds = match (rate, train_images(&task.name)) {
                (Some(rate), Some(images)) => Some(rate * images as f64 * epochs_left as f64),
                _ if epochs_left == 0 => Some(0.0),
                _ => None,
            };
            // Scores whose feature file is lost or damaged are done again by the run.
            let scored = |setting: Setting| {
                layout.scores(&task.name, &entry.name, setting).exists()
                    && crate::features::is_whole_safetensors(&layout.features(&task.name, &entry.name, setting))
            };
            units.push(UnitPlan {
                task: task.name.clone(),
                backbone: entry.name.clone(),
                id_scores: scored(Setting::Id),
                finished: summary.finished.len(),
                diverged: summary.diverged.len(),
                pending: summary.pending.len(),
                epochs_left,
                ood: scored(Setting::Ood),
                seconds,
            });
        }
    }
    units
}

/// Training images per second by backbone from `bench-zoo --train`'s JSON (a list of
/// `{"model", "train", "batch", "size", "device", "medxfer": {"images_per_second"}}`; files
/// written before `train`, `batch`, `size` and `device` were recorded are taken as they are), and
/// what to warn of. Eval rates (`bench-zoo` without `--train`, about three times the training
/// rate) are refused; rates measured at another batch or image size than the study's (`batch`,
/// `crop`), or on another kind of device than its `device` (CPU rates for a GPU study made its
/// hours some fifty times too many, unsaid), are taken with a warning.
pub fn read_rates(path: &std::path::Path, batch: usize, crop: u32, device: &str) -> Result<(BTreeMap<String, f64>, Vec<String>)> {
    use anyhow::Context as _;
    let text = std::fs::read(path).with_context(|| format!("cannot read --rates {}", path.display()))?;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&text)
        .with_context(|| format!("--rates {}: not the JSON list `bench-zoo --train` writes (zoo-train*.json)", path.display()))?;
    let mut rates = BTreeMap::new();
    let mut other_sizes = std::collections::BTreeSet::new();
    let mut other_devices = std::collections::BTreeSet::new();
    let kind = |device: &str| if device.starts_with("cuda") { "a GPU" } else { "the CPU" };
    for row in rows {
        if row["train"] == serde_json::Value::Bool(false) {
            anyhow::bail!(
                "--rates {}: eval rates (bench-zoo without --train), not training rates; give the zoo-train*.json of `cargo xtask bench-zoo --train`",
                path.display()
            );
        }
        if let (Some(measured_batch), Some(size)) = (row["batch"].as_u64(), row["size"].as_u64())
            && (measured_batch, size) != (batch as u64, u64::from(crop))
        {
            other_sizes.insert((measured_batch, size));
        }
        if let Some(measured_on) = row["device"].as_str().filter(|measured_on| kind(measured_on) != kind(device)) {
            other_devices.insert(measured_on.to_string());
        }
        let (Some(model), true) = (row["model"].as_str(), row["medxfer"].is_object()) else {
            anyhow::bail!("--rates {}: a row without `model` and `medxfer.images_per_second`: {row}", path.display());
        };
        // A failed measurement is written as null: no rate.
        if let Some(rate) = row["medxfer"]["images_per_second"].as_f64().filter(|r| r.is_finite() && *r > 0.0) {
            rates.insert(model.to_string(), rate);
        }
    }
    let mut warnings: Vec<String> = other_sizes
        .into_iter()
        .map(|(measured_batch, size)| {
            format!(
                "--rates {}: measured at batch {measured_batch}, {size} px, the study trains at batch {batch}, {crop} px: the hours are an estimate at another size",
                path.display()
            )
        })
        .collect();
    warnings.extend(other_devices.into_iter().map(|measured_on| {
        format!(
            "--rates {}: measured on {measured_on}, the study runs on {device} ({}): the hours are not this study's; measure with `bench-zoo --train --device {device}`",
            path.display(),
            kind(device)
        )
    }));
    Ok((rates, warnings))
}

/// The plan as a table and a total.
pub fn render(study: &Study, units: &[UnitPlan]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<8} {:<24} {:>9} {:>22} {:>11} {:>5} {:>10}",
        "task", "backbone", "S_id", "trials done/div./left", "epochs left", "OOD", "est. hours"
    );
    let done = |b: bool| if b { "done" } else { "to do" };
    for u in units {
        let hours = u.seconds.map_or("unmeasured".to_string(), duration);
        let _ = writeln!(
            text,
            "{:<8} {:<24} {:>9} {:>22} {:>11} {:>5} {:>10}",
            u.task,
            u.backbone,
            done(u.id_scores),
            format!("{}/{}/{}", u.finished, u.diverged, u.pending),
            u.epochs_left,
            done(u.ood),
            hours
        );
    }
    let epochs: usize = units.iter().map(|u| u.epochs_left).sum();
    let known: f64 = units.iter().filter_map(|u| u.seconds).fold(0.0, |a, b| a + b);
    let unmeasured: Vec<String> = units.iter().filter(|u| u.seconds.is_none()).map(|u| format!("{} {}", u.task, u.backbone)).collect();
    let _ = writeln!(
        text,
        "\n{} trial(s) and {epochs} epoch(s) left; about {:.2} device-hours ({}) on {} for the measured units",
        units.iter().map(|u| u.pending).sum::<usize>(),
        known / 3600.0,
        duration(known),
        study.device
    );
    if !study.benchmarked_rates.is_empty() {
        let _ = writeln!(
            text,
            "backbones without a measured epoch are estimated from --rates (training steps only: validation and evaluation add a little)"
        );
    }
    if !unmeasured.is_empty() {
        let _ = writeln!(
            text,
            "{} unit(s) have no measured epoch yet ({}): their time is not in the total; one epoch of each backbone, or `cargo xtask bench-zoo --train`, measures it",
            unmeasured.len(),
            if unmeasured.len() > 4 { format!("{}, ...", unmeasured[..4].join(", ")) } else { unmeasured.join(", ") }
        );
    }
    text
}

/// Seconds as seconds, minutes or hours.
fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 90.0 => format!("{s:.0} s"),
        s if s < 5400.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

/// Prints the plan, the settings recorded in the results folder, and whether a run with these
/// options would continue them or refuse.
pub fn print(study: &Study) -> Result<()> {
    print!("{}", render(study, &plan(study)));
    let records = crate::recorded::records_in(&study.layout.out)?;
    if records.is_empty() {
        println!("\nno recorded settings yet: a run starts the results afresh with this command's");
        return Ok(());
    }
    println!("\nsettings recorded in {}:\n{}", study.layout.out.display(), crate::recorded::describe(&records));
    match study.check_recorded() {
        Ok(()) => println!("this command's settings match them: a run continues the results"),
        Err(refusal) => println!("a run with this command would refuse to start: {refusal:#}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn benchmark_rates_are_read_and_a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zoo-train-gpu.json");
        let rows = r#"[{"model": "resnet50", "medxfer": {"images_per_second": 592.7}, "timm": {"images_per_second": 872.9}},
                       {"model": "vit_small_patch16_224", "medxfer": {"images_per_second": null}, "timm": null}]"#;
        std::fs::write(&path, rows).unwrap();
        // A failed measurement (null) is no rate.
        assert_eq!(read_rates(&path, 128, 224, "cuda:0").unwrap().0, BTreeMap::from([("resnet50".to_string(), 592.7)]));
        std::fs::write(&path, r#"{"seconds": 1}"#).unwrap();
        let error = format!("{:#}", read_rates(&path, 128, 224, "cuda:0").unwrap_err());
        assert!(error.contains("zoo-train") && error.contains(&path.display().to_string()), "{error}");
        std::fs::write(&path, r#"[{"name": "resnet50"}]"#).unwrap();
        assert!(format!("{:#}", read_rates(&path, 128, 224, "cuda:0").unwrap_err()).contains("medxfer.images_per_second"));
        // Eval rates, as bench-zoo without --train records them, are not training rates.
        std::fs::write(
            &path,
            r#"[{"model": "resnet50", "train": false, "batch": 128, "size": 224, "medxfer": {"images_per_second": 1800.0}}]"#,
        )
        .unwrap();
        let error = format!("{:#}", read_rates(&path, 128, 224, "cuda:0").unwrap_err());
        assert!(error.contains("eval rates (bench-zoo without --train)"), "{error}");
        std::fs::write(
            &path,
            r#"[{"model": "resnet50", "train": true, "batch": 32, "size": 64, "medxfer": {"images_per_second": 900.0}}]"#,
        )
        .unwrap();
        let (rates, warnings) = read_rates(&path, 128, 224, "cuda:0").unwrap();
        assert_eq!(rates, BTreeMap::from([("resnet50".to_string(), 900.0)]));
        assert!(matches!(warnings.as_slice(), [one] if one.contains("measured at batch 32, 64 px")), "{warnings:?}");
        // CPU rates for a GPU study, or GPU rates for a CPU one: warned; another GPU is no warning.
        std::fs::write(
            &path,
            r#"[{"model": "resnet50", "train": true, "batch": 128, "size": 224, "device": "cpu", "medxfer": {"images_per_second": 27.0}}]"#,
        )
        .unwrap();
        let (_, warnings) = read_rates(&path, 128, 224, "cuda:0").unwrap();
        assert!(matches!(warnings.as_slice(), [one] if one.contains("measured on cpu, the study runs on cuda:0 (a GPU)")), "{warnings:?}");
        assert!(read_rates(&path, 128, 224, "cpu").unwrap().1.is_empty());
        std::fs::write(&path, std::fs::read_to_string(&path).unwrap().replace("\"cpu\"", "\"cuda:1\"")).unwrap();
        assert!(read_rates(&path, 128, 224, "cuda:0").unwrap().1.is_empty());
        assert_eq!(read_rates(&path, 128, 224, "cpu").unwrap().1.len(), 1);
    }
}
