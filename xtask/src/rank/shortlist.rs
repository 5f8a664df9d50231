//! `rank --finetune-top K`'s second step: the top K by consensus fine-tuned with a small Halton
//! search on the stratified split (the paper's Fig. 1 workflow: score everything, tune the
//! shortlist), each kept model measured on the test part (per-class recall, the balanced
//! accuracy's and the AUROC's intervals, calibration, Grad-CAM on a few images) and described by
//! a card that `predict` and `export` read.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use medxfer_data::{Entry, Part};
use medxfer_train::{ClassWeights, EpochBar, RunData, RunSettings, Sampler, SearchSettings, Shard, SplitData, search, start_fine_tuning};
use medxfer_zoo::ModelEntry;

use super::calibration::{self, AUROC_RESAMPLES, Calibrated};
use super::images::LabelledImages;
use super::saliency_figure::{self, SaliencyRow};
use super::{RankArgs, RankRow, card, decoded_part, labelled_checksum, normalization, part_of, reliability_figure, tuning_options};
use crate::weights::{Weights, folder_name};

/// What fine-tuning the shortlist reads: the command's options, the candidates and their
/// weights, the images with their split, and the decoded train part the scores were taken on.
pub struct Shortlist<'a> {
    pub args: &'a RankArgs,
    pub candidates: &'a [ModelEntry],
    pub weights: &'a Weights,
    pub images: &'a LabelledImages,
    /// Every image with its part of the 70/10/20 split.
    pub entries: &'a [Entry],
    pub train: &'a SplitData,
    pub device: &'a Device,
}

/// One fine-tuned backbone's kept model, measured.
struct Tuned {
    /// Its test part's evaluation and AUROC, for the per-class table.
    tested: Option<(String, medxfer_train::Evaluation, AurocCell)>,
    calibrated: Option<Calibrated>,
    saliency: Option<SaliencyRow>,
}

