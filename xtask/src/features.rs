//! What `reproduce`, `rank` and `image-bootstrap` share: a backbone's features of a split into a
//! feature file (with a progress bar), the scores of a feature file, and the stratified resample
//! of its images.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Result, bail};
use medxfer_data::Entry;
use medxfer_scores::faer::Mat;
use medxfer_scores::{Metric, ScoreInput, SourceProbs, read_feature_file, score_all, set_terms};
use medxfer_train::{ExtractSettings, SplitData};
use medxfer_zoo::Backbone;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The precision features are extracted in (`rank --dtype`, `reproduce --dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExtractDtype {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16 (a GPU's).
    Bf16,
}

impl ExtractDtype {
    /// The candle dtype the backbone is loaded in.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            ExtractDtype::F32 => candle_core::DType::F32,
            ExtractDtype::F16 => candle_core::DType::F16,
            ExtractDtype::Bf16 => candle_core::DType::BF16,
        }
    }

    /// Refuses a precision `device` (`--device`) cannot extract in, before any work.
    pub fn check_device(self, device: &str) -> Result<()> {
        if self == ExtractDtype::Bf16 && !device.starts_with("cuda") {
            bail!("--dtype bf16 needs a GPU (--device cuda:N): candle 0.11 has no bf16 matrix product on the CPU; use --dtype f16 there");
        }
        Ok(())
    }

    /// The option's value, as records and reports write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtractDtype::F32 => "f32",
            ExtractDtype::F16 => "f16",
            ExtractDtype::Bf16 => "bf16",
        }
    }

    /// What cached features made in this precision are keyed by (f32 keeps the plain key).
    pub fn key_suffix(self) -> String {
        match self {
            ExtractDtype::F32 => String::new(),
            half => format!("-{}", half.as_str()),
        }
    }
}

/// The scores of one feature file (a study's `<setting>.scores.json`; rank keeps `values` and
/// `errors`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureScores {
    /// Metric name -> value.
    pub values: BTreeMap<String, f64>,
    /// Metric name -> why it could not be computed.
    pub errors: BTreeMap<String, String>,
    /// OOD: A_opt's balanced accuracy on the OOD set (its head's argmax), P_ood.
    pub balanced_accuracy: Option<f64>,
    /// Which trial's model made the features (OOD).
    pub trial: Option<usize>,
    pub seconds: f64,
}

/// Features of `entries` (the cache order of `split`) into `out`, with a progress bar named by
/// `label` (drawn only on a terminal).
pub fn extract_features(
    model: &Backbone,
    split: &SplitData,
    entries: &[Entry],
    settings: &ExtractSettings,
    out: &Path,
    label: &str,
) -> Result<()> {
    let ids: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
    let prefix = format!("{label}: features of {}", out.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default());
    let bar = image_bar(ids.len(), prefix);
    medxfer_train::extract(model, split, &ids, settings, out, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    Ok(())
}

/// A progress bar over `images` images, named by `prefix` (drawn only on a terminal).
pub fn image_bar(images: usize, prefix: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(images as u64).with_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} images  {elapsed} (ETA {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// Whether `path` is a whole safetensors file: its header reads and the file is as long as the
/// header says. Reads the header only (a study's feature files are hundreds of MB each).
pub fn is_whole_safetensors(path: &Path) -> bool {
    use std::io::Read;
    let whole = || -> Option<bool> {
        let mut file = std::fs::File::open(path).ok()?;
        let length = file.metadata().ok()?.len();
        let mut size = [0u8; 8];
        file.read_exact(&mut size).ok()?;
        let header_length = u64::from_le_bytes(size);
        if header_length > 100 << 20 || 8 + header_length > length {
            return Some(false);
        }
        let mut header = vec![0u8; usize::try_from(header_length).ok()?];
        file.read_exact(&mut header).ok()?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header).ok()?;
        let data_end = header
            .iter()
            .filter(|(name, _)| *name != "__metadata__")
            .map(|(_, tensor)| tensor["data_offsets"][1].as_u64())
            .try_fold(0u64, |end, offset| offset.map(|o| end.max(o)))?;
        Some(8 + header_length + data_end == length)
    };
    whole().unwrap_or(false)
}

/// Every per-model score of a feature file (the paper's seven, then the newer ones) and the
/// per-model terms of the set-level scores (`etran_energy`, `ncti_seli`, ...; combined across
/// backbones when the tables are written); a score that fails is recorded, not fatal.
pub fn score_file(path: &Path) -> Result<FeatureScores> {
    Ok(score_input(&read_feature_file(path)?))
}

/// What [`score_file`] computes, on features in memory.
pub fn score_input(input: &ScoreInput) -> FeatureScores {
    let mut scores = FeatureScores::default();
    let per_model: Vec<Metric> = Metric::per_model().collect();
    match score_all(input, &per_model) {
        Ok(values) => scores.values = values.into_iter().map(|(m, v)| (m.as_str().to_string(), v)).collect(),
        // One failed: compute each alone to keep the others.
        Err(_) => {
            for metric in per_model {
                match score_all(input, &[metric]) {
                    Ok(values) => scores.values.extend(values.into_iter().map(|(m, v)| (m.as_str().to_string(), v))),
                    Err(error) => {
                        scores.errors.insert(metric.as_str().to_string(), error.to_string());
                    }
                }
            }
        }
    }
    for metric in Metric::SET_LEVEL {
        match set_terms(input, metric) {
            Ok(terms) => scores.values.extend(metric.terms().iter().zip(terms).map(|(term, v)| (metric.term_key(term), v))),
            Err(error) => {
                scores.errors.insert(metric.as_str().to_string(), error.to_string());
            }
        }
    }
    scores
}

/// Whether a scores file predates a score this version computes (neither a value nor an error
/// recorded for it): `reproduce` then rescores the unit's features.
pub fn lacks_a_score(scores: &FeatureScores) -> bool {
    let recorded = |key: &str| scores.values.contains_key(key) || scores.errors.contains_key(key);
    Metric::per_model().any(|m| !recorded(m.as_str()))
        || Metric::SET_LEVEL.iter().any(|m| !scores.errors.contains_key(m.as_str()) && m.terms().iter().any(|t| !recorded(&m.term_key(t))))
}

/// The stratified cluster resample, for images that come in groups (a patient's or a lesion's
/// several images, whose features are alike): the groups are drawn with replacement, each with
/// all its rows, within strata of the groups holding the same classes, each stratum keeping its
/// number of groups (so every class stays present). Drawing images one by one would treat a
/// patient's ten images as ten patients and show a ranking steadier than it is. With one image
/// per group it is the image draw (for each class, as many draws with replacement from its
/// rows), draw for draw. Built once, drawn from on every resample.
pub struct GroupedDraw {
    /// Each group's rows, groups in order of first appearance.
    members: Vec<Vec<usize>>,
    /// Each stratum's groups, strata in the order of their class lists ([0] before [0, 2]
    /// before [1]), which for one class per group is the class order.
    strata: Vec<Vec<usize>>,
}

impl GroupedDraw {
    /// `groups` holds one group name per row of `labels`.
    pub fn new(labels: &[usize], groups: &[String]) -> Self {
        let mut index_of: HashMap<&str, usize> = HashMap::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (row, group) in groups.iter().enumerate() {
            let index = *index_of.entry(group.as_str()).or_insert_with(|| {
                members.push(Vec::new());
                members.len() - 1
            });
            members[index].push(row);
        }
        let mut strata: BTreeMap<Vec<usize>, Vec<usize>> = BTreeMap::new();
        for (index, rows) in members.iter().enumerate() {
            let mut classes: Vec<usize> = rows.iter().map(|&row| labels[row]).collect();
            classes.sort_unstable();
            classes.dedup();
            strata.entry(classes).or_default().push(index);
        }
        Self { members, strata: strata.into_values().collect() }
    }

    /// How many groups there are.
    pub fn groups(&self) -> usize {
        self.members.len()
    }

    /// One resample's rows.
    pub fn draw(&self, rng: &mut impl Rng) -> Vec<usize> {
        let mut picks = Vec::new();
        for stratum in &self.strata {
            for _ in 0..stratum.len() {
                picks.extend_from_slice(&self.members[stratum[rng.random_range(0..stratum.len())]]);
            }
        }
        picks
    }
}

/// The rows `picks` of an input, as a new input.
pub fn resampled(input: &ScoreInput, picks: &[usize]) -> Result<ScoreInput> {
    let features = input.features();
    let chosen = Mat::from_fn(picks.len(), features.ncols(), |i, j| features[(picks[i], j)]);
    let labels: Vec<i64> = picks.iter().map(|&i| input.labels()[i] as i64).collect();
    let mut out = ScoreInput::new(chosen, &labels)?;
    if let Some(probs) = input.source_probs() {
        let columns = probs.shape().1;
        out = match probs {
            SourceProbs::F32(m) => out.with_source_probs_f32(Mat::from_fn(picks.len(), columns, |i, j| m[(picks[i], j)]))?,
            SourceProbs::F64(m) => out.with_source_probs(Mat::from_fn(picks.len(), columns, |i, j| m[(picks[i], j)]))?,
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// The stratified resample of images: for each class, as many draws with replacement from
    /// its rows (the draw before groups were drawn whole).
    fn stratified_draw(labels: &[usize], rng: &mut impl Rng) -> Vec<usize> {
        let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
        for (i, &label) in labels.iter().enumerate() {
            by_class[label].push(i);
        }
        let mut picks = Vec::with_capacity(labels.len());
        for rows in &by_class {
            for _ in 0..rows.len() {
                picks.push(rows[rng.random_range(0..rows.len())]);
            }
        }
        picks
    }

    /// With one image per group, every class keeps its count and draws only its own rows.
    #[test]
    fn the_stratified_draw_keeps_each_class_and_its_count() {
        let labels = [0, 1, 1, 2, 0, 1, 2, 2, 2];
        let singletons: Vec<String> = (0..labels.len()).map(|i| i.to_string()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            let picks = GroupedDraw::new(&labels, &singletons).draw(&mut rng);
            assert_eq!(picks.len(), labels.len());
            let mut drawn: Vec<usize> = picks.iter().map(|&i| labels[i]).collect();
            drawn.sort_unstable();
            assert_eq!(drawn, [0, 0, 1, 1, 1, 2, 2, 2, 2]);
        }
    }

    /// One image per group is the image draw, pick for pick (rank's ungrouped images keep their
    /// resamples); with groups, every group comes whole, each stratum of groups with the same
    /// classes keeps its number of groups, and every class stays present.
    #[test]
    fn the_grouped_draw_takes_whole_groups_within_strata() {
        let labels = [0, 1, 1, 2, 0, 1, 2, 2, 2];
        let singletons: Vec<String> = (0..labels.len()).map(|i| format!("image{i}")).collect();
        let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(5), ChaCha8Rng::seed_from_u64(5));
        for _ in 0..50 {
            assert_eq!(GroupedDraw::new(&labels, &singletons).draw(&mut a), stratified_draw(&labels, &mut b));
        }
        // Patients: p holds rows 0, 4 (class 0); q rows 1, 2 (class 1); r rows 3, 6, 7 (class 2);
        // s row 5 (class 1); t row 8 (class 2), u rows 9, 10 (classes 0 and 2: a stratum alone).
        let labels = [0, 1, 1, 2, 0, 1, 2, 2, 2, 0, 2];
        let groups: Vec<String> = ["p", "q", "q", "r", "p", "s", "r", "r", "t", "u", "u"].iter().map(|g| g.to_string()).collect();
        let rows_of = |g: &str| -> Vec<usize> { (0..groups.len()).filter(|&i| groups[i] == g).collect() };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut seen = BTreeMap::new();
        for _ in 0..200 {
            let picks = GroupedDraw::new(&labels, &groups).draw(&mut rng);
            // Cut the picks into whole groups, in draw order.
            let mut drawn = Vec::new();
            let mut rest = &picks[..];
            while let Some(&row) = rest.first() {
                let whole = rows_of(&groups[row]);
                assert_eq!(&rest[..whole.len()], &whole[..], "{picks:?}");
                drawn.push(groups[row].clone());
                rest = &rest[whole.len()..];
            }
            // Strata [0]: p; [0, 2]: u; [1]: q, s; [2]: r, t.
            assert_eq!(drawn.len(), 6, "{drawn:?}");
            assert_eq!(drawn[0], "p");
            assert_eq!(drawn[1], "u");
            assert!(drawn[2..4].iter().all(|g| g == "q" || g == "s"), "{drawn:?}");
            assert!(drawn[4..6].iter().all(|g| g == "r" || g == "t"), "{drawn:?}");
            for group in drawn {
                *seen.entry(group).or_insert(0) += 1;
            }
        }
        // Every group of a stratum of several is drawn, and more than once in 200 resamples.
        assert!(["q", "r", "s", "t"].iter().all(|g| seen[*g] > 100), "{seen:?}");
    }

    /// A feature file is whole as written; cut short, grown, emptied, missing or not a
    /// safetensors file at all, it is not.
    #[test]
    fn a_whole_safetensors_file_is_told_from_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.safetensors");
        let features = candle_core::Tensor::arange(0f32, 24.0, &candle_core::Device::Cpu).unwrap().reshape((6, 4)).unwrap();
        candle_core::safetensors::save(&HashMap::from([("features".to_string(), features)]), &path).unwrap();
        assert!(is_whole_safetensors(&path));
        let bytes = std::fs::read(&path).unwrap();
        let damaged = dir.path().join("damaged.safetensors");
        for (what, contents) in [
            ("cut short", bytes[..bytes.len() - 1].to_vec()),
            ("grown", [&bytes[..], &[0]].concat()),
            ("header only", bytes[..bytes.len() - 96].to_vec()),
            ("empty", Vec::new()),
            ("text", b"not a safetensors file at all".to_vec()),
        ] {
            std::fs::write(&damaged, contents).unwrap();
            assert!(!is_whole_safetensors(&damaged), "{what}");
        }
        assert!(!is_whole_safetensors(&dir.path().join("missing.safetensors")));
    }
}
