//! `cargo xtask rank`: which backbone for these images? Every candidate's pretrained features and
//! source probabilities (cached), the seven scores, a ranked table with a consensus (mean rank),
//! and — with `--finetune-top K` — a small Halton search for the top K only (the paper's Fig. 1
//! workflow: score everything, tune the shortlist). Says how far the scores can be trusted on
//! medical data, from the study's own Table 2 when present, else the paper's.

mod bootstrap;
mod calibration;
pub mod card;
pub mod dicom_where;
mod figure;
pub mod images;
mod reliability_figure;
mod saliency_figure;
mod scoring;
mod shortlist;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use medxfer_data::{Entry, FaithfulSplit, Normalization, Part, faithful_split, grouped_split};
use medxfer_scores::{Direction, Metric};
use medxfer_train::{ClassWeights, Sampler, SplitData, TrainingOptions};
use medxfer_zoo::{HubOptions, ModelEntry, Registry};
use serde::{Deserialize, Serialize};

use crate::features::ExtractDtype;
use crate::report::table::{TABLE2_COLUMNS, Table2Row, paper_tau_b};
use crate::results::Setting;
use crate::weights::Weights;
pub use images::ImagesReading;
use images::LabelledImages;
use scoring::{ScoredCandidates, ScoringInputs, score_candidates};
use shortlist::Shortlist;

#[derive(Debug, Clone, Args)]
pub struct RankArgs {
    /// A folder with one subfolder of images per class (JPEG, PNG, TIFF, BMP, DICOM, NIfTI), or a
    /// CSV of path,label.
    #[arg(long)]
    pub images: PathBuf,
    /// The columns a CSV's images are read from: a metadata file as published (HAM10000's
    /// `--csv-columns image_id,dx,lesion_id`) is taken as it is.
    #[command(flatten)]
    pub reading: ImagesReading,
    /// `all` (the registry), or comma-separated registry names or timm hub ids (timm/<id>).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub backbones: Vec<String>,
    /// Where the ranking, its figure, the cached features and any fine-tuning runs go.
    #[arg(long, default_value = "rank")]
    pub out: PathBuf,
    /// cpu, or cuda:N (`cuda` is cuda:0; a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Then fine-tune the top K by consensus with a small Halton search, on a stratified
    /// 70/10/20 split of the images, or of their groups (--csv-columns' third), written to
    /// OUT/finetune_split.csv (the scores then use its train part only).
    #[arg(long, value_name = "K")]
    pub finetune_top: Option<usize>,
    /// Halton points per fine-tuned backbone (with --finetune-top).
    #[arg(long, default_value_t = 8, requires = "finetune_top")]
    pub trials: usize,
    /// Epochs per run (with --finetune-top).
    #[arg(long, default_value_t = 10, requires = "finetune_top")]
    pub epochs: usize,
    /// Images per training step (with --finetune-top).
    #[arg(long, default_value_t = 32, requires = "finetune_top")]
    pub batch: usize,
    /// How much each class's images weigh in the fine-tuning loss (with --finetune-top): alike
    /// (none), or balanced (n / (k * n_c) over the train part, scikit-learn's "balanced"), so
    /// that a rare class counts as much as a common one, as the balanced accuracy counts it.
    #[arg(long, value_enum, default_value = "none", requires = "finetune_top")]
    pub class_weights: ClassWeights,
    /// How the fine-tuning's train images are drawn each epoch (with --finetune-top): each once,
    /// shuffled (shuffle), or balanced (as many draws as images, with replacement, each class
    /// equally likely: PyTorch's WeightedRandomSampler with weights 1 / the class's count).
    #[arg(long, value_enum, default_value = "shuffle", requires = "finetune_top")]
    pub sampler: Sampler,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Shorter side of the resize ...
    #[arg(long, default_value_t = 256)]
    pub resize: u32,
    /// ... and the centre crop.
    #[arg(long, default_value_t = 224)]
    pub crop: u32,
    /// Precision of the feature extraction: f32 (the default, as the study), or f16 / bf16
    /// (bf16 on a GPU) to extract with the giant foundation models in half the memory. Fine-
    /// tuning (--finetune-top) stays f32.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: ExtractDtype,
    /// The GPU's arithmetic (f32 everywhere by default).
    #[command(flatten)]
    pub gpu: crate::gpu_arithmetic::GpuArithmetic,
    /// Pretrained weights from DIR/<backbone>.safetensors instead of the hub.
    #[arg(long, value_name = "DIR")]
    pub weights: Option<PathBuf>,
    /// The model registry (models/ by default).
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// A study's results (reproduce --out) whose table2.csv says how far the scores can be
    /// trusted; by default ./results where it holds one, else the paper's Table 2.
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// The scores whose mean rank is the consensus: `paper` (the paper's seven), `all` (every
    /// score, the newer ones too), or a comma-separated list of score names.
    #[arg(long, default_value = "paper")]
    pub consensus: String,
    /// Then resample the images B times (with replacement, within each class), rescore every
    /// candidate on each resample, and report how often each comes first under each score.
    #[arg(long, value_name = "B")]
    pub bootstrap: Option<usize>,
}

/// Which scores make the consensus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consensus {
    /// The paper's seven.
    Paper,
    /// Every score computed.
    All,
    /// A named subset.
    Named(Vec<Metric>),
}

