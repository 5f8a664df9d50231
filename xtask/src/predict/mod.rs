//! `cargo xtask predict`: the fine-tuned backbone `rank --finetune-top` found best, applied to
//! new images. Each image is prepared as the model's test images were (shorter side, centre
//! crop, normalisation from its card) and gets its predicted class and every class's
//! probability, one CSV row per image. Where the images' classes are known (a label column
//! named by --csv-columns, or each image in a folder named after one of the classes: a labelled
//! test folder, rank's finetune_split.csv), the balanced accuracy against them is given too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use medxfer_data::{FrameSelection, Normalization};
use medxfer_train::calibration::{self, Calibration};
use medxfer_train::{RunSettings, Views, logits_split_views, macro_auroc, one_vs_rest_auroc};

use crate::rank::card::ModelCard;
use images::{Images, cached_images, image_paths, keep_chosen_slices, keep_where, prune_prediction_caches, unreadable_file};

mod images;
mod maps;

/// Which fine-tuned model `predict` and `export` take: rank's output and a backbone of it.
#[derive(Debug, Args)]
pub struct FineTunedModel {
    /// rank's --out folder, where `--finetune-top` wrote a card per fine-tuned backbone (models/).
    #[arg(long)]
    pub ranking: PathBuf,
    /// The fine-tuned backbone; by default the one with the best validation balanced accuracy
    /// (chosen on val, its test accuracy stays an estimate the choice did not see).
    #[arg(long)]
    pub backbone: Option<String>,
    /// The model registry (the one rank read, as its card records, by default).
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
}

impl FineTunedModel {
    /// The chosen backbone's card.
    pub fn card(&self) -> Result<ModelCard> {
        chosen_card(&self.ranking, self.backbone.as_deref())
    }

