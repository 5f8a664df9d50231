//! BreakHis v1: every label and the patient come from the file name
//! `SOB_<B|M>_<TYPE>-<YY>-<ID><SUFFIX>-<MAG>-<SEQ>.png`, found at any depth.

use super::admit;
use crate::catalog::DatasetSpec;
use crate::files::{FileIndex, file_name};
use crate::record::Scan;

/// The fields of a BreakHis file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakhisName {
    /// "benign" or "malignant".
    pub class: &'static str,
    /// Tumour type code: A, F, PT, TA, DC, LC, MC, PC.
    pub tumour_type: String,
    /// `<YY>-<ID>` without the slide suffix: 70 patients in the real set.
    pub patient: String,
    /// The slide suffix (`AB`, `CD`, ...), possibly empty.
    pub slide_suffix: String,
    /// 40, 100, 200 or 400.
    pub magnification: u32,
    /// The image's number within its slide and magnification.
    pub sequence: u32,
}

/// Parses `SOB_B_A-14-22549AB-40-001.png`; None for any other name (DATASETS.md's regex
/// `^SOB_([BM])_([A-Z]+)-(\d{2})-(\d+)([A-Z]*)-(40|100|200|400)-(\d{3})\.png$`).
pub fn parse_file_name(name: &str) -> Option<BreakhisName> {
    let stem = name.strip_suffix(".png")?.strip_prefix("SOB_")?;
    let (benign_or_malignant, rest) = stem.split_once('_')?;
    let class = match benign_or_malignant {
        "B" => "benign",
        "M" => "malignant",
        _ => return None,
    };
    let fields: Vec<&str> = rest.split('-').collect();
    let [tumour_type, year, id_suffix, magnification, sequence] = fields.as_slice() else { return None };
    let digits = |s: &str, n: Option<usize>| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && n.is_none_or(|n| s.len() == n);
    let upper = |s: &str| s.bytes().all(|b| b.is_ascii_uppercase());
    let id_end = id_suffix.find(|c: char| !c.is_ascii_digit()).unwrap_or(id_suffix.len());
    let (id, suffix) = id_suffix.split_at(id_end);
    let valid = !tumour_type.is_empty()
        && upper(tumour_type)
        && digits(year, Some(2))
        && digits(id, None)
        && upper(suffix)
        && ["40", "100", "200", "400"].contains(magnification)
        && digits(sequence, Some(3));
    valid.then(|| BreakhisName {
        class,
        tumour_type: tumour_type.to_string(),
        patient: format!("{year}-{id}"),
        slide_suffix: suffix.to_string(),
        magnification: magnification.parse().unwrap_or(0),
        sequence: sequence.parse().unwrap_or(0),
    })
}

pub fn scan(spec: &DatasetSpec, index: &FileIndex) -> Scan {
    let mut scan = Scan::default();
    for path in index.with_extension(".png") {
        let Some(name) = parse_file_name(file_name(path)) else {
            scan.problem(path, "a .png that is not a BreakHis image name (SOB_<B|M>_<TYPE>-<YY>-<ID>-<MAG>-<SEQ>.png)");
            continue;
        };
        // The folder tree repeats the class; a file filed under the other class is a problem.
        let other = if name.class == "benign" { "malignant" } else { "benign" };
        if path.split('/').any(|part| part == other) {
            scan.problem(path, format!("the file name says {} but it sits in a {other} folder", name.class));
            continue;
        }
        admit(&mut scan, spec, path, name.class, name.patient, "");
    }
    if scan.records.is_empty() && scan.problems.is_empty() {
        scan.problem(&index.root, "no BreakHis .png anywhere under this folder; is it the right --root?");
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_names_and_rejects_others() {
        let name = parse_file_name("SOB_B_A-14-22549AB-40-001.png").unwrap();
        assert_eq!(
            (name.class, name.tumour_type.as_str(), name.patient.as_str(), name.slide_suffix.as_str()),
            ("benign", "A", "14-22549", "AB")
        );
        assert_eq!((name.magnification, name.sequence), (40, 1));
        let name = parse_file_name("SOB_M_DC-14-13412-400-083.png").unwrap();
        assert_eq!((name.class, name.patient.as_str(), name.slide_suffix.as_str(), name.magnification), ("malignant", "14-13412", "", 400));
        for bad in [
            "SOB_X_A-14-22549AB-40-001.png",
            "SOB_B_A-14-22549AB-50-001.png",
            "SOB_B_A-4-22549AB-40-001.png",
            "SOB_B_A-14-22549AB-40-01.png",
            "SOB_B_a-14-22549AB-40-001.png",
            "SOB_B_A-14-22549AB-40-001.jpg",
            "SOB_B_A_14-22549AB",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }
}
