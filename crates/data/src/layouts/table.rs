//! CSV index files with named columns: a wrong header is an error naming the file and the
//! columns it lacks.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// A CSV read whole, with its header.
pub struct Table {
    columns: HashMap<String, usize>,
    pub rows: Vec<csv::StringRecord>,
}

impl Table {
    /// Reads `path`, which must have every column of `required`.
    pub fn read(path: &Path, required: &[&str]) -> Result<Self> {
        let mut reader = csv::ReaderBuilder::new().flexible(false).from_path(path).map_err(|e| Error::io(path, e))?;
        let header = reader.headers().map_err(|e| Error::format(path, e.to_string()))?.clone();
        let columns: HashMap<String, usize> = header.iter().enumerate().map(|(i, name)| (name.trim().to_string(), i)).collect();
        let missing: Vec<&str> = required.iter().copied().filter(|c| !columns.contains_key(*c)).collect();
        if !missing.is_empty() {
            return Err(Error::format(
                path,
                format!(
                    "missing column(s) {}; the header is {:?}, expected at least {}",
                    missing.join(", "),
                    header.iter().collect::<Vec<_>>(),
                    required.join(",")
                ),
            ));
        }
        let rows = reader.records().collect::<std::result::Result<Vec<_>, _>>().map_err(|e| Error::format(path, e.to_string()))?;
        Ok(Self { columns, rows })
    }

    /// The cell of `column` (which `read` checked exists) in `row`, trimmed.
    pub fn get<'a>(&self, row: &'a csv::StringRecord, column: &str) -> &'a str {
        self.columns.get(column).and_then(|&i| row.get(i)).map(str::trim).unwrap_or("")
    }
}