impl Shortlist<'_> {
    /// Fine-tunes the first `k` of `rows` (in consensus order), setting each one's test balanced
    /// accuracy; writes the cards, ranking_calibration and ranking_saliency.png; returns
    /// ranking.md's paragraphs on them.
    pub fn tune(&self, rows: &mut [RankRow], k: usize) -> Result<String> {
        let args = self.args;
        let k = k.min(rows.len());
        let data = RunData {
            train: self.train.clone(),
            val: decoded_part(args, self.images, &part_of(self.entries, Part::Val), "val")?,
            test: Some(decoded_part(args, self.images, &part_of(self.entries, Part::Test), "test")?),
            ood: None,
            classes: self.images.classes.len(),
        };
        let cache_dir = args.out.join("cache");
        super::images::prune_caches(&cache_dir, "val", data.val.cache.key());
        super::images::prune_caches(&cache_dir, "test", data.test.as_ref().map_or("", |test| test.cache.key()));
        let start = Instant::now();
        card::ModelCard::remove_all(&args.out)?;
        let test_entries = part_of(self.entries, Part::Test);
        // The few test images every tuned backbone's saliency is drawn on, decoded apart.
        let test_labels: Vec<u32> = test_entries.iter().map(|e| e.label).collect();
        let chosen = saliency_figure::chosen_images(&test_labels, saliency_figure::SALIENCY_IMAGES);
        let chosen_entries: Vec<Entry> = chosen.iter().map(|&i| test_entries[i].clone()).collect();
        let saliency_images = SplitData::cached_frame(
            &cache_dir,
            "saliency",
            &self.images.root,
            &chosen_entries,
            (args.resize, args.reading.dicom_frame.per_file(), args.reading.rendering()),
            false,
        )?;
        super::images::prune_caches(&cache_dir, "saliency", saliency_images.cache.key());
        let test_groups: Vec<String> = test_entries.iter().map(|e| e.group.clone()).collect();
        let mut saliency_rows = Vec::new();
        // Each tuned backbone's kept model on the test part, for the per-class and calibration
        // tables.
        let mut tested = Vec::new();
        let mut calibrated = Vec::new();
        for row in rows.iter_mut().take(k) {
            let tuned = self.tune_one(row, &data, &test_groups, &saliency_images)?;
            tested.extend(tuned.tested);
            calibrated.extend(tuned.calibrated);
            saliency_rows.extend(tuned.saliency);
        }

        let mut text = String::new();
        let all = rows.len() * args.trials * args.epochs;
        let tuned = k * args.trials * args.epochs;
        let _ = writeln!(
            text,
            "Fine-tuned the top {k} of {} candidates ({} Halton points x {} epochs each, {:.0} s): {tuned} of {all} epochs, {:.0}% of tuning them all saved.",
            rows.len(),
            args.trials,
            args.epochs,
            start.elapsed().as_secs_f64(),
            100.0 * (all - tuned) as f64 / all.max(1) as f64
        );
        if args.class_weights != ClassWeights::None {
            let _ = writeln!(
                text,
                "Each image weighed in the loss by its class (--class-weights {}: n / (k * n_c) over the train part), not alike.",
                args.class_weights.as_str()
            );
        }
        if args.sampler != Sampler::Shuffle {
            let _ = writeln!(
                text,
                "Each epoch's train images drawn class-balanced (--sampler {}: as many draws as images, with replacement, each class equally likely), not each once.",
                args.sampler.as_str()
            );
        }
        let classes = &self.images.classes;
        let shares = group_shares(&test_entries, classes.len());
        text.push_str(&per_class_recall(&tested, classes, &shares, args.seed));
        let (cases, series) = cases(&self.images.root, &test_entries);
        text.push_str(&per_file_accuracy(&calibrated, &test_entries, (&cases, series), classes.len()));
        text.push_str(&calibration::render(&calibrated, data.val.labels.len(), data.test.as_ref().map_or(0, |t| t.labels.len())));
        reliability_figure::write(&args.out.join("ranking_calibration"), &calibrated)?;
        let chosen_labels: Vec<u32> = chosen_entries.iter().map(|e| e.label).collect();
        saliency_figure::write(&args.out.join("ranking_saliency.png"), &saliency_rows, &chosen_labels, classes)?;
        text.push_str(&saliency_figure::render(&saliency_rows));
        let _ = writeln!(
            text,
            "Each fine-tuned model is described in {}/ (its best trial's checkpoint, classes, preprocessing); `cargo xtask predict --ranking {} --images NEW` applies the one with the best validation balanced accuracy to new images (chosen on val, so its test accuracy stays an estimate the choice did not see).",
            args.out.join(card::CARDS_DIR).display(),
            args.out.display()
        );
        // A paragraph of its own: the trust statement follows.
        text.push('\n');
        Ok(text)
    }

    /// `row`'s backbone searched on `data` (a search already run continues or is read back), its
    /// best trial's kept model measured on the test part and its card written.
    fn tune_one(&self, row: &mut RankRow, data: &RunData, test_groups: &[String], saliency_images: &SplitData) -> Result<Tuned> {
        let args = self.args;
        let entry = self.candidates.iter().find(|e| e.name == row.backbone).context("a ranked backbone is not a candidate")?;
        let file = self.weights.file(entry)?;
        let make = || start_fine_tuning(entry, &file, self.images.classes.len(), args.seed, self.device);
        let base = RunSettings::from_options(&tuning_options(args), normalization(entry));
        let settings = SearchSettings { model: &entry.name, base, trials: args.trials, shard: Shard::ALL };
        // Keyed by everything that shapes a run but the number of trials (a longer search
        // continues a shorter one): the images, the weights, the transforms, the budget.
        let shaping = format!(
            "{} resize {} crop {} epochs {} batch {} seed {}",
            labelled_checksum(&[&data.train, &data.val, data.test.as_ref().context("the tuning split has a test part")?], self.entries),
            args.resize,
            args.crop,
            args.epochs,
            args.batch,
            args.seed
        );
        // Runs weighted alike keep the key they had before class weights were an option.
        let shaping = match args.class_weights {
            ClassWeights::None => shaping,
            weights => format!("{shaping} class-weights {}", weights.as_str()),
        };
        let shaping = match args.sampler {
            Sampler::Shuffle => shaping,
            sampler => format!("{shaping} sampler {}", sampler.as_str()),
        };
        let run_key = &blake3::hash(shaping.as_bytes()).to_hex()[..12];
        let dir = args.out.join("runs").join(format!("{}-{}-{run_key}", folder_name(&entry.name), self.weights.identity(entry)?.short()));
        let mut bar = EpochBar::new(args.epochs);
        let summary = search(&make, data, &settings, &dir, &mut bar);
        bar.finish();
        let summary = summary?;
        row.test_balanced_accuracy = summary.best.as_ref().and_then(|b| b.outcome.test.as_ref().map(|t| t.balanced_accuracy));
        let Some(best) = &summary.best else { return Ok(Tuned { tested: None, calibrated: None, saliency: None }) };
        let checkpoint = medxfer_train::trial_dir(&dir, best.index).join(medxfer_train::BEST_FILE);
        let normalization = normalization(entry);
        let mut rng = crate::report::uncertainty::cell_rng(
            crate::report::uncertainty::BootstrapSettings { resamples: AUROC_RESAMPLES, seed: args.seed },
            &format!("test-auroc/{}", entry.name),
        );
        // An aid to reading the probabilities, not the ranking: a kept model that cannot be
        // read (deleted to save space) leaves the card without a temperature, saying why.
        let model = medxfer_train::load_fine_tuned(entry, &checkpoint, Some(data.classes), self.device);
        let calibration = match &model {
            Ok(model) => calibration::measure(&entry.name, model, data, test_groups, &base, &mut rng),
            Err(error) => Err(anyhow::anyhow!("{error}")),
        };
        if let Err(error) = &calibration {
            eprintln!("warning: {}: no calibration: {error:#}", entry.name);
        }
        let saliency =
            match model.map_err(anyhow::Error::from).and_then(|model| saliency_figure::row(&entry.name, &model, saliency_images, &base)) {
                Ok(row) => Some(row),
                Err(error) => {
                    eprintln!("warning: {}: no saliency maps: {error:#}", entry.name);
                    None
                }
            };
        let tested = best.outcome.test.clone().map(|test| (entry.name.clone(), test, calibration.as_ref().ok().and_then(|c| c.auroc)));
        card::ModelCard {
            backbone: entry.name.clone(),
            models: args.models.as_deref().map(std::path::absolute).transpose()?,
            checkpoint: checkpoint.strip_prefix(&args.out).unwrap_or(&checkpoint).to_path_buf(),
            classes: self.images.classes.clone(),
            resize: args.resize,
            crop: args.crop,
            mean: normalization.mean,
            std: normalization.std,
            dicom_frame: args.reading.dicom_frame,
            window: args.reading.window,
            reorient: args.reading.reorient,
            volume: args.reading.volume,
            adjacent_slices: args.reading.adjacent_slices,
            dicom_where: args.reading.dicom_where.clone(),
            val_balanced_accuracy: Some(best.outcome.best.val_balanced_accuracy),
            test_balanced_accuracy: row.test_balanced_accuracy,
            temperature: calibration.as_ref().ok().and_then(|c| c.temperature.as_ref().ok().copied()),
            uncalibrated_because: match &calibration {
                Ok(c) => c.temperature.as_ref().err().map(ToString::to_string),
                Err(error) => Some(format!("its kept model could not be read: {error:#}")),
            },
        }
        .write(&args.out)?;
        Ok(Tuned { tested, calibrated: calibration.ok(), saliency })
    }
}