impl Consensus {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "paper" => Ok(Consensus::Paper),
            "all" => Ok(Consensus::All),
            list => {
                let metrics = list
                    .split(',')
                    .map(|name| {
                        name.trim().parse::<Metric>().map_err(|e| anyhow::anyhow!("--consensus: {e}; use paper, all or score names"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Consensus::Named(metrics))
            }
        }
    }

    fn includes(&self, metric: Metric) -> bool {
        match self {
            Consensus::Paper => Metric::ALL.contains(&metric),
            Consensus::All => true,
            Consensus::Named(metrics) => metrics.contains(&metric),
        }
    }

    fn describe(&self) -> String {
        match self {
            Consensus::Paper => "the paper's seven scores".to_string(),
            Consensus::All => "every score".to_string(),
            Consensus::Named(metrics) => metrics.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "),
        }
    }
}

/// One row of the ranking.
#[derive(Debug, Clone, Serialize)]
pub struct RankRow {
    pub backbone: String,
    pub feature_dim: usize,
    pub extraction_seconds: f64,
    /// Metric -> (value, rank among the candidates; 1 = best).
    pub scores: BTreeMap<String, (f64, f64)>,
    /// Mean rank over the scores computed.
    pub consensus: f64,
    /// Test balanced accuracy of the best of a small search (fine-tuned candidates only).
    pub test_balanced_accuracy: Option<f64>,
}

/// Ranks of `values` with 1 = highest, ties sharing their average rank.
pub fn descending_ranks(values: &[f64]) -> Vec<f64> {
    let negated: Vec<f64> = values.iter().map(|v| -v).collect();
    medxfer_scores::average_ranks(&negated)
}

/// Ranks with 1 = best in the metric's direction (the lowest bound for PACTran).
fn ranks_for(metric: Metric, values: &[f64]) -> Vec<f64> {
    match metric.direction() {
        Direction::Higher => descending_ranks(values),
        Direction::Lower => medxfer_scores::average_ranks(values),
    }
}

/// Each candidate's values of every score: its per-model scores as stored, and the set-level
/// ones (ETran, NCTI) combined from the candidates' stored terms, where every candidate has them.
fn with_set_level(candidates: &[(String, usize, f64, BTreeMap<String, f64>)]) -> Vec<BTreeMap<String, f64>> {
    let mut values: Vec<BTreeMap<String, f64>> = candidates.iter().map(|c| c.3.clone()).collect();
    for metric in Metric::SET_LEVEL {
        let terms: Option<Vec<Vec<f64>>> = candidates
            .iter()
            .map(|c| metric.terms().iter().map(|t| c.3.get(&metric.term_key(t)).copied().filter(|v| v.is_finite())).collect())
            .collect();
        if let Some(Ok(combined)) = terms.map(|t| medxfer_scores::combine_terms(metric, &t)) {
            for (row, value) in values.iter_mut().zip(combined) {
                row.insert(metric.as_str().to_string(), value);
            }
        }
    }
    values
}

/// Rows in consensus order from each candidate's scores: every score ranks the candidates (in
/// its direction), the consensus is the mean rank over the scores `consensus` names.
pub fn rank(candidates: &[(String, usize, f64, BTreeMap<String, f64>)], consensus: &Consensus) -> Vec<RankRow> {
    let values = with_set_level(candidates);
    let mut rows: Vec<RankRow> = candidates
        .iter()
        .map(|(name, dim, seconds, _)| RankRow {
            backbone: name.clone(),
            feature_dim: *dim,
            extraction_seconds: *seconds,
            scores: BTreeMap::new(),
            consensus: f64::NAN,
            test_balanced_accuracy: None,
        })
        .collect();
    for metric in Metric::every() {
        // A score ranks the candidates only when every one of them has it.
        let column: Option<Vec<f64>> = values.iter().map(|v| v.get(metric.as_str()).copied().filter(|v| v.is_finite())).collect();
        let Some(column) = column else { continue };
        for ((row, value), rank) in rows.iter_mut().zip(&column).zip(ranks_for(metric, &column)) {
            row.scores.insert(metric.as_str().to_string(), (*value, rank));
        }
    }
    for row in &mut rows {
        let ranks: Vec<f64> = row
            .scores
            .iter()
            .filter(|(name, _)| name.parse::<Metric>().is_ok_and(|m| consensus.includes(m)))
            .map(|(_, (_, r))| *r)
            .collect();
        row.consensus = if ranks.is_empty() { f64::NAN } else { ranks.iter().sum::<f64>() / ranks.len() as f64 };
    }
    rows.sort_by(|a, b| a.consensus.total_cmp(&b.consensus).then(a.backbone.cmp(&b.backbone)));
    rows
}

/// The backbone's own normalisation (ImageNet's std 0.229, not the reference's typo: ranking is
/// not the reproduction).
fn normalization(entry: &ModelEntry) -> Normalization {
    Normalization::study(entry.preprocessing.mean, entry.preprocessing.std, true)
}

/// What `--finetune-top` trains each run with.
fn tuning_options(args: &RankArgs) -> TrainingOptions {
    TrainingOptions {
        epochs: args.epochs,
        batch_size: args.batch,
        seed: args.seed,
        crop: args.crop,
        class_weights: args.class_weights,
        sampler: args.sampler,
        ..TrainingOptions::reference()
    }
}

/// `cargo xtask rank`.
pub fn run(args: &RankArgs) -> Result<Vec<RankRow>> {
    let consensus = check_options(args)?;
    let results = trusted_results(args.results.as_deref())?;
    // The ranking's features/, cache/ and runs/ would sit among the study's own.
    if let Some(results) = results.filter(|results| medxfer_durable::is_same_file(results, &args.out)) {
        bail!(
            "--out {} is the study's results folder ({}): the ranking's features, cache and runs would mix with the study's; give --out a folder of its own",
            args.out.display(),
            results.display()
        );
    }
    let trust = trust_statement(results)?;
    check_out_is_outside(&args.images, &args.out)?;
    let images = LabelledImages::read(&args.images, &args.reading)?;
    let registry = match &args.models {
        Some(dir) => Registry::load(dir)?,
        None => Registry::load_default()?,
    };
    let hub = HubOptions::from_env();
    let candidates: Vec<ModelEntry> = registry.select(&args.backbones, &hub)?;
    if candidates.is_empty() {
        bail!("no candidate backbones");
    }
    let weights = match &args.weights {
        Some(dir) => Weights::Dir(dir.clone()),
        None => Weights::Hub(hub),
    };
    args.gpu.apply(&args.device)?;
    let device = medxfer_train::parse_device(&args.device)?;
    let files = split(args, &images)?;
    // Each frame of a loop an image (--dicom-frame all): in its file's part and group.
    let entries = medxfer_data::frame_entries(&images.root, &files, args.reading.dicom_frame, args.reading.rendering().reading())?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    describe_reading(args, &images, &files, &entries);
    if args.finetune_top.is_some() {
        // A row a file: the split is of files, a loop's frames in its part.
        write_split(&args.out.join(SPLIT_CSV), &files, &images.classes)?;
    }

    let train_entries = part_of(&entries, Part::Train);
    let train = decoded_part(args, &images, &train_entries, "train")?;
    // An earlier image set's parts, decoded into the same OUT, are not read again.
    images::prune_caches(&args.out.join("cache"), "train", train.cache.key());
    let checksum = labelled_checksum(&[&train], &train_entries);
    let features_dir = args.out.join("features").join(format!("{}-r{}-c{}", &checksum[..16], args.resize, args.crop));
    std::fs::create_dir_all(&features_dir)?;
    let inputs = ScoringInputs {
        weights: &weights,
        train: &train,
        train_entries: &train_entries,
        features_dir: &features_dir,
        dtype: args.dtype,
        crop: args.crop,
        device: &device,
    };
    let scored = score_candidates(&candidates, &inputs);
    if scored.scored.is_empty() {
        bail!("no candidate could be ranked:\n{}", not_ranked_list(&scored.not_ranked));
    }
    let mut rows = rank(&scored.scored, &consensus);
    check_consensus_ranks(&rows, &scored.failed, &consensus)?;

    let tuning = match args.finetune_top {
        Some(k) => {
            let shortlist = Shortlist {
                args,
                candidates: &candidates,
                weights: &weights,
                images: &images,
                entries: &entries,
                train: &train,
                device: &device,
            };
            shortlist.tune(&mut rows, k)?
        }
        None => String::new(),
    };

    let table = ranking_table(args, (&rows, &consensus), &scored, (&candidates, &train, &train_entries))?;
    let not_ranked = scored.not_ranked;
    println!("{table}\n{tuning}{trust}");
    write_csv(&args.out.join("ranking.csv"), &rows)?;
    medxfer_durable::write_atomic(&args.out.join("ranking.md"), format!("{table}\n{tuning}{trust}").as_bytes())?;
    figure::write(&args.out.join("ranking"), &rows)?;
    println!("wrote {} (ranking.csv, ranking.md, ranking.svg, ranking.png)", args.out.display());
    if !not_ranked.is_empty() {
        let names: Vec<&str> = not_ranked.iter().map(|(name, _)| name.as_str()).collect();
        bail!(
            "{} of {} candidates could not be ranked ({}); the ranking of the others is in {}",
            not_ranked.len(),
            candidates.len(),
            names.join(", "),
            args.out.display()
        );
    }
    Ok(rows)
}

/// What is said on stderr of the images before anything is read: their classes and parts, a
/// file's frames, and the warnings of volumes in other planes and of files without neighbours
/// (of the files `--slice` keeps: a series' slices it leaves out are not read).
fn describe_reading(args: &RankArgs, images: &LabelledImages, files: &[Entry], entries: &[Entry]) {
    describe_images(args, images);
    describe_frames(args, files, entries);
    let kept: std::collections::HashSet<&str> = entries.iter().map(|entry| entry.path.as_str()).collect();
    let kept: Vec<Entry> = files.iter().filter(|file| kept.contains(file.path.as_str())).cloned().collect();
    warn_of_mixed_planes(&images.root, &kept, args.reading.reorient);
    if args.reading.adjacent_slices {
        warn_of_single_frames(&images.root, &kept, args.reading.rendering().reading());
    }
}

/// The ranking's table as printed and written to ranking.md (without the fine-tuning's tables):
/// `rows` under `consensus`, then the notes of what `scored` left out, the faint images of the
/// `train` part, the candidates' own preprocessing, how the images were read, --bootstrap's first
/// places and the candidates not ranked.
fn ranking_table(
    args: &RankArgs,
    (rows, consensus): (&[RankRow], &Consensus),
    scored: &ScoredCandidates,
    (candidates, train, train_entries): (&[ModelEntry], &SplitData, &[Entry]),
) -> Result<String> {
    let mut table = render(rows, consensus);
    table.push_str(&left_out_scores(rows, &scored.failed, consensus));
    table.push_str(&faint_images_note(train.cache.faint_images(), train.cache.len()));
    table.push_str(&own_preprocessing_note(candidates, args.resize, args.crop));
    table.push_str(&args.reading.reading_note());
    if let Some(resamples) = args.bootstrap {
        let groups: Vec<String> = train_entries.iter().map(|e| e.group.clone()).collect();
        let firsts = bootstrap::first_places(&scored.files, &groups, resamples, args.seed, consensus)?;
        table.push('\n');
        table.push_str(&bootstrap::render(&firsts, resamples));
    }
    if !scored.same_models.is_empty() {
        let listed: Vec<String> = scored.same_models.iter().map(|(name, first)| format!("{name} (as {first})")).collect();
        let _ = writeln!(
            table,
            "\nLeft out as the same model as a candidate above (the same weights, architecture and normalisation, so the same features): {}.",
            listed.join(", ")
        );
    }
    if !scored.not_ranked.is_empty() {
        let _ = write!(
            table,
            "\nNot ranked (mend each and run again; the candidates above are kept and not extracted again):\n{}\n",
            not_ranked_list(&scored.not_ranked)
        );
    }
    Ok(table)
}

/// Every option checked before the extraction, which takes minutes to hours; the consensus.
fn check_options(args: &RankArgs) -> Result<Consensus> {
    medxfer_data::transform::check_sizes(args.resize, args.crop)?;
    let consensus = Consensus::parse(&args.consensus)?;
    medxfer_train::check_device_name(&args.device)?;
    args.dtype.check_device(&args.device)?;
    if args.bootstrap == Some(0) {
        bail!("--bootstrap 0: give the number of image resamples (100 or more), or leave it out");
    }
    if let Some(top) = args.finetune_top {
        if top == 0 {
            bail!("--finetune-top 0: give how many of the top-ranked backbones to fine-tune (at least 1), or leave it out");
        }
        tuning_options(args).check()?;
        medxfer_train::check_trials(args.trials)?;
    }
    Ok(consensus)
}

/// Every image with its part: with fine-tuning, a stratified 70/10/20 split whose train part
/// alone is scored; without, every image in train.
fn split(args: &RankArgs, images: &LabelledImages) -> Result<Vec<Entry>> {
    if args.finetune_top.is_none() {
        return Ok(images
            .records
            .iter()
            .map(|r| Entry { path: r.path.clone(), label: r.label, group: r.group.clone(), split: Part::Train, frame: None })
            .collect());
    }
    // With a group column, each group (a patient, a lesion) in one part: its images in train
    // and test would measure how well a backbone recognises the patient.
    let rule = FaithfulSplit::Stratified { val: 0.1, test: 0.2 };
    let entries = if images.grouped_by.is_some() {
        grouped_split(&images.records, &rule, args.seed)?
    } else {
        faithful_split(&images.records, &rule, args.seed)?
    };
    check_every_part_has_every_class(&entries, images)?;
    Ok(entries)
}

/// The images and their classes (and groups) on stderr, before the long work.
fn describe_images(args: &RankArgs, images: &LabelledImages) {
    eprintln!("{}: {} images, {:?}", args.images.display(), images.records.len(), images.counts());
    if let Some(grouped_by) = &images.grouped_by {
        let groups = images.records.iter().map(|r| r.group.as_str()).collect::<std::collections::HashSet<_>>().len();
        let ungrouped = match images.ungrouped {
            0 => String::new(),
            n => format!(" ({n} of them images without one, each a group of its own)"),
        };
        eprintln!(
            "{}: {groups} groups by {grouped_by}{ungrouped}: each stays in one part of --finetune-top's split, and --bootstrap draws groups, not images",
            args.images.display()
        );
    }
}

/// With each frame of a loop an image: how many files gave how many frames, on stderr.
fn describe_frames(args: &RankArgs, files: &[Entry], entries: &[Entry]) {
    let selection = args.reading.dicom_frame;
    let kept_files: std::collections::HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let left_out = files.len() - kept_files.len();
    if left_out > 0 {
        eprintln!(
            "{}: --slice {selection}: {left_out} of {} files left out, slices of DICOM series stored a file a slice that --slice does not \
             keep (each series' slices in order along their normal, or by Instance Number)",
            args.images.display(),
            files.len()
        );
    }
    // Frames named one by one come of files of several only where each frame is an image (a
    // series' slice chosen by number names its file's one frame).
    let framed: std::collections::HashSet<&str> =
        entries.iter().filter(|e| e.frame.is_some() && selection.is_per_frame()).map(|e| e.path.as_str()).collect();
    if framed.is_empty() {
        return;
    }
    let frames = entries.iter().filter(|e| e.frame.is_some()).count();
    eprintln!(
        "{}: --dicom-frame {selection}: {} files of several frames give {frames} frames, each an image of its file's class; {} images in all, each file's in one part and group",
        args.images.display(),
        framed.len(),
        entries.len()
    );
}

/// Says on stderr where the NIfTI volumes among `files` are sliced in different planes (some
/// axial, some sagittal: dcm2niix keeps each acquisition's own), or the slices of DICOM series lie
/// in different planes, naming a few of the fewer kind: their slices are other views, which the
/// scores and the fine-tuning would mix as one (read `--reorient canonical`, every volume's are
/// axial; DICOM slices are read as stored). Volumes read `canonical` are left out. A header that
/// cannot be read is left to the decoding, which names it.
fn warn_of_mixed_planes(root: &Path, files: &[Entry], orientation: medxfer_data::Orientation) {
    use rayon::prelude::*;
    let planes: Vec<(medxfer_data::SlicePlane, &Entry, bool)> = files
        .par_iter()
        .filter_map(|entry| {
            let path = root.join(&entry.path);
            let nifti = medxfer_data::is_nifti(&path);
            if nifti && orientation == medxfer_data::Orientation::Canonical {
                return None;
            }
            medxfer_data::slice_plane(&path).ok().flatten().map(|plane| (plane, entry, !nifti))
        })
        .collect();
    let mut counts = BTreeMap::new();
    planes.iter().for_each(|(plane, _, _)| *counts.entry(*plane).or_insert(0usize) += 1);
    let Some((&most, _)) = counts.iter().max_by_key(|&(_, &count)| count) else { return };
    if counts.len() < 2 {
        return;
    }
    let listed: Vec<String> = counts.iter().map(|(plane, count)| format!("{count} {plane}")).collect();
    let others: Vec<String> =
        planes.iter().filter(|(plane, _, _)| *plane != most).take(5).map(|(plane, e, _)| format!("{} ({plane})", e.path)).collect();
    let listed = listed.join(", ");
    let said = if planes.iter().any(|(_, _, dicom)| *dicom) {
        format!(
            "the images are slices in different planes ({listed}): a slice of one is another view than a slice of another; NIfTI \
             volumes: rank again with --reorient canonical (each volume read as nibabel's as_closest_canonical: axial slices); DICOM \
             slices are read as stored: keep one plane (a localizer among axial slices: leave it out), or make each series a volume \
             (dcm2niix) and rank those with --reorient canonical"
        )
    } else {
        format!(
            "the NIfTI volumes are sliced in different planes ({listed}): a slice of one is another view than a slice of another; rank \
             again with --reorient canonical (each volume read as nibabel's as_closest_canonical: axial slices)"
        )
    };
    eprintln!("warning: {}: {said}. Not {most}: {}", root.display(), others.join(", "));
}

/// Says on stderr how many of `files` (under `root`) hold one frame and are not a slice of a DICOM
/// series of several in their folder (nor of a stack of several in its series: a localizer's
/// planes are each alone), naming a few: `--adjacent-slices` gives them no neighbours (each
/// channel the file's one frame). A header that cannot be read, or a series that cannot be
/// put in order, is left to the decoding, which names it.
fn warn_of_single_frames(root: &Path, files: &[Entry], reading: medxfer_data::VolumeReading) {
    use rayon::prelude::*;
    let single: Vec<&Entry> = files
        .par_iter()
        .filter(|entry| {
            let path = root.join(&entry.path);
            medxfer_data::frame_count(&path, reading).is_ok_and(|n| n == 1)
                && medxfer_data::series_place(&path).is_ok_and(|place| place.is_none_or(|place| place.len == 1))
        })
        .collect();
    if single.is_empty() {
        return;
    }
    let named: Vec<&str> = single.iter().take(5).map(|entry| entry.path.as_str()).collect();
    eprintln!(
        "warning: {}: --adjacent-slices: {} of {} files hold one frame and are not slices of a DICOM series in their folder (files \
         sharing a Series Instance UID), so their images have no neighbours (each channel the same frame), e.g. {}; a series \
         of another format stored a file a slice must be made one volume first",
        root.display(),
        single.len(),
        files.len(),
        named.join(", ")
    );
}

/// `entries`' images of `part`.
fn part_of(entries: &[Entry], part: Part) -> Vec<Entry> {
    entries.iter().filter(|e| e.split == part).cloned().collect()
}

/// `entries`' images decoded into OUT/cache/ as the part `name` (read back where decoded before).
fn decoded_part(args: &RankArgs, images: &LabelledImages, entries: &[Entry], name: &str) -> Result<SplitData> {
    let frame = args.reading.dicom_frame.per_file();
    Ok(SplitData::cached_frame(&args.out.join("cache"), name, &images.root, entries, (args.resize, frame, args.reading.rendering()), true)?)
}

/// The candidates that were not ranked, a markdown bullet each with its error.
fn not_ranked_list(not_ranked: &[(String, String)]) -> String {
    not_ranked.iter().map(|(name, error)| format!("- {name}: {error}")).collect::<Vec<_>>().join("\n")
}

/// The scores present in the rows, the paper's seven first.
fn present_metrics(rows: &[RankRow]) -> Vec<Metric> {
    Metric::every().filter(|m| rows.iter().any(|r| r.scores.contains_key(m.as_str()))).collect()
}

/// The scores the table lacks and why, for ranking.md: a score ranks the candidates only when
/// every one has it, so one that failed on a candidate (N-LEEP's mixture on a small folder; LEEP
/// and NCE on a foundation model, which has no ImageNet head) left its column, and its share of
/// the consensus, out of the table with the reasons on stderr alone (seen). Empty when none is.
fn left_out_scores(rows: &[RankRow], failed: &[(String, BTreeMap<String, String>)], consensus: &Consensus) -> String {
    let present = present_metrics(rows);
    let mut text = String::new();
    for metric in Metric::every().filter(|m| !present.contains(m)) {
        // reason -> the candidates it stopped.
        let mut reasons: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (candidate, errors) in failed {
            if let Some(reason) = errors.get(metric.as_str()) {
                reasons.entry(reason.as_str()).or_default().push(candidate.as_str());
            }
        }
        let why = if reasons.is_empty() {
            "not computed for every candidate".to_string()
        } else {
            let each: Vec<String> = reasons.iter().map(|(reason, candidates)| format!("{} ({reason})", candidates.join(", "))).collect();
            format!("failed on {}", each.join("; "))
        };
        let counted = if consensus.includes(metric) { " (in the consensus)" } else { "" };
        let _ = writeln!(text, "- {}{counted}: {why}", header(metric));
    }
    if text.is_empty() {
        return text;
    }
    format!(
        "\nScores left out (a score ranks the candidates only when every one of them has it; the consensus is over those of its scores the table has):\n{text}"
    )
}

/// The scored images that reached the backbones near black, for ranking.md: 12-bit data in
/// 16-bit files (radiographs exported from DICOM) keep 0..15 of 255 once reduced to 8 bits, and
/// the ranking then says how the backbones see black images; the cache's warning goes by on
/// stderr. Empty when none is.
fn faint_images_note(faint: &[String], scored: usize) -> String {
    let Some(first) = faint.first() else { return String::new() };
    format!(
        "\nNear-black images: {} of the {scored} scored images hold 16-bit samples all under {} (12-bit data), e.g. {first}; reduced to 8 bits they span 0..15 of 255, so these scores describe near-black images. Rank again with a window on their stored values (--window 2048,4096 spans 12-bit data), or export them to 8 bits with your intensity window.\n",
        faint.len(),
        medxfer_data::FAINT_16BIT_BELOW
    )
}

/// Where `--finetune-top` writes its split: which images the shortlist's test accuracy is of.
pub const SPLIT_CSV: &str = "finetune_split.csv";

/// `--finetune-top`'s split as `path,label,group,split` (paths under the images' folder, as a
/// study writes its parts), each label its class's name: read back (`rank --images
/// finetune_split.csv`, `predict --csv-columns path,label`) the classes keep their names, which
/// a study's numeric labels would turn into 0, 1, ...
fn write_split(path: &Path, entries: &[Entry], classes: &[String]) -> Result<()> {
    #[derive(Serialize)]
    struct Row<'a> {
        path: &'a str,
        label: &'a str,
        group: &'a str,
        split: Part,
    }
    let rows: Vec<Row> = entries
        .iter()
        .map(|entry| {
            let label = classes.get(entry.label as usize).with_context(|| format!("{}: label {} has no class", entry.path, entry.label))?;
            Ok(Row { path: &entry.path, label, group: &entry.group, split: entry.split })
        })
        .collect::<Result<_>>()?;
    crate::results::write_rows(path, &["path", "label", "group", "split"], &rows)
}

