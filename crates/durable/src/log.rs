//! Append-only logs that several processes write at once (`reproduce.log`).

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Appends `line` and a newline to the log at `path` (created with its folder if missing) in
/// one write to a file opened for appending: lines of concurrent processes never interleave.
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::new(parent, "create the folder", e))?;
    }
    let text = format!("{line}\n");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| Error::new(path, "append to", e))
}