/// Draws from each balanced accuracy's posterior behind its interval.
const POSTERIOR_DRAWS: usize = 10_000;

/// A backbone's test AUROC and its interval, where they could be had.
type AurocCell = Option<(f64, Option<(f64, f64)>)>;

/// Each of `entries`' case (under `root`): a series' slice its series (the folder and Series
/// Instance UID), else its file; and whether any is a series.
fn cases(root: &Path, entries: &[Entry]) -> (Vec<String>, bool) {
    use rayon::prelude::*;
    let cases: Vec<(String, bool)> = entries
        .par_iter()
        .map(|entry| match medxfer_data::series_place(&root.join(&entry.path)).ok().flatten() {
            Some(place) => (place.key(), true),
            None => (entry.path.clone(), false),
        })
        .collect();
    let any = cases.iter().any(|(_, series)| *series);
    (cases.into_iter().map(|(case, _)| case).collect(), any)
}

/// With each frame of a loop an image (`--dicom-frame all`), or several slices of a DICOM series:
/// each fine-tuned backbone's balanced accuracy on the test part's files (and series, `cases`
/// naming each entry's, `series` where any is one), a case's prediction the mean of its images'
/// probabilities, as `predict` gives it. Empty where no case has several test images (a DICOM
/// series' slice kept by number names its file's one frame), or where one's images have two labels.
fn per_file_accuracy(calibrated: &[Calibrated], test_entries: &[Entry], (cases, series): (&[String], bool), classes: usize) -> String {
    let mut seen = std::collections::HashSet::new();
    if calibrated.is_empty() || cases.iter().all(|case| seen.insert(case.as_str())) {
        return String::new();
    }
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut truth = Vec::new();
    let case_of: Vec<usize> = test_entries
        .iter()
        .zip(cases)
        .map(|(entry, case)| {
            *index.entry(case.as_str()).or_insert_with(|| {
                truth.push(entry.label);
                truth.len() - 1
            })
        })
        .collect();
    if test_entries.iter().zip(&case_of).any(|(entry, &case)| truth[case] != entry.label) {
        return String::new();
    }
    let mut text = if series {
        format!(
            "\nPer file and DICOM series on the test part ({} cases, {} images: each frame of a file of several, and each slice of a series, \
             an image in the tables above): each case's prediction the class of largest mean probability over its images, as `cargo xtask \
             predict` gives it:\n\n| backbone | balanced accuracy |\n|---|---:|\n",
            truth.len(),
            test_entries.len()
        )
    } else {
        format!(
            "\nPer file on the test part ({} files, {} images: each frame of a file of several an image in the tables above): each file's \
             prediction the class of largest mean probability over its frames, as `cargo xtask predict` gives it:\n\n\
             | backbone | balanced accuracy |\n|---|---:|\n",
            truth.len(),
            test_entries.len()
        )
    };
    for tuned in calibrated.iter().filter(|tuned| tuned.probabilities.len() == test_entries.len()) {
        let means = medxfer_train::calibration::mean_probabilities(&tuned.probabilities, &case_of, truth.len());
        let predicted: Vec<u32> = means.iter().map(|mean| medxfer_train::calibration::most_probable(mean).0 as u32).collect();
        let evaluation = medxfer_train::evaluate(&truth, &predicted, classes);
        let _ = writeln!(text, "| {} | {:.3} |", tuned.backbone, evaluation.balanced_accuracy);
    }
    text
}

