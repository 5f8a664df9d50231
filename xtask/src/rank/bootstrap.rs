//! `rank --bootstrap B`: how stable is the ranking under another sample of images? Each
//! resample draws the images again with replacement within each class (the class counts kept,
//! so every class stays present), the same draw for every candidate; every candidate is rescored
//! on it, and the candidate each score puts first is counted. Images in groups (a CSV's group
//! column: a patient, a lesion) are drawn a group at a time, each group with all its images.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use medxfer_scores::{Metric, ScoreInput, read_feature_file};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Consensus, rank};
use crate::features::{GroupedDraw, resampled, score_input};

/// How often each candidate came first, per score and for the consensus.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstPlaces {
    pub candidates: Vec<String>,
    /// The scores that ranked every candidate on some resample, then "consensus".
    pub columns: Vec<String>,
    /// counts[candidate][column]: resamples where the candidate came first (a tie for first
    /// counts for each tied candidate).
    pub counts: Vec<Vec<usize>>,
    /// Resamples on which each column ranked the candidates.
    pub ranked: Vec<usize>,
    /// How many groups were resampled, where some group holds several images.
    pub groups: Option<usize>,
    pub seconds: f64,
}

/// Rescores every candidate's features on `resamples` stratified resamples of the images, drawn
/// by `groups` (one per feature row, in the rows' order; each image its own group where the
/// images have none).
pub fn first_places(
    files: &[(String, PathBuf)],
    groups: &[String],
    resamples: usize,
    seed: u64,
    consensus: &Consensus,
) -> Result<FirstPlaces> {
    let start = Instant::now();
    let inputs: Vec<ScoreInput> = files
        .iter()
        .map(|(_, path)| read_feature_file(path).with_context(|| format!("--bootstrap reads {}", path.display())))
        .collect::<Result<_>>()?;
    let Some(first) = inputs.first() else { bail!("--bootstrap: no candidates") };
    if let Err(medxfer_scores::Error::NotTheSameSamples { model, problem }) = medxfer_scores::check_same_samples(&inputs) {
        bail!(
            "--bootstrap: {}'s features do not cover the same images as {}'s ({problem}); delete the rank cache and rerun",
            files[model - 1].0,
            files[0].0
        );
    }
    if groups.len() != first.labels().len() {
        bail!(
            "--bootstrap: {}'s features hold {} images, the split {}; delete the rank cache and rerun",
            files[0].0,
            first.labels().len(),
            groups.len()
        );
    }
    let draw = GroupedDraw::new(first.labels(), groups);
    let candidates: Vec<String> = files.iter().map(|(name, _)| name.clone()).collect();
    let mut columns: Vec<String> = Metric::every().map(|m| m.as_str().to_string()).collect();
    columns.push("consensus".to_string());
    let mut counts = vec![vec![0usize; columns.len()]; candidates.len()];
    let mut ranked = vec![0usize; columns.len()];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..resamples {
        let picks = draw.draw(&mut rng);
        let mut scored = Vec::with_capacity(inputs.len());
        for (name, input) in candidates.iter().zip(&inputs) {
            let scores = score_input(&resampled(input, &picks)?);
            scored.push((name.clone(), 0, 0.0, scores.values));
        }
        let rows = rank(&scored, consensus);
        for (column, name) in columns.iter().enumerate() {
            let value_of = |row: &super::RankRow| if name == "consensus" { Some(row.consensus) } else { row.scores.get(name).map(|s| s.1) };
            let ranks: Vec<Option<f64>> = rows.iter().map(value_of).collect();
            let Some(ranks) = ranks.into_iter().collect::<Option<Vec<f64>>>() else { continue };
            let best = ranks.iter().copied().fold(f64::INFINITY, f64::min);
            if !best.is_finite() {
                continue;
            }
            ranked[column] += 1;
            for (row, value) in rows.iter().zip(&ranks) {
                if *value == best {
                    let index = candidates.iter().position(|c| *c == row.backbone).unwrap_or(0);
                    counts[index][column] += 1;
                }
            }
        }
    }
    // Keep the columns that ranked on some resample.
    let keep: Vec<usize> = (0..columns.len()).filter(|&c| ranked[c] > 0).collect();
    Ok(FirstPlaces {
        candidates,
        columns: keep.iter().map(|&c| columns[c].clone()).collect(),
        counts: counts.iter().map(|row| keep.iter().map(|&c| row[c]).collect()).collect(),
        ranked: keep.iter().map(|&c| ranked[c]).collect(),
        groups: (draw.groups() < groups.len()).then_some(draw.groups()),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The first-place shares as markdown.
pub fn render(firsts: &FirstPlaces, resamples: usize) -> String {
    let what = match firsts.groups {
        Some(groups) => format!("the {groups} groups are resampled, each with all its images ({resamples} stratified bootstrap resamples"),
        None => format!("the images are resampled ({resamples} stratified bootstrap resamples"),
    };
    let mut text = format!(
        "How often each candidate comes first when {what}, every candidate rescored on each; {:.1} s):\n\n| backbone | {} |\n|---|{}\n",
        firsts.seconds,
        firsts.columns.join(" | "),
        "---:|".repeat(firsts.columns.len())
    );
    for (candidate, counts) in firsts.candidates.iter().zip(&firsts.counts) {
        let _ = write!(text, "| {candidate} |");
        for (count, ranked) in counts.iter().zip(&firsts.ranked) {
            let _ = write!(text, " {:.0}% |", 100.0 * *count as f64 / *ranked as f64);
        }
        text.push('\n');
    }
    text.push_str("\nA tie for first counts for each tied candidate. A share far from 100% says the ranking would change with another sample of these images.\n");
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Two candidates' cached features of other images (other labels, sample by sample) are
    /// refused, naming both and the first sample that differs.
    #[test]
    fn features_of_other_images_are_refused_naming_the_sample() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, labels: &[i64]| {
            let features = faer::Mat::from_fn(labels.len(), 3, |i, j| (i * 7 + j * 3) as f64 % 5.0);
            let path = dir.path().join(format!("{name}.safetensors"));
            medxfer_scores::write_feature_file(&path, &ScoreInput::new(features, labels).unwrap()).unwrap();
            (name.to_string(), path)
        };
        let files = [write("a", &[0, 1, 0, 1, 0, 1]), write("b", &[0, 1, 1, 0, 0, 1])];
        let groups: Vec<String> = (0..6).map(|i| i.to_string()).collect();
        let error = first_places(&files[..1], &groups[..5], 2, 0, &Consensus::parse("paper").unwrap()).unwrap_err().to_string();
        assert!(error.contains("a's features hold 6 images, the split 5; delete the rank cache"), "{error}");
        let error = first_places(&files, &groups, 2, 0, &Consensus::parse("paper").unwrap()).unwrap_err().to_string();
        assert!(error.contains("b's features do not cover the same images as a's (sample 2 has label 1, model 1's has 0)"), "{error}");
    }
}
