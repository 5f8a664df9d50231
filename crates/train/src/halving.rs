//! Successive halving over the search's trials (a named option, not in the reference): every
//! trial trains for `min_epochs`; the best 1/eta of them, ranked as A_opt is chosen (validation
//! balanced accuracy of the epoch the run would keep so far, then validation loss, then index),
//! continue to min_epochs·eta epochs; and so on, the last rung training its trials to the full
//! `epochs`. Each run keeps the cosine schedule of the full length, so a promoted trial continues
//! exactly where it paused (its history is bit-identical to an uninterrupted run's on the CPU)
//! and A_opt is chosen among the trials that trained every epoch.
//!
//! Workers share a halving search as they share a plain one (`--shard i/n`, a lock per trial);
//! a rung is a barrier: a worker that has finished its share helps with trials no live worker
//! holds, then waits for the rung to complete before promoting.

use std::path::Path;
use std::time::Duration;

use medxfer_zoo::Backbone;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::finetune::{self, RunData, Selection};
use crate::search::{
    self, DIVERGED_FILE, SearchProgress, SearchSettings, SearchSummary, Trial, advance_trial, reached, select_best, trial_dir,
};
use crate::search_space::halton_points;

/// `--halving ETA --halving-min-epochs N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halving {
    /// Each rung keeps 1/eta of the trials (rounded up) and trains them eta times longer.
    pub eta: usize,
    /// The first rung's epochs.
    pub min_epochs: usize,
}

/// One rung: its trials and the epoch they train to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rung {
    /// The epoch the rung's trials train to.
    pub epochs: usize,
    /// The trials of the rung.
    pub trials: Vec<usize>,
}

/// A halving search's search.json: the rungs decided so far, the budget, and the usual summary of
/// the last rung (its finished trials, A_opt once all are finished).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HalvingSummary {
    /// The settings.
    pub halving: Halving,
    /// The full run length every finalist trains to.
    pub epochs: usize,
    /// The rungs decided so far.
    pub rungs: Vec<Rung>,
    /// Epochs trained by every trial together.
    pub epochs_trained: usize,
    /// What the full search would train: trials x epochs.
    pub epochs_full_search: usize,
    /// The last rung's trials as a search: its finished trials and A_opt.
    pub search: SearchSummary,
}

/// The halving settings a search directory was started with (halving.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Started {
    halving: Halving,
    epochs: usize,
    trials: usize,
}

impl Started {
    /// As the command line gives them.
    fn options(&self) -> String {
        format!(
            "--halving {} --halving-min-epochs {} --epochs {} --trials {}",
            self.halving.eta, self.halving.min_epochs, self.epochs, self.trials
        )
    }
}

const STARTED_FILE: &str = "halving.json";
/// How often a worker waiting at a rung looks again.
const POLL: Duration = Duration::from_secs(10);

impl Halving {
    /// Halving with `eta` >= 2 and a first rung of at least one epoch.
    pub fn new(eta: usize, min_epochs: usize) -> Result<Self> {
        if eta < 2 || min_epochs == 0 {
            return Err(Error::Config(format!(
                "--halving {eta} --halving-min-epochs {min_epochs}: eta must be at least 2 and the first rung at least 1 epoch"
            )));
        }
        Ok(Self { eta, min_epochs })
    }

    /// Refuses a first rung at or beyond a run's `epochs`: every trial would then train to its
    /// end as in the full search, and the study would still report halving as a deviation.
    pub fn check_epochs(&self, epochs: usize) -> Result<()> {
        if self.min_epochs >= epochs {
            return Err(Error::Config(format!(
                "--halving-min-epochs {} is not below --epochs {epochs}: no rung would stop a trial early, so the search would be the full one; give a first rung below {epochs}, or leave --halving out",
                self.min_epochs
            )));
        }
        Ok(())
    }

