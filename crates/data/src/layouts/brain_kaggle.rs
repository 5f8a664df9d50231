//! The Kaggle "Brain Tumor Classification (MRI)" set: `Training/<class>/` and `Testing/<class>/`
//! of JPEGs whose names repeat across folders (`1.jpg`, `image (57).jpg`). The group is the
//! content hash: 237 of the 3,264 files are exact duplicates, 64 groups across Training/Testing.

use rayon::prelude::*;

use super::admit;
use crate::catalog::DatasetSpec;
use crate::error::{Error, Result};
use crate::files::{FileIndex, ancestor};
use crate::record::Scan;

pub const ORIGINS: [&str; 2] = ["Training", "Testing"];

pub fn scan(spec: &DatasetSpec, index: &FileIndex) -> Result<Scan> {
    let mut scan = Scan::default();
    let images: Vec<&str> = index.with_extension(".jpg").filter(|f| ancestor(f, 2).is_some_and(|o| ORIGINS.contains(&o))).collect();
    if images.is_empty() {
        return Err(Error::io(
            &index.root,
            format!("no Training/<class>/*.jpg or Testing/<class>/*.jpg under this folder; {}", index.wrong_root_hint("Training")),
        ));
    }
    let hashes: Vec<std::result::Result<String, String>> = images
        .par_iter()
        .map(|path| {
            std::fs::read(index.absolute(path)).map(|bytes| blake3::hash(&bytes).to_hex()[..16].to_string()).map_err(|e| e.to_string())
        })
        .collect();
    for (path, hash) in images.into_iter().zip(hashes) {
        match hash {
            Ok(hash) => admit(&mut scan, spec, path, ancestor(path, 1).unwrap_or_default(), hash, ancestor(path, 2).unwrap_or_default()),
            Err(e) => scan.problem(path, format!("cannot read: {e}")),
        }
    }
    Ok(scan)
}