/// The fine-tuned backbones' recall of each class on the test part (a diagnosis's sensitivity):
/// a balanced accuracy can hide a class the model never finds; the balanced accuracy's 95%
/// interval (a few dozen test images leave it wide); and the AUROC with its interval. Empty
/// without any.
fn per_class_recall(tested: &[(String, medxfer_train::Evaluation, AurocCell)], classes: &[String], shares: &[f64], seed: u64) -> String {
    if tested.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "\nRecall of each class on the test part (the share of its images the fine-tuned model finds), and the balanced accuracy with its 95% interval \
         (the balanced accuracy's posterior, Brodersen et al. 2010, each class's recall Beta(found + 1/2, missed + 1/2), {POSTERIOR_DRAWS} draws; \
         where the images come in groups, found and missed weighed by the class's groups per image, as if a group's images agreed, so that \
         several images of one patient do not narrow it as independent ones would), and the AUROC (each class's area \
         under the ROC curve against the others from the model's probabilities, averaged over the classes: the chance that an image of a \
         class gets a higher probability of it than an image of another, whatever threshold is later chosen; its 95% interval from \
         {AUROC_RESAMPLES} resamples of the test part within each class, a group (a patient, a lesion) at a time with all its images \
         where the images come in groups):\n\n\
         | backbone | {} | balanced accuracy | 95% interval | AUROC | 95% interval |\n|---|{}---:|---|---:|---|\n",
        classes.join(" | "),
        "---:|".repeat(classes.len())
    );
    for (backbone, evaluation, auroc) in tested {
        let recalls: Vec<String> = (0..classes.len())
            .map(|class| evaluation.recall.get(class).copied().flatten().map_or_else(|| "–".to_string(), |r| format!("{r:.2}")))
            .collect();
        let mut rng = crate::report::uncertainty::cell_rng(
            crate::report::uncertainty::BootstrapSettings { resamples: POSTERIOR_DRAWS, seed },
            &format!("test/{backbone}"),
        );
        let interval = balanced_accuracy_interval(&evaluation.confusion, shares, POSTERIOR_DRAWS, &mut rng)
            .map_or_else(|| "–".to_string(), |(low, high)| format!("[{low:.3}, {high:.3}]"));
        let auroc = match auroc {
            Some((auroc, Some((low, high)))) => format!("{auroc:.3} | [{low:.3}, {high:.3}]"),
            Some((auroc, None)) => format!("{auroc:.3} | –"),
            None => "– | –".to_string(),
        };
        let _ = writeln!(text, "| {backbone} | {} | {:.3} | {interval} | {auroc} |", recalls.join(" | "), evaluation.balanced_accuracy);
    }
    text.push('\n');
    text
}

