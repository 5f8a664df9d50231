//! The hyperparameter search of one (backbone, task): the Halton trials, each a resumable
//! [`fine_tune`](crate::fine_tune) in `trial-NNN/`, shared between workers (`--shard i/n` takes every n-th
//! trial) through one results directory, with a lock file per running trial. A_opt is the trial
//! with the best validation balanced accuracy (ties: lower validation loss, then lower index).

use std::path::{Path, PathBuf};
use std::time::Duration;

use medxfer_durable::Claim;
use medxfer_zoo::Backbone;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::finetune::{self, EpochRecord, RunData, RunOutcome, RunSettings};
use crate::search_space::{TrialPoint, halton_points};

/// `--shard i/n`: this worker runs trials with index % n == i.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This worker's number, 0..count.
    pub index: usize,
    /// Workers in all.
    pub count: usize,
}

impl Shard {
    /// The whole search in one worker.
    pub const ALL: Self = Self { index: 0, count: 1 };

    /// Parses `i/n` with 0 <= i < n.
    pub fn parse(text: &str) -> Result<Self> {
        let parsed = text.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if count > 0 && index < count => Ok(Self { index, count }),
            _ => Err(Error::Config(format!("--shard {text:?}: expected i/n with 0 <= i < n, e.g. 0/4"))),
        }
    }

    /// Whether this worker runs `trial`.
    pub fn takes(&self, trial: usize) -> bool {
        trial % self.count == self.index
    }
}

/// A search's shape: the settings every trial shares (each trial sets its own Halton point's
/// learning rate and weight decay), how many points, and this worker's share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchSettings<'a> {
    /// The backbone searched (its registry name, as `make_model` builds it): a finished trial of
    /// another one is not read back as this search's.
    pub model: &'a str,
    /// What every trial shares.
    pub base: RunSettings,
    /// Halton points (the reference's 75).
    pub trials: usize,
    /// This worker's share.
    pub shard: Shard,
}

/// One finished trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Its Halton point's index.
    pub index: usize,
    /// Its run's outcome.
    pub outcome: RunOutcome,
}

/// What the search directory holds now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSummary {
    /// Trials of the search.
    pub trials: usize,
    /// Trials with an outcome.
    pub finished: Vec<Trial>,
    /// Trials whose training loss became NaN/infinite (excluded from the selection, not rerun).
    pub diverged: Vec<usize>,
    /// Trials no worker has finished yet.
    pub pending: Vec<usize>,
    /// The selected trial, once every trial is finished.
    pub best: Option<Trial>,
}

/// The search's summary ([`SearchSummary`], or a halving search's [`HalvingSummary`](crate::HalvingSummary)) as JSON.
pub const SUMMARY_FILE: &str = "search.json";
/// Written in a trial's directory when its run diverged.
pub const DIVERGED_FILE: &str = "diverged.json";
/// A trial's claim: the lock file naming the worker that trains it.
pub const LOCK_FILE: &str = "lock";
/// A lock not refreshed for this long belongs to a dead worker on another machine.
pub const STALE_AFTER: Duration = Duration::from_secs(6 * 3600);

/// What a search tells its caller while it trains: [`finetune::Progress`] per trial. A closure
/// over `(&TrialPoint, &EpochRecord)` is one that ignores batches.
pub trait SearchProgress {
    /// After each training batch of a trial (see [`finetune::Progress::batch`]).
    fn batch(&mut self, _point: &TrialPoint, _epoch: usize, _done: usize, _total: usize, _loss: f64) {}
    /// After each epoch of a trial.
    fn epoch(&mut self, point: &TrialPoint, record: &EpochRecord);
}

impl<F: FnMut(&TrialPoint, &EpochRecord)> SearchProgress for F {
    fn epoch(&mut self, point: &TrialPoint, record: &EpochRecord) {
        self(point, record)
    }
}

/// One trial's progress: passes batches and epochs on with the trial's point, and keeps the
/// trial's lock fresh.
struct TrialProgress<'a> {
    point: &'a TrialPoint,
    lock: &'a Claim,
    search: &'a mut dyn SearchProgress,
}

impl finetune::Progress for TrialProgress<'_> {
    fn batch(&mut self, epoch: usize, done: usize, total: usize, loss: f64) {
        self.search.batch(self.point, epoch, done, total, loss);
    }

    fn epoch(&mut self, record: &EpochRecord) {
        self.lock.refresh();
        self.search.epoch(self.point, record);
    }
}

/// The directory of trial `index`.
pub fn trial_dir(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("trial-{index:03}"))
}

/// The highest index of a trial folder in `dir` ([`trial_dir`]'s names), None without any.
pub fn last_trial_dir(dir: &Path) -> Option<usize> {
    let names = std::fs::read_dir(dir).ok()?;
    names.filter_map(|item| item.ok()?.file_name().to_str()?.strip_prefix("trial-")?.parse().ok()).max()
}