    /// `card`'s model with its fine-tuned weights, on `device`, and its registry entry.
    pub fn load(&self, card: &ModelCard, device: &candle_core::Device) -> Result<(medxfer_zoo::ModelEntry, medxfer_zoo::Backbone)> {
        card.load(&self.ranking, self.models.as_deref(), device)
    }
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: FineTunedModel,
    /// The images (JPEG, PNG, TIFF, BMP, DICOM, NIfTI): one image, a folder (every image under
    /// it, at any depth) or a CSV file with a `path` column (rank's finetune_split.csv, a study's
    /// split manifest) or the columns --csv-columns names.
    #[arg(long)]
    pub images: PathBuf,
    /// With a CSV: its path column, and optionally its label column (class names, or a one-hot
    /// label's class columns joined by '+', as rank reads them) to measure the predictions
    /// against, as PATH[,LABEL]. A path without an extension is looked for as .jpg, .png ...
    #[arg(long, value_name = "PATH[,LABEL]")]
    pub csv_columns: Option<String>,
    /// The folder a CSV's relative paths are under (the CSV's own folder by default).
    #[arg(long, value_name = "DIR")]
    pub images_root: Option<PathBuf>,
    /// Of a DICOM file of several frames or a NIfTI volume of several slices (--slice), the frame
    /// to read (first, middle, last or N, as rank takes it; only: such a file refused), or `all`
    /// (every:K): each frame (every K-th) predicted and the file's probabilities their mean, one
    /// row a file. Of a DICOM series stored a file a slice, one slice chosen is the series' row;
    /// several (all, every:K) are one row named by the first of them, the mean of theirs. By
    /// default as rank read its images (`dicom_frame` in the model's card).
    #[arg(long, visible_alias = "slice", value_name = "FRAME")]
    pub dicom_frame: Option<FrameSelection>,
    /// A display window for grayscale images (DICOM, NIfTI, PNG, TIFF, BMP, JPEG; CENTER,WIDTH, or
    /// three joined by + for the red, green and blue channels, as rank takes it). By default the
    /// one rank read its images through (`window` in the model's card), else each file's own.
    #[arg(long, value_name = "CENTER,WIDTH", allow_hyphen_values = true)]
    pub window: Option<medxfer_data::Window>,
    /// A NIfTI volume's axes, stored or canonical (RAS+, as rank takes it). By default the ones
    /// rank read its volumes along (`reorient` in the model's card).
    #[arg(long, value_name = "ORIENTATION")]
    pub reorient: Option<medxfer_data::Orientation>,
    /// Of a 4-D NIfTI file, the volume read (N, counted from 1, or three joined by + for the red,
    /// green and blue channels, as rank takes it). By default the one rank read (`volume` in the
    /// model's card).
    #[arg(long, value_name = "N")]
    pub volume: Option<medxfer_data::Volumes>,
    /// Only the DICOM files whose header meets every condition (FIELD=PATTERN or FIELD!=PATTERN,
    /// the option repeated, as rank takes it) are predicted. By default the conditions rank kept
    /// its images by (`dicom_where` in the model's card); `--dicom-where any` keeps every image.
    #[arg(long, value_name = "FIELD=PATTERN")]
    pub dicom_where: Vec<String>,
    /// Divide the logits by the temperature rank fitted on the val part (temperature scaling,
    /// Guo et al. 2017) before the softmax: the same predicted classes, probabilities that match
    /// how often the model is right. By default the probabilities are as the model gives them.
    #[arg(long)]
    pub calibrated: bool,
    /// Mark each image whose largest probability (calibrated, with --calibrated) is below P for a
    /// person to review: a `refer` column (yes/no), and where the classes are known the balanced
    /// accuracy on the images not referred (the model's share of the work) beside the count.
    #[arg(long, value_name = "P", value_parser = open_unit_interval)]
    pub refer_below: Option<f64>,
    /// Predict the images that can be read and list the others (path,error) in
    /// `<predictions>-unreadable.csv` beside the predictions; by default an unreadable image stops
    /// the run, every one of them named.
    #[arg(long)]
    pub skip_unreadable: bool,
    /// Test-time augmentation: average each image's logits over views of its crop (the mirror
    /// image with `flip`; the eight quarter turns and mirrors with `dihedral`, for images with no
    /// up or left such as dermoscopy and histopathology). rank measured the model on the crop
    /// alone, and fitted the temperature there.
    #[arg(long, value_enum, default_value_t = Views::Crop)]
    pub tta: Views,
    /// Draw where in each image the model found the evidence for its predicted class (Grad-CAM on
    /// the crop it saw) to DIR, one PNG per image at its path under the images' folder with
    /// `.png` appended, and DIR/index.html listing them, the least sure first. The maps are of
    /// the crop itself, whatever --tta averages; a loop predicted from its frames (--dicom-frame
    /// all) gets its map on the frame with the largest probability of the class drawn, which the
    /// page names.
    #[arg(long, value_name = "DIR")]
    pub saliency: Option<PathBuf>,
    /// With --saliency: the evidence for this class in every image, not for the predicted one.
    #[arg(long, value_name = "CLASS", requires = "saliency")]
    pub saliency_class: Option<String>,
    /// The predictions' CSV file (RANKING/predictions.csv by default).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 32, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The GPU's arithmetic (f32 everywhere by default).
    #[command(flatten)]
    pub gpu: crate::gpu_arithmetic::GpuArithmetic,
}

/// What `predict` wrote.
#[derive(Debug)]
pub struct Predicted {
    pub backbone: String,
    pub file: PathBuf,
    /// Images per predicted class, every class listed.
    pub counts: BTreeMap<String, usize>,
    /// Against the CSV's label column, or the class folders the images sit in where every
    /// image's first folder is a class.
    pub evaluation: Option<medxfer_train::Evaluation>,
    /// What `evaluation` is against, in words.
    pub evaluated_against: &'static str,
    /// The temperature the logits were divided by (1 without --calibrated).
    pub temperature: f64,
    /// The written probabilities' calibration against the same classes as `evaluation`.
    pub calibration: Option<Calibration>,
    /// Their macro one-vs-rest AUROC against the same classes.
    pub auroc: Option<f64>,
    /// With --refer-below: the images referred, and the evaluation of the others where the
    /// classes are known.
    pub referral: Option<Referral>,
    /// Images left out as unreadable (--skip-unreadable), and the file listing them.
    pub unreadable: Option<(usize, PathBuf)>,
    /// With --saliency: the overlays written, and their folder (its index.html lists them).
    pub saliency: Option<(usize, PathBuf)>,
}