    /// The epochs each rung trains to: min, min·eta, ... below `epochs`, then `epochs`.
    pub fn boundaries(&self, epochs: usize) -> Vec<usize> {
        let mut boundaries = Vec::new();
        let mut until = self.min_epochs;
        while until < epochs {
            boundaries.push(until);
            until = until.saturating_mul(self.eta);
        }
        boundaries.push(epochs);
        boundaries
    }
}

/// How trial `index` ranks after `until` epochs: the validation balanced accuracy and loss of the
/// epoch it would keep; None when it diverged or has no epoch.
fn standing(dir: &Path, index: usize, until: usize, selection: Selection) -> Option<(f64, f64)> {
    let trial = trial_dir(dir, index);
    if trial.join(DIVERGED_FILE).exists() {
        return None;
    }
    let history = finetune::history(&trial);
    let kept = finetune::kept_epoch(&history[..history.len().min(until)], selection)?;
    Some((kept.val_balanced_accuracy, kept.val_loss))
}

/// The best ceil(n/eta) of `members` after `until` epochs, in index order.
fn promote(dir: &Path, members: &[usize], until: usize, halving: Halving, selection: Selection) -> Vec<usize> {
    let mut ranked: Vec<(usize, (f64, f64))> = members.iter().filter_map(|&i| standing(dir, i, until, selection).map(|s| (i, s))).collect();
    ranked.sort_by(|(i, (acc_i, loss_i)), (j, (acc_j, loss_j))| acc_j.total_cmp(acc_i).then(loss_i.total_cmp(loss_j)).then(i.cmp(j)));
    let mut kept: Vec<usize> = ranked.into_iter().take(members.len().div_ceil(halving.eta)).map(|(i, _)| i).collect();
    kept.sort_unstable();
    kept
}

/// Checks (or records, the first time) that `dir` is a halving search with these settings.
fn check_started(dir: &Path, started: &Started) -> Result<()> {
    let path = dir.join(STARTED_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let before: Started = serde_json::from_slice(&bytes).map_err(|e| Error::Io { path: path.clone(), problem: e.to_string() })?;
            if &before != started {
                return Err(Error::Config(format!(
                    "{}: this search was started with {}, not {}; use another --out or the same settings",
                    path.display(),
                    before.options(),
                    started.options()
                )));
            }
            Ok(())
        }
        Err(_) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), problem: e.to_string() })?;
            if dir.join(search::SUMMARY_FILE).exists() {
                return Err(Error::Config(format!("{}: a plain search lives here; give the halving search its own --out", dir.display())));
            }
            let json = serde_json::to_vec_pretty(started).map_err(|e| Error::Config(e.to_string()))?;
            Ok(medxfer_durable::write_atomic(&path, &json)?)
        }
    }
}

/// Runs this worker's part of a halving search over the search's Halton points, rung by rung,
/// then writes and returns the summary.
pub fn search_with_halving(
    make_model: &dyn Fn() -> Result<Backbone>,
    data: &RunData,
    settings: &SearchSettings,
    halving: Halving,
    dir: &Path,
    progress: &mut dyn SearchProgress,
) -> Result<HalvingSummary> {
    let SearchSettings { model, base, trials, shard } = *settings;
    let base = &base;
    search::check_trials(trials)?;
    check_started(dir, &Started { halving, epochs: base.epochs, trials })?;
    let all = halton_points(trials);
    let mut members: Vec<usize> = (0..trials).collect();
    let mut rungs = Vec::new();
    let boundaries = halving.boundaries(base.epochs);
    for (rung, &until) in boundaries.iter().enumerate() {
        rungs.push(Rung { epochs: until, trials: members.clone() });
        // This worker's share first (every n-th member of the rung), then any trial no live
        // worker holds, until every member has reached the rung's epoch.
        let order: Vec<usize> = members
            .iter()
            .enumerate()
            .filter(|(position, _)| shard.takes(*position))
            .chain(members.iter().enumerate().filter(|(position, _)| !shard.takes(*position)))
            .map(|(_, &index)| index)
            .collect();
        loop {
            let mut held_elsewhere = false;
            for &index in &order {
                held_elsewhere |= !advance_trial((model, make_model), data, base, &all[index], dir, until, progress)?;
            }
            if !held_elsewhere {
                break;
            }
            std::thread::sleep(POLL);
        }
        if rung + 1 < boundaries.len() {
            members = promote(dir, &members, until, halving, base.selection);
        }
    }
    let summary = summarize(dir, trials, base.epochs, halving, rungs);
    search::write_summary(dir, &summary)?;
    Ok(summary)
}