/// The candidates whose authors preprocess otherwise than this ranking, for ranking.md: every
/// candidate is scored (and fine-tuned) on the same pixels, `--resize` with the study's bilinear
/// filter and `--crop`, normalised with its own mean and std, so that the scores compare the
/// backbones and not their inputs; CONCH's authors use 448 px bicubic, RAD-DINO's 518 px, and
/// the README had said each was run with its own. Empty when none differs.
fn own_preprocessing_note(candidates: &[ModelEntry], resize: u32, crop: u32) -> String {
    let differing: Vec<String> = candidates
        .iter()
        .filter(|entry| {
            let own = &entry.preprocessing;
            (own.resize, own.crop, own.interpolation.as_str()) != (resize as usize, crop as usize, "bilinear")
        })
        .map(|entry| {
            let own = &entry.preprocessing;
            format!("{} ({} / {}, {})", entry.name, own.resize, own.crop, own.interpolation)
        })
        .collect();
    if differing.is_empty() {
        return String::new();
    }
    format!(
        "\nPreprocessing: every candidate saw the same images, shorter side {resize} (bilinear) and centre crop {crop}, each normalised with its own mean and std, as `--finetune-top` trains them; their authors' own eval preprocessing (resize / crop, filter) differs for {}. `--resize`/`--crop` set the ranking's; `medxfer-zoo classify` runs a backbone with its own.\n",
        differing.join(", ")
    )
}