/// The central 95% of the balanced accuracy's posterior (Brodersen, Ong, Stephan and Buhmann
/// 2010, "The balanced accuracy and its posterior distribution"): class c's recall is
/// Beta(found_c + 1/2, missed_c + 1/2) given the confusion matrix (confusion[true][predicted]),
/// and the balanced accuracy is their mean over the classes present, sampled `draws` times.
/// The prior is Jeffreys' Beta(1/2, 1/2), whose interval for a proportion Brown, Cai and DasGupta
/// (2001) recommend for its coverage; Brodersen's uniform prior pulls a test part of a few images
/// a class far toward 0.5 (6 of 6 found: a mean of 0.875). Resampling the images instead gives a
/// class found every time no spread at all. Class c's counts are weighed by `shares[c]`, its
/// groups per image (`group_shares`): a patient's images are not independent draws, and counting
/// each group once (Kish's design effect at its largest, every image of a group alike) keeps
/// several images per patient from narrowing the interval. None without a class present.
fn balanced_accuracy_interval(confusion: &[Vec<usize>], shares: &[f64], draws: usize, rng: &mut impl rand::Rng) -> Option<(f64, f64)> {
    use rand_distr::{Beta, Distribution};
    let recalls: Vec<Beta<f64>> = confusion
        .iter()
        .enumerate()
        .filter_map(|(class, row)| {
            let total: usize = row.iter().sum();
            let found = row.get(class).copied().unwrap_or(0);
            let share = shares.get(class).copied().unwrap_or(1.0);
            (total > 0).then(|| Beta::new(found as f64 * share + 0.5, (total - found) as f64 * share + 0.5).ok()).flatten()
        })
        .collect();
    if recalls.is_empty() {
        return None;
    }
    let mut values: Vec<f64> =
        (0..draws).map(|_| recalls.iter().map(|recall| recall.sample(rng)).sum::<f64>() / recalls.len() as f64).collect();
    values.sort_by(f64::total_cmp);
    let quantile = crate::report::uncertainty::quantile;
    Some((quantile(&values, 0.025), quantile(&values, 0.975)))
}