impl Predicted {
    /// Says on stdout what predict wrote and found for `args`.
    pub fn say(&self, args: &PredictArgs) {
        let counts: Vec<String> = self.counts.iter().map(|(class, n)| format!("{class} {n}")).collect();
        println!(
            "{}: {} images predicted by {} ({}); wrote {}",
            args.images.display(),
            self.counts.values().sum::<usize>(),
            self.backbone,
            counts.join(", "),
            self.file.display()
        );
        if let Some((count, listing)) = &self.unreadable {
            println!("{count} unreadable image(s) left out (--skip-unreadable), each listed with its error in {}", listing.display());
        }
        if let Some((count, dir)) = &self.saliency {
            let class = args.saliency_class.as_deref().map_or_else(|| "its predicted class".to_string(), |class| format!("class {class}"));
            println!(
                "{count} saliency map(s) (Grad-CAM, the evidence for {class}) drawn over the crops the model saw, in {}; {} lists them, the least sure first",
                dir.display(),
                dir.join("index.html").display()
            );
        }
        if let Some(evaluation) = &self.evaluation {
            println!(
                "Against {}: balanced accuracy {:.3}, accuracy {:.3}{}",
                self.evaluated_against,
                evaluation.balanced_accuracy,
                evaluation.accuracy,
                self.auroc.map_or_else(String::new, |auroc| format!(", AUROC {auroc:.3} (one-vs-rest, the classes' mean)"))
            );
        }
        if let Some(referral) = &self.referral {
            println!(
                "Referred for review (largest probability below {}): {} of {}{}",
                referral.threshold,
                referral.referred,
                self.counts.values().sum::<usize>(),
                referral.kept.as_ref().map_or_else(String::new, |kept| format!(
                    "; on the others, balanced accuracy {:.3}, accuracy {:.3}",
                    kept.balanced_accuracy, kept.accuracy
                ))
            );
        }
        if let Some(calibration) = &self.calibration {
            println!(
                "Their probabilities ({}): ECE {:.3} ({} bins), NLL {:.3}, Brier {:.3}",
                if args.calibrated { format!("at temperature {:.3}", self.temperature) } else { "as the model gives them".to_string() },
                calibration.expected_calibration_error,
                calibration::ECE_BINS,
                calibration.negative_log_likelihood,
                calibration.brier
            );
        }
    }
}

