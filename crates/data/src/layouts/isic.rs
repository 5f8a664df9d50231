//! ISIC 2019 training set: the ground-truth CSV (float one-hot over MEL..UNK), the metadata CSV
//! (lesion_id), and `ISIC_2019_Training_Input/*.jpg` whose stems may end in `_downsampled`.

use std::collections::HashMap;

use super::admit;
use super::table::Table;
use crate::catalog::DatasetSpec;
use crate::error::Result;
use crate::files::{FileIndex, file_name};
use crate::record::Scan;

/// The one-hot class table.
pub const GROUND_TRUTH: &str = "ISIC_2019_Training_GroundTruth.csv";
/// The table of lesion ids (the grouped split's groups).
pub const METADATA: &str = "ISIC_2019_Training_Metadata.csv";
/// The ground truth's class columns, in its order.
pub const CLASSES: [&str; 9] = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"];

pub fn scan(spec: &DatasetSpec, index: &FileIndex) -> Result<Scan> {
    let mut scan = Scan::default();
    let truth_path = index.absolute(index.unique_file(GROUND_TRUTH)?);
    let truth = Table::read(&truth_path, &[&["image"][..], &CLASSES].concat())?;
    // lesion_id groups images of one lesion; an image without one is its own group.
    let mut lesions: HashMap<String, String> = HashMap::new();
    match index.unique_file(METADATA) {
        Ok(relative) => {
            let metadata = Table::read(&index.absolute(relative), &["image", "lesion_id"])?;
            for row in &metadata.rows {
                let lesion = metadata.get(row, "lesion_id");
                if !lesion.is_empty() {
                    lesions.insert(metadata.get(row, "image").to_string(), lesion.to_string());
                }
            }
        }
        Err(e) => scan.problem(&index.root, format!("{e} (without it every image is its own group)")),
    }
    let images: HashMap<&str, &str> = index.with_extension(".jpg").map(|f| (file_name(f), f)).collect();
    for (line, row) in truth.rows.iter().enumerate() {
        let stem = truth.get(row, "image");
        let mut hot = Vec::new();
        for class in CLASSES {
            match truth.get(row, class).parse::<f64>() {
                Ok(value) if value >= 0.5 => hot.push(class),
                Ok(_) => {}
                Err(_) => scan.problem(&truth_path, format!("line {}: {class} = {:?} is not a number", line + 2, truth.get(row, class))),
            }
        }
        let [class] = hot.as_slice() else {
            scan.problem(&truth_path, format!("line {}: {stem} has {} classes set, expected exactly one", line + 2, hot.len()));
            continue;
        };
        let Some(path) = images.get(format!("{stem}.jpg").as_str()) else {
            if spec.label_of(class).is_some() {
                scan.problem(&truth_path, format!("line {}: {stem}.jpg is listed but absent under the root", line + 2));
            } else {
                scan.dropped += 1;
            }
            continue;
        };
        let group = lesions.get(stem).cloned().unwrap_or_else(|| stem.to_string());
        admit(&mut scan, spec, path, class, group, "");
    }
    Ok(scan)
}
