//! The results directory (README, "Results"): where each step's file lives, and the log of
//! finished units.

use std::path::{Path, PathBuf};

use crate::clock::utc_now;
use crate::results::Setting;
use crate::weights::folder_name;

/// Paths under OUT.
#[derive(Debug, Clone)]
pub struct Layout {
    pub out: PathBuf,
}

impl Layout {
    pub fn new(out: &Path) -> Self {
        Self { out: out.to_path_buf() }
    }

    /// OUT/splits/<task>/: {train,val,test,ood}.csv and split.json.
    pub fn splits(&self, task: &str) -> PathBuf {
        self.out.join("splits").join(task)
    }

    /// OUT/features/<task>/<backbone>/ (a hub id's `/` written `--`).
    pub fn features_dir(&self, task: &str, backbone: &str) -> PathBuf {
        self.out.join("features").join(task).join(folder_name(backbone))
    }

    /// OUT/features/<task>/<backbone>/{id,ood}.safetensors.
    pub fn features(&self, task: &str, backbone: &str, setting: Setting) -> PathBuf {
        self.features_dir(task, backbone).join(format!("{}.safetensors", setting.as_str()))
    }

    /// The scores (and, for OOD, the balanced accuracy) computed from a feature file.
    pub fn scores(&self, task: &str, backbone: &str, setting: Setting) -> PathBuf {
        self.features(task, backbone, setting).with_extension("scores.json")
    }

    /// OUT/runs/<task>/<backbone>/: the search (trial-NNN/, search.json).
    pub fn runs(&self, task: &str, backbone: &str) -> PathBuf {
        self.out.join("runs").join(task).join(folder_name(backbone))
    }

    /// Decoded images, shared by every backbone and run.
    pub fn cache(&self) -> PathBuf {
        self.out.join("cache")
    }

    pub fn log(&self) -> PathBuf {
        self.out.join("reproduce.log")
    }
}

/// OUT/reproduce.log: one line per finished unit step, appended (shards share it: each line is
/// one write to a file opened for appending).
#[derive(Debug)]
pub struct Log {
    path: PathBuf,
}

impl Log {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn line(&self, text: &str) {
        if let Err(error) = medxfer_durable::append_line(&self.path, &format!("{} {text}", utc_now())) {
            eprintln!("warning: {error}");
        }
    }
}