/// Each class's distinct groups per image among `entries` (1 where every image is its own group,
/// as without groups; 1 for a class without images).
fn group_shares(entries: &[Entry], classes: usize) -> Vec<f64> {
    (0..classes as u32)
        .map(|class| {
            let images: Vec<&str> = entries.iter().filter(|e| e.label == class).map(|e| e.group.as_str()).collect();
            let groups = images.iter().collect::<std::collections::BTreeSet<_>>().len();
            if images.is_empty() { 1.0 } else { groups as f64 / images.len() as f64 }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-counted: class a's 2 images both found (1.00), b's 4 once (0.25), c without test
    /// images (–); the balanced accuracy is over the classes present, (1 + 0.25) / 2.
    #[test]
    fn the_per_class_table_gives_each_class_its_recall_in_order() {
        let evaluation = medxfer_train::evaluate(&[0, 0, 1, 1, 1, 1], &[0, 0, 1, 0, 0, 0], 3);
        let classes = ["a", "b", "c"].map(String::from);
        let table = per_class_recall(
            &[("net".to_string(), evaluation.clone(), Some((0.8125, Some((0.7, 0.9))))), ("other".to_string(), evaluation, None)],
            &classes,
            &[1.0; 3],
            0,
        );
        assert!(
            table.contains(
                "| backbone | a | b | c | balanced accuracy | 95% interval | AUROC | 95% interval |\n|---|---:|---:|---:|---:|---|---:|---|\n| net | 1.00 | 0.25 | – | 0.625 | [0.2"
            ),
            "{table}"
        );
        assert!(table.contains("] | 0.812 | [0.700, 0.900] |\n| other |") && table.contains("] | – | – |\n"), "{table}");
        assert_eq!(per_class_recall(&[], &classes, &[1.0; 3], 0), "");
    }

    /// The posterior's central 95% against scipy: for that confusion, (X + Y) / 2 with X ~
    /// Beta(2.5, 0.5) (2 of 2 found) and Y ~ Beta(1.5, 3.5) (1 of 4), its quantiles from 2e7
    /// draws of scipy.stats.beta (numpy's generator, seed 0): 0.2763 and 0.8167; every image
    /// found (1 of 1, 2 of 2): 0.4360 and 0.9926, not a point; 4 of 4 and 2 of 8 (Beta(4.5, 0.5),
    /// Beta(2.5, 6.5)): 0.3858 and 0.7688. 10,000 draws here hold the quantiles to about 0.003.
    #[test]
    fn the_test_interval_is_the_balanced_accuracy_s_posterior() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let close = |(low, high): (f64, f64), (l, h): (f64, f64)| (low - l).abs() < 0.01 && (high - h).abs() < 0.01;
        let confusion = medxfer_train::evaluate(&[0, 0, 1, 1, 1, 1], &[0, 0, 1, 0, 0, 0], 3).confusion;
        let interval = balanced_accuracy_interval(&confusion, &[1.0; 3], 10_000, &mut rng).unwrap();
        assert!(close(interval, (0.27632, 0.81669)), "{interval:?}");
        let perfect = medxfer_train::evaluate(&[0, 1, 1], &[0, 1, 1], 2).confusion;
        let interval = balanced_accuracy_interval(&perfect, &[1.0; 2], 10_000, &mut rng).unwrap();
        assert!(close(interval, (0.43602, 0.99257)), "{interval:?}");
        assert_eq!(balanced_accuracy_interval(&[vec![0, 0], vec![0, 0]], &[1.0; 2], 100, &mut rng), None);
        // Each patient imaged twice: twice the images of the same patients, whose groups per image
        // (one half) give the first case's posterior back; counted as images, a narrower one.
        let twice = medxfer_train::evaluate(&[0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1], &[0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0], 3).confusion;
        let interval = balanced_accuracy_interval(&twice, &[0.5; 3], 10_000, &mut rng).unwrap();
        assert!(close(interval, (0.27632, 0.81669)), "{interval:?}");
        let as_images = balanced_accuracy_interval(&twice, &[1.0; 3], 10_000, &mut rng).unwrap();
        assert!(close(as_images, (0.38575, 0.76883)), "{as_images:?}");
    }

    /// Hand-counted: class 0's three images are of two patients, class 1's two of two, class 2
    /// has none.
    #[test]
    fn each_class_s_groups_per_image_are_counted_among_its_images() {
        let entry = |label: u32, group: &str| Entry {
            path: format!("{group}-{label}.png"),
            label,
            group: group.into(),
            split: Part::Test,
            frame: None,
        };
        let entries = [entry(0, "p1"), entry(1, "q"), entry(0, "p1"), entry(0, "p2"), entry(1, "p1")];
        assert_eq!(group_shares(&entries, 3), [2.0 / 3.0, 1.0, 1.0]);
    }

    /// Hand-computed: loop a (class 0) is 0 by the mean of its frames' probabilities though two
    /// of its three frames say 1; b (class 1) is 1 by the mean though its last frame says 0; c
    /// (class 1) is 0; the slice d (class 1, a file of its own) is 1. Recall 1 of class 0, 2/3 of
    /// class 1: 0.833 (by the last frame: 0.167; by each frame's vote: 0.667). Without frames, no
    /// table.
    #[test]
    fn a_loop_s_prediction_is_the_mean_of_its_frames_probabilities() {
        let frame =
            |path: &str, label: u32, frame: Option<u32>| Entry { path: path.into(), label, group: path.into(), split: Part::Test, frame };
        let entries = [
            frame("a.dcm", 0, Some(1)),
            frame("a.dcm", 0, Some(2)),
            frame("a.dcm", 0, Some(3)),
            frame("b.dcm", 1, Some(1)),
            frame("b.dcm", 1, Some(2)),
            frame("c.dcm", 1, Some(1)),
            frame("c.dcm", 1, Some(2)),
            frame("d.png", 1, None),
        ];
        let probabilities: Vec<Vec<f64>> =
            [[0.9, 0.1], [0.4, 0.6], [0.4, 0.6], [0.2, 0.8], [0.6, 0.4], [0.55, 0.45], [0.55, 0.45], [0.3, 0.7]]
                .iter()
                .map(|p| p.to_vec())
                .collect();
        let raw = medxfer_train::calibration::Calibration {
            negative_log_likelihood: 0.0,
            expected_calibration_error: 0.0,
            brier: 0.0,
            reliability: Vec::new(),
        };
        let tuned = Calibrated { backbone: "net".into(), temperature: Ok(1.0), raw, scaled: None, auroc: None, probabilities };
        let paths = |entries: &[Entry]| -> Vec<String> { entries.iter().map(|e| e.path.clone()).collect() };
        let table = per_file_accuracy(std::slice::from_ref(&tuned), &entries, (&paths(&entries), false), 2);
        assert!(table.contains("(4 files, 8 images") && table.contains("each file's prediction the class"), "{table}");
        assert!(table.ends_with(":\n\n| backbone | balanced accuracy |\n|---|---:|\n| net | 0.833 |\n"), "{table}");
        let slices: Vec<Entry> =
            entries.iter().map(|e| Entry { frame: None, path: format!("{}-{:?}", e.path, e.frame), ..e.clone() }).collect();
        assert_eq!(per_file_accuracy(std::slice::from_ref(&tuned), &slices, (&paths(&slices), false), 2), "");
        // Each file its one frame named (a series' slices kept by number): one image a file.
        let named: Vec<Entry> = slices.iter().map(|e| Entry { frame: Some(1), ..e.clone() }).collect();
        assert_eq!(per_file_accuracy(std::slice::from_ref(&tuned), &named, (&paths(&named), false), 2), "");
        // The same images as slices of DICOM series, a file each, a series what a loop was: the
        // same accuracy, a case a series.
        let table = per_file_accuracy(std::slice::from_ref(&tuned), &slices, (&paths(&entries), true), 2);
        assert!(table.contains("Per file and DICOM series on the test part (4 cases, 8 images"), "{table}");
        assert!(table.ends_with("| net | 0.833 |\n"), "{table}");
        // A series whose slices are labelled otherwise: no case accuracy.
        let mut relabelled = slices.clone();
        relabelled[0].label = 1;
        assert_eq!(per_file_accuracy(std::slice::from_ref(&tuned), &relabelled, (&paths(&entries), true), 2), "");
    }

    /// A series' slices are one case (make_series.py's CT series), a file alone its own.
    #[test]
    fn a_series_slices_are_one_case() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/data/tests/fixtures/series");
        let entry = |path: &str| Entry { path: path.into(), label: 0, group: path.into(), split: Part::Test, frame: None };
        let (found, series) =
            cases(&root, &[entry("scan/IM000001"), entry("scan/IM000004"), entry("scan/scout.dcm"), entry("scan/mr_a.dcm")]);
        assert!(series);
        assert_eq!(found[0], found[1]);
        assert_eq!(found[2], "scan/scout.dcm");
        assert!(found[3] != found[0] && found[3] != found[2]);
        let (found, series) = cases(&root, &[entry("scan/scout.dcm")]);
        assert_eq!((found, series), (vec!["scan/scout.dcm".to_string()], false));
    }
}