/// Refuses a consensus none of whose scores ranks every candidate: each candidate's consensus
/// was then NaN and the table, and `--finetune-top`'s shortlist, went by name (seen with
/// `--consensus n_leep` on a folder too small for N-LEEP's mixture).
fn check_consensus_ranks(rows: &[RankRow], failed: &[(String, BTreeMap<String, String>)], consensus: &Consensus) -> Result<()> {
    if rows.iter().any(|row| !row.consensus.is_nan()) {
        return Ok(());
    }
    bail!(
        "--consensus: none of {} ranks every candidate, so there is no ranking to give:{}give --consensus scores the table has (the candidates' features are cached: a rerun only rescores)",
        consensus.describe(),
        left_out_scores(rows, failed, consensus)
    )
}

/// A score's column header: † beyond the paper, ↓ lower is better.
fn header(metric: Metric) -> String {
    format!("{metric}{}", crate::report::table::marks(metric.as_str()))
}

/// The ranked table as markdown.
pub fn render(rows: &[RankRow], consensus: &Consensus) -> String {
    let present = present_metrics(rows);
    let metrics: Vec<&str> = present.iter().map(|m| m.as_str()).collect();
    let headers: Vec<String> = present.iter().map(|m| header(*m)).collect();
    let tuned = rows.iter().any(|r| r.test_balanced_accuracy.is_some());
    let mut text = format!("| # | backbone | consensus | {} | dim | extraction s |", headers.join(" | "));
    if tuned {
        text.push_str(" fine-tuned test bal. acc. |");
    }
    let _ = write!(text, "\n|---:|---|---:|{}---:|---:|", "---:|".repeat(metrics.len()));
    if tuned {
        text.push_str("---:|");
    }
    text.push('\n');
    for (i, row) in rows.iter().enumerate() {
        let _ = write!(text, "| {} | {} | {:.2} |", i + 1, row.backbone, row.consensus);
        for metric in &metrics {
            match row.scores.get(*metric) {
                Some((value, rank)) => {
                    let _ = write!(text, " {} ({}) |", format_value(*value), format_rank(*rank));
                }
                None => text.push_str(" – |"),
            }
        }
        let _ = write!(text, " {} | {:.1} |", row.feature_dim, row.extraction_seconds);
        if tuned {
            let _ = write!(text, " {} |", row.test_balanced_accuracy.map_or("–".into(), |a| format!("{a:.3}")));
        }
        text.push('\n');
    }
    let _ = writeln!(
        text,
        "\nEach score's value with the candidate's rank under it in brackets (1 = best; ↓ lower is better, † beyond the paper); consensus = mean rank over {} (--consensus).",
        consensus.describe()
    );
    text
}