pub fn run(args: &PredictArgs) -> Result<Predicted> {
    medxfer_train::check_device_name(&args.device)?;
    args.gpu.apply(&args.device)?;
    let ranking = &args.model.ranking;
    let card = args.model.card()?;
    let checkpoint = card.checkpoint_in(ranking)?;
    let temperature = if args.calibrated { card_temperature(&card, ranking)? } else { 1.0 };
    let mut images = image_paths(&args.images, args.images_root.as_deref(), args.csv_columns.as_deref())?;
    let class_index = |name: &str| card.classes.iter().position(|c| c == name).map(|i| i as u32);
    let (frames, rendering) = reading(args, &card);
    let conditions = dicom_conditions(args, &card)?;
    keep_where(&mut images, &conditions)?;
    keep_chosen_slices(&mut images, frames, rendering.reading())?;
    let csv_truth = csv_labels(&images, &card.classes, &args.images)?;
    check_saliency_outside(args)?;
    let saliency_class = match &args.saliency_class {
        Some(name) => Some(
            class_index(name)
                .with_context(|| format!("--saliency-class {name:?}: not one of the model's classes ({})", card.classes.join(", ")))?,
        ),
        None => None,
    };
    let device = medxfer_train::parse_device(&args.device)?;
    let (_, model) = args.model.load(&card, &device)?;
    eprintln!(
        "{}: {} fine-tuned ({}), {} classes; {} images from {}",
        checkpoint.display(),
        card.backbone,
        match (card.val_balanced_accuracy, card.test_balanced_accuracy) {
            (Some(val), Some(test)) => format!("balanced accuracy {val:.3} on val, {test:.3} on test"),
            (_, Some(test)) => format!("test balanced accuracy {test:.3}"),
            _ => "no test accuracy".to_string(),
        },
        card.classes.len(),
        images.paths.len(),
        args.images.display()
    );
    say_reading_differences(&card, frames, rendering);
    let file = args.out.clone().unwrap_or_else(|| ranking.join("predictions.csv"));
    let cache_dir = ranking.join("cache");
    let listing = unreadable_file(&file);
    let cached = cached_images(&cache_dir, &mut images, (card.resize, frames, rendering), args.skip_unreadable, &listing)?;
    let unreadable = cached.readable.as_ref().map(|readable| (readable.iter().filter(|r| !**r).count(), listing));
    // The labels of the images predicted, where some were left out.
    let csv_truth = match (csv_truth, &cached.readable) {
        (Some(truth), Some(readable)) => Some(truth.into_iter().zip(readable).filter(|(_, r)| **r).map(|(t, _)| t).collect()),
        (truth, _) => truth,
    };
    prune_prediction_caches(&cache_dir, cached.split.cache.key());
    let paths = &images.paths;
    let settings = RunSettings {
        batch_size: args.batch,
        crop: card.crop,
        ..RunSettings::reference(0.0, 0.0, Normalization { mean: card.mean, std: card.std })
    };
    let bar = crate::features::image_bar(paths.len(), format!("{}: predicting", card.backbone));
    let logits = logits_split_views(&model, &cached.split, &settings, args.tta, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    if args.tta != Views::Crop {
        eprintln!("test-time augmentation: each image's logits averaged over {} views of its crop", args.tta.count());
    }
    if args.calibrated {
        eprintln!("calibrated: the logits divided by {temperature:.3}, the temperature fitted on rank's val part");
    }
    // A loop's frames each predicted: the file's probabilities their mean, whose logarithms
    // stand for its logits from here on (their softmax at temperature 1 gives them back).
    let (logits, divisor, frame_logits) = per_file_logits(logits, &cached.file_of, paths.len(), temperature);
    let probabilities: Vec<Vec<f64>> = logits.iter().map(|row| calibration::probabilities(row, divisor)).collect();
    let Written { predicted, counts, referred } = write_predictions(&file, &card.classes, paths, &probabilities, args.refer_below)?;
    let truth: Option<Vec<u32>> = match csv_truth {
        Some(truth) => Some(truth),
        None => paths.iter().map(|path| path.split('/').next().and_then(class_index)).collect(),
    };
    if let Some(truth) = &truth {
        anyhow::ensure!(
            truth.len() == predicted.len(),
            "{} labels for {} predictions: the label column lost its alignment",
            truth.len(),
            predicted.len()
        );
    }
    let evaluation = truth.as_ref().map(|truth| medxfer_train::evaluate(truth, &predicted, card.classes.len()));
    let calibration = truth.as_ref().map(|truth| calibration::calibration(&logits, truth, divisor));
    let auroc = truth.as_ref().and_then(|truth| macro_auroc(&one_vs_rest_auroc(&probabilities, truth, card.classes.len())));
    let referral = args.refer_below.map(|threshold| Referral::of(threshold, &referred, truth.as_deref(), &predicted, card.classes.len()));
    let saliency = match &args.saliency {
        Some(dir) => {
            let reader = maps::Reader {
                card: &card,
                model: &model,
                settings: &settings,
                rendering,
                cache_dir: &cache_dir,
                images: &images,
                cached: &cached,
            };
            let rows = maps::Rows {
                predicted: &predicted,
                probabilities: &probabilities,
                truth: truth.as_deref(),
                referred: args.refer_below.map(|_| referred.as_slice()),
                pooled: frame_logits.as_deref().map(|logits| (logits, temperature)),
            };
            let heading = format!("{} on {}", card.backbone, args.images.display());
            Some((maps::write_maps(dir, &heading, &reader, &rows, saliency_class)?, dir.clone()))
        }
        None => None,
    };
    let evaluated_against = if images.labels.is_some() { "the CSV's label column" } else { "the class folders the images sit in" };
    Ok(Predicted {
        backbone: card.backbone,
        file,
        counts,
        evaluation,
        evaluated_against,
        temperature,
        calibration,
        auroc,
        referral,
        unreadable,
        saliency,
    })
}

/// The frames kept of each file and how the images are rendered: as asked, else as rank read its
/// images (the card's); 2.5-D always as rank read them (the model's first layer took its three
/// channels so).
fn reading(args: &PredictArgs, card: &ModelCard) -> (FrameSelection, medxfer_data::Rendering) {
    let rendering = medxfer_data::Rendering {
        window: args.window.or(card.window),
        orientation: args.reorient.unwrap_or(card.reorient),
        volume: args.volume.or(card.volume),
        adjacent_slices: card.adjacent_slices,
    };
    (args.dicom_frame.unwrap_or(card.dicom_frame), rendering)
}

/// The conditions on their DICOM header new images are kept by: `--dicom-where`'s (none for
/// `any`), else the card's (rank's), said on stderr where they differ from those.
fn dicom_conditions(args: &PredictArgs, card: &ModelCard) -> Result<Vec<medxfer_data::DicomCondition>> {
    let conditions = match args.dicom_where.as_slice() {
        [] => return Ok(card.dicom_where.clone()),
        [any] if any == "any" => Vec::new(),
        given => given
            .iter()
            .map(|text| text.parse::<medxfer_data::DicomCondition>().map_err(|e| anyhow::anyhow!("--dicom-where {e}")))
            .collect::<Result<Vec<_>>>()?,
    };
    if conditions != card.dicom_where {
        let shown = |conditions: &[medxfer_data::DicomCondition]| match conditions {
            [] => "every image".to_string(),
            conditions => conditions.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and "),
        };
        eprintln!(
            "--dicom-where: the model was fine-tuned on rank's images kept by {}; these by {}",
            shown(&card.dicom_where),
            shown(&conditions)
        );
    }
    Ok(conditions)
}

/// Says on stderr where the images are read otherwise than rank read those the model was
/// fine-tuned on.
fn say_reading_differences(card: &ModelCard, frames: FrameSelection, rendering: medxfer_data::Rendering) {
    if frames != card.dicom_frame {
        eprintln!("--dicom-frame {frames}: the model was fine-tuned on the DICOM frame '{}' of rank's images", card.dicom_frame);
    }
    if rendering.window != card.window {
        let shown = |window: Option<medxfer_data::Window>| window.map_or_else(|| "each file's own".to_string(), |w| w.to_string());
        eprintln!("--window {}: the model was fine-tuned on rank's images read through {}", shown(rendering.window), shown(card.window));
    }
    if rendering.orientation != card.reorient {
        eprintln!("--reorient {}: the model was fine-tuned on rank's volumes read {}", rendering.orientation, card.reorient);
    }
    if rendering.volume != card.volume {
        let shown = |volume: Option<medxfer_data::Volumes>| volume.map_or_else(|| "none (3-D files only)".to_string(), |v| v.to_string());
        eprintln!("--volume {}: the model was fine-tuned on rank's 4-D files' volume {}", shown(rendering.volume), shown(card.volume));
    }
}

/// A row of logits per image.
type Logits = Vec<Vec<f32>>;

/// The files' logits and what to divide them by: `logits` and `temperature` where each of the
/// `files` is one image; else each loop's frames pooled ([`pooled_frames`] at `temperature`, their
/// logarithms then divided by 1, said on stderr) and the frames' logits kept.
fn per_file_logits(logits: Logits, file_of: &[usize], files: usize, temperature: f64) -> (Logits, f64, Option<Logits>) {
    if logits.len() == files {
        return (logits, temperature, None);
    }
    eprintln!(
        "{} images predicted for {files} rows (a loop's frames, a series' slices), each row's probabilities the mean of its images'",
        logits.len()
    );
    (pooled_frames(&logits, file_of, files, temperature), 1.0, Some(logits))
}

/// Each of `files` files' log mean probability over its images' `logits` (`file_of` names each
/// one's file), at `temperature`: a loop's frames pooled into one prediction.
fn pooled_frames(logits: &[Vec<f32>], file_of: &[usize], files: usize, temperature: f64) -> Vec<Vec<f32>> {
    let frames: Vec<Vec<f64>> = logits.iter().map(|row| calibration::probabilities(row, temperature)).collect();
    let means = calibration::mean_probabilities(&frames, file_of, files);
    means.into_iter().map(|mean| mean.into_iter().map(|p| p.ln() as f32).collect()).collect()
}

/// The label column's classes as the model's outputs (None without a label column), checked
/// before any image is read: a label the model lacks names its line of `source`.
fn csv_labels(images: &Images, classes: &[String], source: &Path) -> Result<Option<Vec<u32>>> {
    let Some(labels) = &images.labels else { return Ok(None) };
    labels
        .iter()
        .enumerate()
        .map(|(row, label)| {
            let index = classes.iter().position(|c| c == label).map(|i| i as u32);
            index.with_context(|| {
                format!(
                    "{}: line {}: label {label:?} is not one of the model's classes ({})",
                    source.display(),
                    row + 2,
                    classes.join(", ")
                )
            })
        })
        .collect::<Result<_>>()
        .map(Some)
}

/// `--saliency` inside an `--images` folder: its overlays would be read as images by the next
/// run on that folder.
fn check_saliency_outside(args: &PredictArgs) -> Result<()> {
    if let Some(dir) = &args.saliency
        && args.images.is_dir()
        && std::path::absolute(dir)?.starts_with(std::path::absolute(&args.images)?)
    {
        bail!(
            "--saliency {}: inside --images {}, so the overlays would be read as images by the next run on that folder; give a folder outside it",
            dir.display(),
            args.images.display()
        );
    }
    Ok(())
}

/// The temperature `--calibrated` divides the logits by: the card's, or why it has none (and
/// which of the ranking's other fine-tuned backbones have one).
fn card_temperature(card: &ModelCard, ranking: &Path) -> Result<f64> {
    match (card.temperature, &card.uncalibrated_because) {
        (Some(temperature), _) if temperature.is_finite() && temperature > 0.0 => Ok(temperature),
        (_, Some(because)) => {
            let others: Vec<String> =
                ModelCard::read_all(ranking)?.into_iter().filter(|c| c.temperature.is_some()).map(|c| c.backbone).collect();
            let others = match others.as_slice() {
                [] => String::new(),
                names => format!(", or --backbone one that has one ({})", names.join(", ")),
            };
            bail!(
                "--calibrated: rank fitted no temperature for {} on its val part ({because}); leave --calibrated out for the probabilities as the model gives them{others}",
                card.backbone
            )
        }
        _ => bail!(
            "--calibrated: {}'s card has no temperature (written before rank fitted one); rerun the same `cargo xtask rank --finetune-top K` (its runs are reused) to add it",
            card.backbone
        ),
    }
}

/// What --refer-below did.
#[derive(Debug)]
pub struct Referral {
    pub threshold: f64,
    /// Images whose largest probability is below the threshold.
    pub referred: usize,
    /// The others' evaluation against the known classes (None without them, or none left).
    pub kept: Option<medxfer_train::Evaluation>,
}

impl Referral {
    /// Of `referred` (per image), and the others' predictions measured against `truth`.
    fn of(threshold: f64, referred: &[bool], truth: Option<&[u32]>, predicted: &[u32], classes: usize) -> Self {
        let kept = |values: &[u32]| -> Vec<u32> { values.iter().zip(referred).filter(|(_, r)| !**r).map(|(v, _)| *v).collect() };
        Referral {
            threshold,
            referred: referred.iter().filter(|r| **r).count(),
            kept: truth
                .filter(|_| referred.iter().any(|r| !r))
                .map(|truth| medxfer_train::evaluate(&kept(truth), &kept(predicted), classes)),
        }
    }
}

/// A probability strictly between 0 and 1, for --refer-below.
fn open_unit_interval(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if p > 0.0 && p < 1.0 => Ok(p),
        _ => Err(format!("{text:?}: expected a probability between 0 and 1 (exclusive), such as 0.8")),
    }
}

