//! What `cargo xtask predict` needs of a backbone `rank --finetune-top` fine-tuned:
//! OUT/models/<backbone>.json beside the ranking, naming the kept model of the search's best
//! trial, the classes in the order of its head's outputs (the class folders' or the CSV's labels,
//! which the checkpoint alone cannot tell), and the preprocessing it was trained and tested with.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use medxfer_zoo::{Backbone, HubOptions, ModelEntry, Registry};
use serde::{Deserialize, Serialize};

use crate::weights::folder_name;

/// The cards' folder in rank's --out.
pub const CARDS_DIR: &str = "models";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub backbone: String,
    /// The registry folder rank read the backbone from (`--models`), where not the default.
    pub models: Option<PathBuf>,
    /// The best trial's kept model, relative to rank's --out (so the folder can move).
    pub checkpoint: PathBuf,
    /// The head's classes, output 0 first.
    pub classes: Vec<String>,
    /// Shorter side, centre crop and per-channel normalisation, as in training.
    pub resize: u32,
    pub crop: u32,
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// The frame read of each DICOM file of several (rank's --dicom-frame), which `predict`
    /// reads of new ones too (all or every:K: each frame kept an image, a file's prediction their
    /// mean); `only` (such files refused) on cards written before it was kept.
    #[serde(default)]
    pub dicom_frame: medxfer_data::FrameSelection,
    /// The display window grayscale images were read through (rank's --window),
    /// which `predict` reads new ones through too; none: each file's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<medxfer_data::Window>,
    /// The axes NIfTI volumes were read along (rank's --reorient), which `predict` reads new
    /// ones along too; stored on cards written before it was kept.
    #[serde(default)]
    pub reorient: medxfer_data::Orientation,
    /// The volume read of each 4-D NIfTI file (rank's --volume, counted from 1; three joined by +,
    /// one a colour channel), which `predict` reads of new ones too; none: such files refused (and
    /// on cards written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<medxfer_data::Volumes>,
    /// Whether each frame was read 2.5-D, with its neighbours as red and blue (rank's
    /// --adjacent-slices), as `predict` reads new ones; false on cards written before it was kept.
    #[serde(default)]
    pub adjacent_slices: bool,
    /// The conditions on their DICOM header the images met (rank's --dicom-where), which
    /// `predict` keeps new images by too; none on cards written before it was kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dicom_where: Vec<medxfer_data::DicomCondition>,
    /// The kept epoch's on the val part of rank's split (finetune_split.csv): what `predict`
    /// chooses by, so that the test part's stays an estimate the choice did not see.
    #[serde(default)]
    pub val_balanced_accuracy: Option<f64>,
    /// On the test part of rank's split.
    pub test_balanced_accuracy: Option<f64>,
    /// The temperature the logits are divided by for calibrated probabilities (`predict
    /// --calibrated`), fitted on the val part by likelihood; None where none could be fitted
    /// (`uncalibrated_because` says why) or the card is older than the fit.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Why `temperature` is None, where rank fitted none.
    #[serde(default)]
    pub uncalibrated_because: Option<String>,
}

impl ModelCard {
    pub fn path(out: &Path, backbone: &str) -> PathBuf {
        out.join(CARDS_DIR).join(format!("{}.json", folder_name(backbone)))
    }

    pub fn write(&self, out: &Path) -> Result<()> {
        let path = Self::path(out, &self.backbone);
        let text = serde_json::to_string_pretty(self)?;
        medxfer_durable::write_atomic(&path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Every card in `out`, in file-name order.
    pub fn read_all(out: &Path) -> Result<Vec<Self>> {
        card_files(out)?
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{}: not a model card rank wrote; rerun `cargo xtask rank --finetune-top K` (its runs are reused)",
                        path.display()
                    )
                })
            })
            .collect()
    }

    /// Removes the cards an earlier `rank --finetune-top` wrote into `out`: of another shortlist
    /// or other images, they would be taken for this ranking's.
    pub fn remove_all(out: &Path) -> Result<()> {
        for path in card_files(out)? {
            std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
        Ok(())
    }

    /// The fine-tuned model, loaded on `device`, with its registry entry: the backbone resolved
    /// in `models` (else the registry rank read, as the card records, else the default one).
    pub fn load(&self, out: &Path, models: Option<&Path>, device: &Device) -> Result<(ModelEntry, Backbone)> {
        let checkpoint = self.checkpoint_in(out)?;
        let registry = match models.or(self.models.as_deref()) {
            Some(dir) => Registry::load(dir)?,
            None => Registry::load_default()?,
        };
        let entry = registry.resolve(&self.backbone, &HubOptions::from_env()).with_context(|| {
            format!("{} was fine-tuned from {}: pass the registry folder rank read it from (--models)", checkpoint.display(), self.backbone)
        })?;
        let model = medxfer_train::load_fine_tuned(&entry, &checkpoint, Some(self.classes.len()), device)?;
        Ok((entry, model))
    }

    /// The kept model's file, which must be there.
    pub fn checkpoint_in(&self, out: &Path) -> Result<PathBuf> {
        let path = out.join(&self.checkpoint);
        if !path.is_file() {
            bail!(
                "{}: {}'s fine-tuned model is not there (the runs/ folder was moved or deleted?); rerun `cargo xtask rank --finetune-top K` with the same images to train it again",
                path.display(),
                self.backbone
            );
        }
        Ok(path)
    }
}

/// The JSON files in `out`'s cards folder, in name order (none where there is no folder).
fn card_files(out: &Path) -> Result<Vec<PathBuf>> {
    let dir = out.join(CARDS_DIR);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
    paths.sort();
    Ok(paths)
}