/// How a halving search's A_opt compares with that of the full search of the same trials.
#[derive(Debug, Clone, PartialEq)]
pub enum Comparison {
    /// Both chose this trial.
    Same(usize),
    /// Halving chose another trial than the full search.
    Changed {
        /// Halving's A_opt.
        ours: Box<Trial>,
        /// The full search's.
        theirs: Box<Trial>,
    },
    /// A search has no A_opt yet.
    Unfinished,
}

/// Compares `summary` with the finished full search in `full_dir` (its search.json).
pub fn compare_with_full(summary: &HalvingSummary, full_dir: &Path) -> Result<Comparison> {
    let path = full_dir.join(search::SUMMARY_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::Io { path: path.clone(), problem: e.to_string() })?;
    let full: SearchSummary = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Io { path: path.clone(), problem: format!("{e} (expected a plain search's summary)") })?;
    Ok(match (full.best, summary.search.best.clone()) {
        (Some(theirs), Some(ours)) if theirs.index == ours.index => Comparison::Same(ours.index),
        (Some(theirs), Some(ours)) => Comparison::Changed { ours: Box::new(ours), theirs: Box::new(theirs) },
        _ => Comparison::Unfinished,
    })
}

/// The budget and the last rung's outcome.
fn summarize(dir: &Path, trials: usize, epochs: usize, halving: Halving, rungs: Vec<Rung>) -> HalvingSummary {
    let epochs_trained = (0..trials).map(|i| finetune::history(&trial_dir(dir, i)).len()).sum();
    let last = rungs.last().map(|r| r.trials.clone()).unwrap_or_default();
    let (mut finished, mut pending) = (Vec::new(), Vec::new());
    for &index in &last {
        match finetune::finished(&trial_dir(dir, index)) {
            Some(outcome) => finished.push(Trial { index, outcome }),
            None if !reached(dir, index, epochs) => pending.push(index),
            None => {}
        }
    }
    let diverged = (0..trials).filter(|&i| trial_dir(dir, i).join(DIVERGED_FILE).exists()).collect();
    let best = if pending.is_empty() { select_best(&finished).cloned() } else { None };
    HalvingSummary {
        halving,
        epochs,
        rungs,
        epochs_trained,
        epochs_full_search: trials * epochs,
        search: SearchSummary { trials, finished, diverged, pending, best },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_grow_by_eta_and_end_at_the_full_length() {
        assert_eq!(Halving::new(3, 4).unwrap().boundaries(100), vec![4, 12, 36, 100]);
        assert_eq!(Halving::new(2, 1).unwrap().boundaries(6), vec![1, 2, 4, 6]);
        assert_eq!(Halving::new(3, 100).unwrap().boundaries(100), vec![100]);
        assert!(Halving::new(1, 4).is_err());
        assert!(Halving::new(3, 0).is_err());
        // A first rung at the last epoch or beyond stops no trial early.
        Halving::new(2, 1).unwrap().check_epochs(2).unwrap();
        for (min, epochs) in [(4, 4), (4, 2)] {
            let message = Halving::new(2, min).unwrap().check_epochs(epochs).unwrap_err().to_string();
            assert!(message.contains(&format!("--halving-min-epochs {min} is not below --epochs {epochs}")), "{message}");
        }
    }
}