/// The card of `backbone`, or of the fine-tuned backbone with the best validation balanced
/// accuracy (of those tied, the best on test, then the first by name). Chosen by test, the
/// winner's test accuracy would be the best of several noisy estimates, biased upward.
pub fn chosen_card(ranking: &Path, backbone: Option<&str>) -> Result<ModelCard> {
    if !ranking.is_dir() {
        bail!("--ranking {}: no such folder; give the --out folder of `cargo xtask rank --finetune-top K`", ranking.display());
    }
    let cards = ModelCard::read_all(ranking)?;
    if cards.is_empty() {
        bail!(
            "{}: no fine-tuned backbone (no {}/ folder of cards): `cargo xtask rank --finetune-top K --out {}` fine-tunes the top K and writes them",
            ranking.display(),
            crate::rank::card::CARDS_DIR,
            ranking.display()
        );
    }
    let names = || cards.iter().map(|c| c.backbone.as_str()).collect::<Vec<_>>().join(", ");
    match backbone {
        Some(name) => cards
            .iter()
            .find(|c| c.backbone == name)
            .cloned()
            .with_context(|| format!("--backbone {name}: not fine-tuned in {} (fine-tuned: {})", ranking.display(), names())),
        None => {
            let merit = |card: &ModelCard| {
                let or_worst = |accuracy: Option<f64>| accuracy.filter(|a| a.is_finite()).unwrap_or(f64::NEG_INFINITY);
                (or_worst(card.val_balanced_accuracy), or_worst(card.test_balanced_accuracy))
            };
            let best = cards.iter().fold(&cards[0], |best, card| if merit(card) > merit(best) { card } else { best });
            Ok(best.clone())
        }
    }
}

