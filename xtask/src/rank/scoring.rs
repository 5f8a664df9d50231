//! `rank`'s first step: every candidate's pretrained features of the train part and its scores,
//! each cached under OUT/features/ by the weights' content, so that a rerun, another consensus or
//! a longer shortlist extracts nothing again. A candidate that cannot be had or extracted is left
//! out of the ranking, not the whole command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use medxfer_data::Entry;
use medxfer_train::{ExtractSettings, SplitData, load_pretrained_in};
use medxfer_zoo::ModelEntry;
use serde::{Deserialize, Serialize};

use super::normalization;
use crate::features::{ExtractDtype, FeatureScores, extract_features, score_file};
use crate::weights::{Weights, folder_name};

/// The train part the candidates are scored on, and how its features are extracted.
pub struct ScoringInputs<'a> {
    pub weights: &'a Weights,
    /// The decoded train part, and its entries (paths and labels, in its order).
    pub train: &'a SplitData,
    pub train_entries: &'a [Entry],
    /// Where each candidate's features and scores are kept (keyed by the labelled images).
    pub features_dir: &'a Path,
    pub dtype: ExtractDtype,
    pub crop: u32,
    pub device: &'a Device,
}

/// What scoring the candidates gave: the scored ones, and why each other one is not ranked.
#[derive(Default)]
pub struct ScoredCandidates {
    /// Each scored candidate's name, feature dimension, extraction seconds and scores, in the
    /// candidates' order: [`super::rank`]'s input.
    pub scored: Vec<(String, usize, f64, BTreeMap<String, f64>)>,
    /// Each scored candidate's feature file, for --bootstrap.
    pub files: Vec<(String, PathBuf)>,
    /// Candidates whose weights could not be had or whose extraction failed (a gated repo whose
    /// terms were not accepted, no network), with the error: the others are still ranked, and
    /// the command fails at the end, naming them.
    pub not_ranked: Vec<(String, String)>,
    /// Each candidate's failed scores and why, for the note on the scores the table lacks.
    pub failed: Vec<(String, BTreeMap<String, String>)>,
    /// Candidates left out as the same model as an earlier one (name, the earlier one's name).
    pub same_models: Vec<(String, String)>,
}

/// Scores every candidate on `inputs`' train part, extracting only what is not cached.
pub fn score_candidates(candidates: &[ModelEntry], inputs: &ScoringInputs) -> ScoredCandidates {
    let mut out = ScoredCandidates::default();
    // Candidates of the same weights, architecture and normalisation (a registry name and the hub
    // id it loads, one file under two names) give the same features: they would tie under every
    // score, and --finetune-top would tune the one model twice. Each later one is left out, said.
    let mut models_seen: Vec<(String, String, String)> = Vec::new();
    for entry in candidates {
        if let (Ok(identity), Ok(shaping)) = (inputs.weights.identity(entry), entry_shaping(entry)) {
            if let Some((_, _, first)) = models_seen.iter().find(|(checksum, seen, _)| *checksum == identity.checksum && *seen == shaping) {
                eprintln!(
                    "{}: the same weights, architecture and normalisation as {first}: left out, it would tie with it everywhere",
                    entry.name
                );
                out.same_models.push((entry.name.clone(), first.clone()));
                continue;
            }
            models_seen.push((identity.checksum, shaping, entry.name.clone()));
        }
        let (result, features_file) = match score_candidate(entry, inputs) {
            Ok(scored) => scored,
            Err(error) => {
                eprintln!("warning: {}: not ranked: {error:#}", entry.name);
                out.not_ranked.push((entry.name.clone(), format!("{error:#}")));
                continue;
            }
        };
        out.files.push((entry.name.clone(), features_file));
        if !result.errors.is_empty() {
            eprintln!("warning: {}: some scores failed: {:?}", entry.name, result.errors);
            out.failed.push((entry.name.clone(), result.errors.clone()));
        }
        eprintln!("{}: scored ({} features, extraction {:.1} s)", entry.name, result.feature_dim, result.extraction_seconds);
        out.scored.push((entry.name.clone(), result.feature_dim, result.extraction_seconds, result.scores));
    }
    out
}