/// A_opt: the best validation balanced accuracy of the kept epoch; ties go to the lower
/// validation loss, then to the lower index.
pub fn select_best(trials: &[Trial]) -> Option<&Trial> {
    trials.iter().min_by(|a, b| {
        let (x, y) = (&a.outcome.best, &b.outcome.best);
        y.val_balanced_accuracy.total_cmp(&x.val_balanced_accuracy).then(x.val_loss.total_cmp(&y.val_loss)).then(a.index.cmp(&b.index))
    })
}

/// The finished trials and pending indices of `dir` for the first `trials` points.
pub fn summarize_search(dir: &Path, trials: usize) -> SearchSummary {
    let (mut finished, mut diverged, mut pending) = (Vec::new(), Vec::new(), Vec::new());
    for index in 0..trials {
        let trial = trial_dir(dir, index);
        match finetune::finished(&trial) {
            Some(outcome) => finished.push(Trial { index, outcome }),
            None if trial.join(DIVERGED_FILE).exists() => diverged.push(index),
            None => pending.push(index),
        }
    }
    let best = if pending.is_empty() { select_best(&finished).cloned() } else { None };
    SearchSummary { trials, finished, diverged, pending, best }
}

/// Runs this shard's pending trials (skipping finished ones and those another live worker
/// holds), then writes and returns the summary of the whole directory. `make_model` gives a
/// fresh pretrained backbone with its new head for each trial.
pub fn search(
    make_model: &dyn Fn() -> Result<Backbone>,
    data: &RunData,
    settings: &SearchSettings,
    dir: &Path,
    progress: &mut dyn SearchProgress,
) -> Result<SearchSummary> {
    let SearchSettings { model, base, trials, shard } = settings;
    check_trials(*trials)?;
    for point in halton_points(*trials).into_iter().filter(|p| shard.takes(p.index)) {
        advance_trial((model, make_model), data, base, &point, dir, base.epochs, progress)?;
    }
    let summary = summarize_search(dir, *trials);
    write_summary(dir, &summary)?;
    Ok(summary)
}

/// `--trials` of at least 1: a search of none has no A_opt.
pub fn check_trials(trials: usize) -> Result<()> {
    if trials == 0 {
        return Err(Error::Config("--trials 0: a search needs at least 1 trial (the reference's 75)".into()));
    }
    Ok(())
}

/// Writes `dir`/search.json atomically.
pub(crate) fn write_summary(dir: &Path, summary: &impl Serialize) -> Result<()> {
    let json = serde_json::to_vec_pretty(summary).map_err(|e| Error::Config(e.to_string()))?;
    Ok(medxfer_durable::write_atomic(&dir.join(SUMMARY_FILE), &json)?)
}

/// Whether trial `index` needs no more training to reach epoch `until`: it has reached it, is
/// complete (last epoch, or stopped early) or diverged.
pub(crate) fn reached(dir: &Path, index: usize, until: usize) -> bool {
    let trial = trial_dir(dir, index);
    finetune::finished(&trial).is_some() || trial.join(DIVERGED_FILE).exists() || finetune::history(&trial).len() >= until
}

/// Trains one trial up to epoch `until` (its schedule that of `base.epochs`) unless it is there
/// already or another live worker holds it; a diverged run is recorded in diverged.json.
/// False when another worker holds the trial.
pub(crate) fn advance_trial(
    (model_name, make_model): (&str, &dyn Fn() -> Result<Backbone>),
    data: &RunData,
    base: &RunSettings,
    point: &TrialPoint,
    dir: &Path,
    until: usize,
    progress: &mut dyn SearchProgress,
) -> Result<bool> {
    let trial = trial_dir(dir, point.index);
    let settings = RunSettings { learning_rate: point.learning_rate, weight_decay: point.weight_decay, ..*base };
    // A finished trial is read back as this search's: it must have been trained as this search
    // asks.
    finetune::run_record::check(&trial, &settings, &finetune::run_record::RunInputs::of(model_name, data))?;
    if reached(dir, point.index, until) {
        return Ok(true);
    }
    let Some(lock) = Claim::take(&trial.join(LOCK_FILE), STALE_AFTER)? else { return Ok(false) };
    let model = make_model()?;
    let result =
        finetune::fine_tune_until(&model, data, &settings, &trial, until, &mut TrialProgress { point, lock: &lock, search: progress });
    match result {
        Ok(_) => {}
        Err(Error::Diverged { epoch, learning_rate, loss }) => {
            let note = serde_json::json!({"epoch": epoch, "learning_rate": learning_rate, "loss": loss.to_string()});
            medxfer_durable::write_atomic(&trial.join(DIVERGED_FILE), note.to_string().as_bytes())?;
        }
        Err(e) => return Err(e),
    }
    drop(lock);
    Ok(true)
}