fn format_value(value: f64) -> String {
    if value != 0.0 && (value.abs() >= 1e4 || value.abs() < 1e-3) { format!("{value:.3e}") } else { format!("{value:.4}") }
}

fn format_rank(rank: f64) -> String {
    if rank.fract() == 0.0 { format!("{rank:.0}") } else { format!("{rank:.1}") }
}

fn write_csv(path: &Path, rows: &[RankRow]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["rank".to_string(), "backbone".into(), "consensus".into(), "feature_dim".into(), "extraction_seconds".into()];
    for metric in Metric::every() {
        header.push(metric.as_str().into());
        header.push(format!("{}_rank", metric.as_str()));
    }
    header.push("test_balanced_accuracy".into());
    writer.write_record(&header)?;
    for (i, row) in rows.iter().enumerate() {
        let mut record = vec![
            (i + 1).to_string(),
            row.backbone.clone(),
            row.consensus.to_string(),
            row.feature_dim.to_string(),
            row.extraction_seconds.to_string(),
        ];
        for metric in Metric::every() {
            match row.scores.get(metric.as_str()) {
                Some((value, rank)) => record.extend([value.to_string(), rank.to_string()]),
                None => record.extend([String::new(), String::new()]),
            }
        }
        record.push(row.test_balanced_accuracy.map_or(String::new(), |a| a.to_string()));
        writer.write_record(&record)?;
    }
    let bytes = writer.into_inner().context("flushing CSV")?;
    Ok(medxfer_durable::write_atomic(path, &bytes)?)
}

