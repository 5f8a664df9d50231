//! ICIAR 2018 BACH part A: `Photos/<Class>/<file>.tif`, the class from the folder.

use super::admit;
use crate::catalog::DatasetSpec;
use crate::error::{Error, Result};
use crate::files::{FileIndex, ancestor, file_name};
use crate::record::Scan;

pub fn scan(spec: &DatasetSpec, index: &FileIndex) -> Result<Scan> {
    let mut scan = Scan::default();
    let photos: Vec<&str> =
        index.with_extension(".tif").chain(index.with_extension(".tiff")).filter(|f| ancestor(f, 2) == Some("Photos")).collect();
    if photos.is_empty() {
        return Err(Error::io(
            &index.root,
            format!("no Photos/<Class>/*.tif anywhere under this folder; {}", index.wrong_root_hint("Photos")),
        ));
    }
    for path in photos {
        let class = ancestor(path, 1).unwrap_or_default();
        let stem = file_name(path).rsplit_once('.').map_or(file_name(path), |(stem, _)| stem);
        admit(&mut scan, spec, path, class, stem.to_string(), "");
    }
    Ok(scan)
}