/// What [`write_predictions`] wrote, per image.
struct Written {
    /// The predicted class.
    predicted: Vec<u32>,
    /// Images per predicted class, every class listed.
    counts: BTreeMap<String, usize>,
    /// Whether --refer-below marked it for review.
    referred: Vec<bool>,
}

/// `path,predicted,probability` and one `p_<class>` column per class, in the images' order, and
/// with `refer_below` a `refer` column (yes where the largest probability is below it); written
/// atomically.
fn write_predictions(
    file: &Path,
    classes: &[String],
    paths: &[String],
    probabilities: &[Vec<f64>],
    refer_below: Option<f64>,
) -> Result<Written> {
    let mut header = vec!["path".to_string(), "predicted".into(), "probability".into()];
    header.extend(classes.iter().map(|c| format!("p_{c}")));
    header.extend(refer_below.map(|_| "refer".to_string()));
    let mut referred = Vec::with_capacity(paths.len());
    let mut records = Vec::with_capacity(paths.len());
    let mut counts: BTreeMap<String, usize> = classes.iter().map(|c| (c.clone(), 0)).collect();
    let mut predicted = Vec::with_capacity(paths.len());
    for (path, row) in paths.iter().zip(probabilities) {
        let (best, probability) = calibration::most_probable(row);
        let class = classes.get(best).context("the model has more outputs than the card has classes")?;
        *counts.entry(class.clone()).or_default() += 1;
        predicted.push(best as u32);
        // As f32: the logits' own precision, and the shortest text that reads back the same.
        let mut record = vec![path.clone(), class.clone(), (probability as f32).to_string()];
        record.extend(row.iter().map(|&p| (p as f32).to_string()));
        let refer = refer_below.is_some_and(|threshold| probability < threshold);
        if refer_below.is_some() {
            record.push(if refer { "yes" } else { "no" }.to_string());
        }
        referred.push(refer);
        records.push(record);
    }
    crate::results::write_rows(file, &header.iter().map(String::as_str).collect::<Vec<_>>(), &records)?;
    Ok(Written { predicted, counts, referred })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// By validation balanced accuracy, then test, then name: b's best test accuracy does not win
    /// it; of a and c, equal on val, c's better test does. --backbone takes the one named.
    #[test]
    fn the_card_is_chosen_by_validation_then_test() {
        let dir = tempfile::tempdir().unwrap();
        for (backbone, val, test) in [("a", 0.9, 0.6), ("b", 0.7, 0.95), ("c", 0.9, 0.7), ("d", f64::NAN, 0.99)] {
            ModelCard {
                backbone: backbone.to_string(),
                models: None,
                checkpoint: PathBuf::from("x.safetensors"),
                classes: vec!["x".into(), "y".into()],
                resize: 36,
                crop: 32,
                mean: [0.5; 3],
                std: [0.5; 3],
                dicom_frame: FrameSelection::default(),
                window: None,
                reorient: medxfer_data::Orientation::Stored,
                volume: None,
                adjacent_slices: false,
                dicom_where: Vec::new(),
                val_balanced_accuracy: Some(val),
                test_balanced_accuracy: Some(test),
                temperature: None,
                uncalibrated_because: None,
            }
            .write(dir.path())
            .unwrap();
        }
        assert_eq!(chosen_card(dir.path(), None).unwrap().backbone, "c");
        assert_eq!(chosen_card(dir.path(), Some("b")).unwrap().backbone, "b");
        let error = chosen_card(dir.path(), Some("e")).unwrap_err().to_string();
        assert!(error.contains("--backbone e: not fine-tuned") && error.contains("(fine-tuned: a, b, c, d)"), "{error}");
    }

    /// The images not referred are measured alone: here the two wrong ones are referred, so the
    /// rest is all right.
    #[test]
    fn the_images_not_referred_are_measured_alone() {
        let truth = [0, 0, 1, 1, 1];
        let predicted = [0, 1, 1, 0, 1];
        let referred = [false, true, false, true, false];
        let referral = Referral::of(0.8, &referred, Some(&truth), &predicted, 2);
        assert_eq!(referral.referred, 2);
        let kept = referral.kept.unwrap();
        assert_eq!((kept.balanced_accuracy, kept.confusion), (1.0, vec![vec![1, 0], vec![0, 2]]));
        assert!(Referral::of(0.8, &[true; 5], Some(&truth), &predicted, 2).kept.is_none());
        assert!(Referral::of(0.8, &referred, None, &predicted, 2).kept.is_none());
    }
}
