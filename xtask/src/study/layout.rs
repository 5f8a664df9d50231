//! The results directory (README, "Results"): where each step's file lives, and the log of
//! finished units.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::results::Setting;

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

    /// OUT/features/<task>/<backbone>/{id,ood}.safetensors.
    pub fn features(&self, task: &str, backbone: &str, setting: Setting) -> PathBuf {
        self.out.join("features").join(task).join(backbone).join(format!("{}.safetensors", setting.as_str()))
    }

    /// The scores (and, for OOD, the balanced accuracy) computed from a feature file.
    pub fn scores(&self, task: &str, backbone: &str, setting: Setting) -> PathBuf {
        self.features(task, backbone, setting).with_extension("scores.json")
    }

    /// OUT/runs/<task>/<backbone>/: the search (trial-NNN/, search.json).
    pub fn runs(&self, task: &str, backbone: &str) -> PathBuf {
        self.out.join("runs").join(task).join(backbone)
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
        let line = format!("{} {text}\n", utc_now());
        let written = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(error) = written {
            eprintln!("warning: cannot append to {}: {error}", self.path.display());
        }
    }
}

/// The time as ISO 8601 UTC, to the second.
pub fn utc_now() -> String {
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_become_dates() {
        // `date -u -d @0`, `@951782400` (a leap day) and `@1795651200`.
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(951_782_400 / 86_400), (2000, 2, 29));
        assert_eq!(civil_from_days(1_795_651_200 / 86_400), (2026, 11, 26));
    }
}