/// table2.csv as written before the scope, permutation and interval columns.
const EARLIER_TABLE2_COLUMNS: [&str; 7] = ["task", "setting", "metric", "n", "tau_b", "p_value", "weighted_tau"];

#[derive(Debug, Deserialize)]
struct EarlierTable2Row {
    task: String,
    setting: Setting,
    metric: String,
    tau_b: Option<f64>,
}

impl EarlierTable2Row {
    fn key(&self) -> (String, Setting, String) {
        (self.task.clone(), self.setting, self.metric.clone())
    }
}

/// `--out` inside the `--images` folder would be read as images on the next run: its
/// ranking.png (and any image under it) as one more class (seen: a class "rank" of one image).
fn check_out_is_outside(images: &Path, out: &Path) -> Result<()> {
    if !images.is_dir() {
        return Ok(());
    }
    if medxfer_durable::is_within(out, images) {
        bail!(
            "--out {} is inside --images {}: its files (ranking.png, the cached features) would be read as images of one more class next time; give --out a folder outside it",
            out.display(),
            images.display()
        );
    }
    Ok(())
}

/// What cached features and runs were made from: the images as their caches were made (paths,
/// sizes, modification times and the resize) and each one's label and part. Keyed by the files'
/// paths and sizes alone, the scores of the old labels were reused for the same files relabelled
/// (a CSV of labels corrected), and those of the old pixels for an image edited in place at the
/// same size (an uncompressed TIFF or BMP).
fn labelled_checksum(parts: &[&SplitData], entries: &[Entry]) -> String {
    let mut labelled: Vec<String> = entries.iter().map(|e| format!("{}\t{}\t{}\n", e.path, e.label, e.split.name())).collect();
    labelled.sort();
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(part.cache.key().as_bytes());
    }
    labelled.iter().for_each(|line| {
        hasher.update(line.as_bytes());
    });
    hasher.finalize().to_hex().to_string()
}

