//! PAD-UFES-20: metadata.csv (26 columns; `img_id` with its extension, `diagnostic`,
//! `patient_id`) and PNGs anywhere below (`images/imgs_part_*`, double-nested or flattened).

use super::admit;
use super::table::Table;
use crate::catalog::DatasetSpec;
use crate::error::Result;
use crate::files::FileIndex;
use crate::record::Scan;

/// The metadata table.
pub const METADATA: &str = "metadata.csv";
/// The 26 columns of the real file, in order.
pub const COLUMNS: [&str; 26] = [
    "patient_id",
    "lesion_id",
    "smoke",
    "drink",
    "background_father",
    "background_mother",
    "age",
    "pesticide",
    "gender",
    "skin_cancer_history",
    "cancer_history",
    "has_piped_water",
    "has_sewage_system",
    "fitspatrick",
    "region",
    "diameter_1",
    "diameter_2",
    "diagnostic",
    "itch",
    "grew",
    "hurt",
    "changed",
    "bleed",
    "elevation",
    "img_id",
    "biopsed",
];

pub fn scan(spec: &DatasetSpec, index: &FileIndex) -> Result<Scan> {
    let mut scan = Scan::default();
    let metadata_path = index.absolute(index.unique_file(METADATA)?);
    let metadata = Table::read(&metadata_path, &["patient_id", "lesion_id", "diagnostic", "img_id"])?;
    let images = index.by_file_name(".png");
    for (line, row) in metadata.rows.iter().enumerate() {
        let (image, class) = (metadata.get(row, "img_id"), metadata.get(row, "diagnostic"));
        let path = match images.get(image).map(Vec::as_slice) {
            Some([one]) => *one,
            Some(many) => {
                scan.problem(&metadata_path, format!("line {}: {image} exists {} times: {}", line + 2, many.len(), many.join(", ")));
                continue;
            }
            None if spec.label_of(class).is_none() && spec.knows(class) => {
                scan.dropped += 1;
                continue;
            }
            None => {
                scan.problem(&metadata_path, format!("line {}: {image} is listed but absent under the root", line + 2));
                continue;
            }
        };
        admit(&mut scan, spec, path, class, metadata.get(row, "patient_id").to_string(), "");
    }
    Ok(scan)
}
