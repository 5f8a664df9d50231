//! NINS: one folder per diagnosis (about 37, inconsistently spelled); the task uses six and
//! ignores the rest. The class folders sit at any depth (often `NINS_Dataset/NINS_Dataset/`).

use super::admit;
use crate::catalog::DatasetSpec;
use crate::error::{Error, Result};
use crate::files::{FileIndex, ancestor, file_name};
use crate::record::Scan;

pub fn scan(spec: &DatasetSpec, index: &FileIndex) -> Result<Scan> {
    let mut scan = Scan::default();
    let images: Vec<&str> = [".jpg", ".jpeg", ".png"].iter().flat_map(|e| index.with_extension(e)).collect();
    if !images.iter().any(|f| ancestor(f, 1).is_some_and(|class| spec.label_of(class).is_some())) {
        return Err(Error::io(
            &index.root,
            format!(
                "no images in any of the NINS class folders ({}) under this folder; is it the right --root?",
                spec.labels.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    for path in images {
        let class = ancestor(path, 1).unwrap_or_default();
        admit(&mut scan, spec, path, class, file_name(path).to_string(), "");
    }
    Ok(scan)
}