/// Fine-tuning scores the train part, selects by the val part's balanced accuracy and reports
/// the test part's: each needs an image of every class. A class of one or two images gets none
/// to train on from the 70/10/20 split (its held-out shares round up), which the scores found
/// only after the extraction ("the labels hold 1 class").
fn check_every_part_has_every_class(entries: &[Entry], images: &LabelledImages) -> Result<()> {
    for (label, class) in images.classes.iter().enumerate() {
        let lacking: Vec<&str> = Part::ALL
            .into_iter()
            .filter(|&part| !entries.iter().any(|e| e.split == part && e.label as usize == label))
            .map(Part::name)
            .collect();
        if !lacking.is_empty() {
            let count = entries.iter().filter(|e| e.label as usize == label).count();
            // Split by groups (--csv-columns' third), a class needs three groups, not images.
            let groups: std::collections::BTreeSet<&str> =
                entries.iter().filter(|e| e.label as usize == label).map(|e| e.group.as_str()).collect();
            // Three images, or three groups however unequal in size (the split then gives each
            // part one), always fill the three parts.
            let (units, unit) = if groups.len() < count { (groups.len(), "group") } else { (count, "image") };
            bail!(
                "{}: class '{class}' has {units} {unit}(s), which the 70/10/20 split of --finetune-top leaves none of in {}; \
                 it needs at least 3 {unit}s of every class: add images of '{class}', or leave --finetune-top out (the scores alone use every image)",
                images.root.display(),
                lacking.join(" and ")
            );
        }
    }
    Ok(())
}

/// The study whose Table 2 says how far to trust the scores: `--results DIR` (which must hold a
/// table2.csv: a typo must not fall back to the paper's numbers unnoticed), else ./results
/// where it holds one; None for the paper's.
fn trusted_results(given: Option<&Path>) -> Result<Option<&Path>> {
    match given {
        Some(dir) if !dir.join("table2.csv").is_file() => bail!(
            "--results {}: no table2.csv there; give a study's results folder (reproduce --out, or `cargo xtask report --results DIR` to write its table), or leave --results out for the paper's Table 2",
            dir.display()
        ),
        Some(dir) => Ok(Some(dir)),
        None => Ok(Some(Path::new("results")).filter(|dir| dir.join("table2.csv").is_file())),
    }
}

