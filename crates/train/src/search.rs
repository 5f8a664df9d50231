//! The hyperparameter search of one (backbone, task): the Halton trials, each a resumable
//! [`finetune::run`] in `trial-NNN/`, shared between workers (`--shard i/n` takes every n-th
//! trial) through one results directory, with a lock file per running trial. A_opt is the trial
//! with the best validation balanced accuracy (ties: lower validation loss, then lower index).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use medxfer_zoo::Backbone;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::finetune::{self, EpochRecord, RunData, RunOutcome, RunSettings};
use crate::search_space::{TrialPoint, points};

/// `--shard i/n`: this worker runs trials with index % n == i.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Self = Self { index: 0, count: 1 };

    /// Parses `i/n` with 0 <= i < n.
    pub fn parse(text: &str) -> Result<Self> {
        let parsed = text.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if count > 0 && index < count => Ok(Self { index, count }),
            _ => Err(Error::Config(format!("--shard {text:?}: expected i/n with 0 <= i < n, e.g. 0/4"))),
        }
    }

    pub fn takes(&self, trial: usize) -> bool {
        trial % self.count == self.index
    }
}

/// One finished trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub index: usize,
    pub outcome: RunOutcome,
}

/// What the search directory holds now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSummary {
    pub trials: usize,
    pub finished: Vec<Trial>,
    /// Trials whose training loss became NaN/infinite (excluded from the selection, not rerun).
    pub diverged: Vec<usize>,
    /// Trials no worker has finished yet.
    pub pending: Vec<usize>,
    /// The selected trial, once every trial is finished.
    pub best: Option<Trial>,
}

pub const SUMMARY_FILE: &str = "search.json";
/// Written in a trial's directory when its run diverged.
pub const DIVERGED_FILE: &str = "diverged.json";
/// A lock not refreshed for this long belongs to a dead worker on another machine.
pub const STALE_AFTER: Duration = Duration::from_secs(6 * 3600);

/// The directory of trial `index`.
pub fn trial_dir(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("trial-{index:03}"))
}

/// A_opt: the best validation balanced accuracy of the kept epoch; ties go to the lower
/// validation loss, then to the lower index.
pub fn select_best(trials: &[Trial]) -> Option<&Trial> {
    trials.iter().min_by(|a, b| {
        let (x, y) = (&a.outcome.best, &b.outcome.best);
        y.val_balanced_accuracy.total_cmp(&x.val_balanced_accuracy).then(x.val_loss.total_cmp(&y.val_loss)).then(a.index.cmp(&b.index))
    })
}

/// This worker's claim on a trial: a lock file naming host, process and last refresh.
struct Lock {
    path: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct LockInfo {
    host: String,
    pid: u32,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

impl Lock {
    /// Claims `dir`'s trial unless a live worker holds it. A lock is stale when its process is
    /// gone (same host) or it has not been refreshed for [`STALE_AFTER`].
    fn claim(dir: &Path) -> Result<Option<Self>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), problem: e.to_string() })?;
        let path = dir.join("lock");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let age = std::fs::metadata(&path).and_then(|m| m.modified()).ok().and_then(|t| SystemTime::now().duration_since(t).ok());
            let dead = match serde_json::from_str::<LockInfo>(&text) {
                Ok(info) => info.host == host() && !Path::new(&format!("/proc/{}", info.pid)).exists(),
                Err(_) => true,
            };
            if !dead && age.is_none_or(|a| a < STALE_AFTER) {
                return Ok(None);
            }
            let _ = std::fs::remove_file(&path);
        }
        let info = serde_json::to_vec(&LockInfo { host: host(), pid: std::process::id() }).unwrap_or_default();
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                file.write_all(&info).map_err(|e| Error::Io { path: path.clone(), problem: e.to_string() })?;
                Ok(Some(Self { path }))
            }
            // Another worker claimed it between our check and our create.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(Error::Io { path, problem: e.to_string() }),
        }
    }

    /// Marks the lock fresh (called every epoch).
    fn refresh(&self) {
        if let Ok(file) = std::fs::OpenOptions::new().append(true).open(&self.path) {
            let _ = file.set_modified(SystemTime::now());
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The finished trials and pending indices of `dir` for the first `trials` points.
pub fn summarize(dir: &Path, trials: usize) -> SearchSummary {
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
pub fn run(
    make_model: &dyn Fn() -> Result<Backbone>,
    data: &RunData,
    base: &RunSettings,
    trials: usize,
    shard: Shard,
    dir: &Path,
    report: &mut dyn FnMut(&TrialPoint, &EpochRecord),
) -> Result<SearchSummary> {
    for point in points(trials).into_iter().filter(|p| shard.takes(p.index)) {
        let trial = trial_dir(dir, point.index);
        if finetune::finished(&trial).is_some() || trial.join(DIVERGED_FILE).exists() {
            continue;
        }
        let Some(lock) = Lock::claim(&trial)? else { continue };
        let settings = RunSettings { learning_rate: point.learning_rate, weight_decay: point.weight_decay, ..*base };
        let model = make_model()?;
        let result = finetune::run(&model, data, &settings, &trial, &mut |record| {
            lock.refresh();
            report(&point, record);
        });
        match result {
            Ok(_) => {}
            Err(Error::Diverged { epoch, learning_rate, loss }) => {
                let note = serde_json::json!({"epoch": epoch, "learning_rate": learning_rate, "loss": loss.to_string()});
                std::fs::write(trial.join(DIVERGED_FILE), note.to_string())
                    .map_err(|e| Error::Io { path: trial.clone(), problem: e.to_string() })?;
            }
            Err(e) => return Err(e),
        }
        drop(lock);
    }
    let summary = summarize(dir, trials);
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Config(e.to_string()))?;
    let path = dir.join(SUMMARY_FILE);
    let temporary = path.with_extension("partial");
    std::fs::write(&temporary, json)
        .and_then(|()| std::fs::rename(&temporary, &path))
        .map_err(|e| Error::Io { path, problem: e.to_string() })?;
    Ok(summary)
}
