//! Claims on units of work (a search trial): a lock file that says which process holds the
//! unit, created exclusively so that of two processes asking at once exactly one gets it.
//! A `PendingFile` is only a uniquely named scratch file here: dropped uncommitted, it is
//! removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::host::{host_name, process_has_ended};
use crate::write::PendingFile;

/// This process's hold on a unit of work: a lock file holding `{"host":...,"pid":...}`,
/// removed when the claim is dropped.
#[derive(Debug)]
pub struct Claim {
    path: PathBuf,
}

/// The holder named by a lock file's text, if it is one this crate wrote.
fn holder(text: &str) -> Option<(&str, u32)> {
    let host = text.split("\"host\":\"").nth(1)?.split('"').next()?;
    let pid = text.split("\"pid\":").nth(1)?.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    Some((host, pid))
}

/// Whether the holder a lock file names is a process that no longer exists on this host (the
/// process table of another host cannot be read; an unreadable file holds nobody).
fn holder_is_gone(text: &str) -> bool {
    match holder(text) {
        Some((host, pid)) => host == host_name() && process_has_ended(pid),
        None => true,
    }
}

impl Claim {
    /// Claims the unit whose lock file is `path` (its folder is created if missing), unless a
    /// live process holds it: None then. A lock is stale, and taken over, when its process is
    /// gone (same host) or it was not refreshed for `stale_after` (a holder on another host,
    /// or a file this crate did not write).
    pub fn take(path: &Path, stale_after: Duration) -> Result<Option<Self>> {
        let pending = PendingFile::new(path)?;
        let info = format!("{{\"host\":\"{}\",\"pid\":{}}}", host_name(), std::process::id());
        std::fs::write(pending.path(), info).map_err(|e| Error::new(pending.path(), "write the claim", e))?;
        // The lock appears under its name already written, by a link that fails when the name
        // exists: no process ever reads a half-written lock (and judges it stale), and of two
        // processes linking at once exactly one succeeds.
        for _ in 0..3 {
            match std::fs::hard_link(pending.path(), path) {
                Ok(()) => return Ok(Some(Self { path: path.to_path_buf() })),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !remove_if_stale(path, stale_after)? {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(Error::new(path, "create the claim", e)),
            }
        }
        // Others kept taking the unit over as we did: it is theirs.
        Ok(None)
    }

    /// Marks the claim fresh (a long unit calls this as it progresses, e.g. every epoch).
    pub fn refresh(&self) {
        if let Ok(file) = std::fs::OpenOptions::new().append(true).open(&self.path) {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Removes the lock at `path` when it is stale; false when a live process holds it.
fn remove_if_stale(path: &Path, stale_after: Duration) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(true) };
    let age = std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|t| SystemTime::now().duration_since(t).ok());
    if !holder_is_gone(&text) && age.is_none_or(|a| a < stale_after) {
        return Ok(false);
    }
    // Moved aside, then checked: between the read above and the move, another process may have
    // replaced the stale lock by a fresh claim of its own, which must go back.
    let aside = PendingFile::new(path)?;
    match std::fs::rename(path, aside.path()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(Error::new(path, "move a stale claim aside", e)),
    }
    if std::fs::read_to_string(aside.path()).is_ok_and(|moved| moved != text) {
        let _ = std::fs::hard_link(aside.path(), path);
        return Ok(false);
    }
    Ok(true)
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text is what serde_json wrote for the search's lock before this crate existed, so
    /// locks of a running older worker are read the same way.
    #[test]
    fn reads_the_holder_it_writes_and_serde_json_wrote() {
        assert_eq!(holder(r#"{"host":"node-07","pid":4242}"#), Some(("node-07", 4242)));
        assert_eq!(holder("garbage"), None);
        assert!(holder_is_gone("garbage"));
        assert!(!holder_is_gone(&format!(r#"{{"host":"{}","pid":{}}}"#, host_name(), std::process::id())));
        assert!(!holder_is_gone(r#"{"host":"another-host-entirely","pid":1}"#), "another host's process is not judged");
    }
}