/// How well each score ranked backbones in a study (`results`, holding a table2.csv), or in the
/// paper (None): the mean tau-b over tasks, ID and OOD.
pub fn trust_statement(results: Option<&Path>) -> Result<String> {
    let (source, cells): (String, Vec<(Setting, String, f64)>) = if let Some(results) = results {
        let table = results.join("table2.csv");
        // A table2.csv from before the intervals (its first seven columns) reads too.
        let rows: Vec<(Setting, String, Option<f64>)> = match crate::results::read_rows(&table, &TABLE2_COLUMNS, Table2Row::key) {
            Ok(rows) => rows.into_iter().map(|r: Table2Row| (r.setting, r.metric, r.tau_b)).collect(),
            Err(error) => match crate::results::read_rows(&table, &EARLIER_TABLE2_COLUMNS, EarlierTable2Row::key) {
                Ok(rows) => rows.into_iter().map(|r: EarlierTable2Row| (r.setting, r.metric, r.tau_b)).collect(),
                Err(_) => return Err(error),
            },
        };
        let demo = crate::report::read_provenance(results)?.is_some_and(|p| p.demo);
        let source =
            format!("the study in {}{}", results.display(), if demo { " (demo data: not evidence about medical images)" } else { "" });
        (source, rows.into_iter().filter_map(|(setting, metric, tau)| Some((setting, metric, tau?))).collect())
    } else {
        (
            "the paper (Chaves et al. 2023, Table 2: ten ImageNet backbones, three medical tasks)".to_string(),
            paper_tau_b().into_iter().map(|((_, setting, metric), tau)| (setting, metric, tau)).collect(),
        )
    };
    let mut text = format!(
        "How far to trust these scores on medical data, from {source}: Kendall's tau-b between score and fine-tuned balanced accuracy, mean over tasks (1 = ranks backbones perfectly, 0 = no better than chance)\n\n| score | in-distribution | out-of-distribution |\n|---|---:|---:|\n"
    );
    let mean = |setting: Setting, metric: &str| {
        let values: Vec<f64> = cells.iter().filter(|c| c.0 == setting && c.1 == metric).map(|c| c.2).collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let mut best: Option<(f64, &str)> = None;
    for metric in Metric::every() {
        let (id, ood) = (mean(Setting::Id, metric.as_str()), mean(Setting::Ood, metric.as_str()));
        if id.is_none() && ood.is_none() {
            continue;
        }
        if let Some(tau) = id
            && best.is_none_or(|(b, _)| tau > b)
        {
            best = Some((tau, metric.as_str()));
        }
        let show = |v: Option<f64>| v.map_or("–".to_string(), |t| format!("{t:.2}"));
        let _ = writeln!(text, "| {} | {} | {} |", metric.as_str(), show(id), show(ood));
    }
    if let Some((tau, metric)) = best {
        let _ = writeln!(
            text,
            "\nEven the best of them ({metric}, mean tau-b {tau:.2}) often puts a worse backbone first: use the ranking as a shortlist to fine-tune (--finetune-top K), not as the answer."
        );
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_descending_with_ties_averaged_and_the_consensus_is_their_mean() {
        assert_eq!(descending_ranks(&[0.5, 2.0, 0.5, -1.0]), [2.5, 1.0, 2.5, 4.0]);
        let scores = |h: f64, l: f64| BTreeMap::from([("h_score".to_string(), h), ("leep".to_string(), l)]);
        let rows = rank(
            &[
                ("a".into(), 8, 0.1, scores(1.0, -3.0)),
                ("b".into(), 8, 0.1, scores(3.0, -1.0)),
                ("c".into(), 8, 0.1, BTreeMap::from([("h_score".to_string(), 2.0)])),
            ],
            &Consensus::Paper,
        );
        // LEEP is missing for c, so only the H-score ranks: b 1, c 2, a 3.
        let order: Vec<(&str, f64)> = rows.iter().map(|r| (r.backbone.as_str(), r.consensus)).collect();
        assert_eq!(order, [("b", 1.0), ("c", 2.0), ("a", 3.0)]);
        assert!(!rows[0].scores.contains_key("leep"));
    }

    /// The scores the table lacks are named with each candidate's reason, and whether the
    /// consensus counted them; with every score present there is no note.
    #[test]
    fn scores_left_out_of_the_table_are_named_with_their_reasons() {
        let every = |skip: &[&str]| -> BTreeMap<String, f64> {
            Metric::every().filter(|m| !skip.contains(&m.as_str())).map(|m| (m.as_str().to_string(), 1.0)).collect()
        };
        let candidates = [("a".to_string(), 8, 0.1, every(&["leep", "sfda"])), ("b".into(), 8, 0.1, every(&["sfda"]))];
        let failed = [
            ("a".to_string(), BTreeMap::from([("leep".to_string(), "needs the source model's probabilities".to_string())])),
            ("b".into(), BTreeMap::new()),
        ];
        let note = left_out_scores(&rank(&candidates, &Consensus::Paper), &failed, &Consensus::Paper);
        let lines: Vec<&str> = note.lines().filter(|l| l.starts_with("- ")).collect();
        assert_eq!(
            lines,
            [
                "- leep (in the consensus): failed on a (needs the source model's probabilities)",
                "- sfda †: not computed for every candidate",
            ],
            "{note}"
        );
        let all = [("a".to_string(), 8, 0.1, every(&[])), ("b".into(), 8, 0.1, every(&[]))];
        assert_eq!(left_out_scores(&rank(&all, &Consensus::All), &[], &Consensus::All), "");
        // A consensus of scores the table lacks ranks nothing: refused, with the reasons (the
        // table went by name).
        let sfda_only = Consensus::parse("sfda,leep").unwrap();
        let error = check_consensus_ranks(&rank(&candidates, &sfda_only), &failed, &sfda_only).unwrap_err().to_string();
        assert!(error.contains("none of sfda, leep ranks every candidate") && error.contains("failed on a (needs the source"), "{error}");
        let with_logme = Consensus::parse("sfda,logme").unwrap();
        check_consensus_ranks(&rank(&candidates, &with_logme), &failed, &with_logme).unwrap();
    }

    #[test]
    fn the_trust_statement_averages_the_published_table_without_results() {
        let text = trust_statement(None).unwrap();
        // LogME ID: (0.584 + 0.378 - 0.067) / 3 = 0.298; NCE OOD: (0.156 + 0.778 + 0.911) / 3 = 0.615.
        assert!(text.contains("| logme | 0.30 | -0.01 |"), "{text}");
        assert!(text.contains("| nce | -0.10 | 0.62 |"), "{text}");
        assert!(text.contains("Even the best of them (logme, mean tau-b 0.30)"), "{text}");
    }
}
