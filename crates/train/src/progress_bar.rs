//! The progress bar of the CLIs (medxfer-train, cargo xtask reproduce): one bar over an epoch's batches, its prefix
//! naming the trial and epoch, its message the epoch's running training loss and the last
//! validation balanced accuracy. Each finished epoch is printed above it as a log line; without a
//! terminal (a log file, a Slurm job) only those lines are written.

use crate::finetune::{EpochRecord, Progress};
use crate::search::SearchProgress;
use crate::search_space::TrialPoint;
use indicatif::{ProgressBar, ProgressStyle};

/// An epoch's progress bar for fine-tuning runs and searches.
#[derive(Debug)]
pub struct EpochBar {
    bar: ProgressBar,
    epochs: usize,
    loss_sum: f64,
    last_balanced_accuracy: Option<f64>,
}

/// One finished epoch as a log line.
pub fn epoch_line(record: &EpochRecord) -> String {
    format!(
        "epoch {:>3}  lr {:.2e}  train loss {:.4}  val loss {:.4}  val balanced accuracy {:.4}  ({:.1} s)",
        record.epoch, record.learning_rate, record.train_loss, record.val_loss, record.val_balanced_accuracy, record.seconds
    )
}

fn trial_name(point: &TrialPoint) -> String {
    format!("trial {:>2} (lr {:.3e}, wd {:.3e})", point.index, point.learning_rate, point.weight_decay)
}

impl EpochBar {
    /// A bar for runs of `epochs` epochs.
    pub fn new(epochs: usize) -> Self {
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} batches  {msg}  {elapsed} (ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        Self { bar: ProgressBar::new(0).with_style(style), epochs, loss_sum: 0.0, last_balanced_accuracy: None }
    }

    fn line(&self, text: String) {
        if self.bar.is_hidden() { eprintln!("{text}") } else { self.bar.println(text) }
    }

    fn advance(&mut self, prefix: String, done: usize, total: usize, loss: f64) {
        if done == 1 {
            self.bar.reset();
            self.bar.set_length(total as u64);
            self.bar.set_prefix(prefix);
            self.loss_sum = 0.0;
        }
        self.loss_sum += loss;
        let accuracy = self.last_balanced_accuracy.map_or(String::new(), |a| format!("  last val balanced accuracy {a:.4}"));
        self.bar.set_message(format!("train loss {:.4}{accuracy}", self.loss_sum / done as f64));
        self.bar.set_position(done as u64);
    }

    /// Clears the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for EpochBar {
    fn batch(&mut self, epoch: usize, done: usize, total: usize, loss: f64) {
        self.advance(format!("epoch {epoch}/{}", self.epochs), done, total, loss);
    }

    fn epoch(&mut self, record: &EpochRecord) {
        self.last_balanced_accuracy = Some(record.val_balanced_accuracy);
        self.line(epoch_line(record));
    }
}

impl SearchProgress for EpochBar {
    fn batch(&mut self, point: &TrialPoint, epoch: usize, done: usize, total: usize, loss: f64) {
        if epoch == 1 && done == 1 {
            self.last_balanced_accuracy = None;
        }
        self.advance(format!("{} epoch {epoch}/{}", trial_name(point), self.epochs), done, total, loss);
    }

    fn epoch(&mut self, point: &TrialPoint, record: &EpochRecord) {
        self.last_balanced_accuracy = Some(record.val_balanced_accuracy);
        self.line(format!("{}  {}", trial_name(point), epoch_line(record)));
    }
}