/// One candidate's cached extraction and scores (OUT/features/<key>/<backbone>.json).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Scored {
    feature_dim: usize,
    extraction_seconds: f64,
    scores: BTreeMap<String, f64>,
    errors: BTreeMap<String, String>,
    /// What of the candidate's entry shaped its features ([`entry_shaping`]); absent in a cache
    /// written before it was recorded, which is trusted as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shaping: Option<String>,
}

/// One candidate's scores and its feature file: as cached where the cache still holds (rescored
/// from its kept features where it predates a score), else extracted and scored now.
fn score_candidate(entry: &ModelEntry, inputs: &ScoringInputs) -> Result<(Scored, PathBuf)> {
    // Keyed by the weights' content: two checkpoints of one architecture, or weights swapped
    // under a name, never share a cached result.
    let identity = inputs.weights.identity(entry)?;
    let key = format!("{}-{}{}", folder_name(&entry.name), identity.short(), inputs.dtype.key_suffix());
    let summary = inputs.features_dir.join(format!("{key}.json"));
    let features_file = inputs.features_dir.join(format!("{key}.safetensors"));
    let shaping = entry_shaping(entry)?;
    let cached = std::fs::read(&summary).ok().and_then(|b| serde_json::from_slice::<Scored>(&b).ok());
    let cached = match cached {
        Some(old) if old.shaping.as_ref().is_some_and(|recorded| *recorded != shaping) => {
            eprintln!("{}: its entry's normalisation or architecture changed since its features were cached: extracting again", entry.name);
            None
        }
        other => other,
    };
    // A cached result from before the newer scores is rescored from its kept features.
    let cached = match cached {
        Some(old) if lacks_a_score(&old.scores, &old.errors) && features_file.exists() => {
            let scores = score_file(&features_file)?;
            let result = Scored { scores: scores.values, errors: scores.errors, ..old };
            medxfer_durable::write_atomic(&summary, &serde_json::to_vec_pretty(&result)?)?;
            Some(result)
        }
        other => other,
    };
    if let Some(cached) = cached {
        return Ok((cached, features_file));
    }
    let start = Instant::now();
    let file = inputs.weights.file(entry)?;
    let model =
        load_pretrained_in(entry, &file, inputs.device, inputs.dtype.dtype()).with_context(|| format!("loading {}", file.display()))?;
    let settings = ExtractSettings { normalization: normalization(entry), crop: inputs.crop, batch_size: 32 };
    extract_features(&model, inputs.train, inputs.train_entries, &settings, &features_file, &entry.name)?;
    let extraction_seconds = start.elapsed().as_secs_f64();
    let scores = score_file(&features_file)?;
    let result =
        Scored { feature_dim: entry.feature_dim, extraction_seconds, scores: scores.values, errors: scores.errors, shaping: Some(shaping) };
    medxfer_durable::write_atomic(&summary, &serde_json::to_vec_pretty(&result)?)?;
    Ok((result, features_file))
}

/// What of a registry entry shapes its features beyond its weights, the images and the sizes
/// (which key the cache already): its normalisation and its architecture, the embedding recipe
/// included. An entry edited since (a corrected std, `embedding = "class_token"`) reused the
/// features cached before, unsaid (read off the code: the key was the name and the weights).
fn entry_shaping(entry: &ModelEntry) -> Result<String> {
    let normalization = normalization(entry);
    Ok(format!("mean {:?} std {:?} {}", normalization.mean, normalization.std, serde_json::to_string(&entry.architecture)?))
}

fn lacks_a_score(values: &BTreeMap<String, f64>, errors: &BTreeMap<String, String>) -> bool {
    crate::features::lacks_a_score(&FeatureScores { values: values.clone(), errors: errors.clone(), ..FeatureScores::default() })
}
