//! `--dicom-where`: the images rank and predict keep of a folder or CSV, by their DICOM header's
//! fields (a PACS export's FLAIR series of every study, its localizers left out), said on stderr
//! with the fields' most common values among the files kept and those left out, so that a
//! pattern that keeps too little or too much shows what to write instead.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use medxfer_data::DicomCondition;

/// How many of a field's values are named each way.
const VALUES_SHOWN: usize = 5;

/// Whether each of `paths` (under `root`) is kept: a DICOM file whose header meets every one of
/// `conditions` (all kept without any); what was kept and left out said on stderr. A header that
/// cannot be read is an error naming the file.
pub fn kept_where(root: &Path, paths: &[String], conditions: &[DicomCondition]) -> Result<Vec<bool>> {
    use rayon::prelude::*;
    if conditions.is_empty() {
        return Ok(vec![true; paths.len()]);
    }
    let texts: Vec<Option<Vec<Option<String>>>> = paths
        .par_iter()
        .map(|path| {
            let file = root.join(path);
            medxfer_data::dicom_field_texts(&file, conditions).with_context(|| format!("--dicom-where: reading {}", file.display()))
        })
        .collect::<Result<_>>()?;
    let kept: Vec<bool> = texts
        .iter()
        .map(|texts| texts.as_ref().is_some_and(|texts| conditions.iter().zip(texts).all(|(c, text)| c.holds(text.as_deref()))))
        .collect();
    say_kept(conditions, &texts, &kept);
    Ok(kept)
}

/// Says on stderr how many files `kept` keeps, how many are not DICOM, and for each condition's
/// field its most common values (`texts`, a file's each) among the files kept and those left out.
fn say_kept(conditions: &[DicomCondition], texts: &[Option<Vec<Option<String>>>], kept: &[bool]) {
    let written: Vec<String> = conditions.iter().map(ToString::to_string).collect();
    let not_dicom = texts.iter().filter(|texts| texts.is_none()).count();
    let not_dicom = if not_dicom > 0 { format!(" ({not_dicom} not DICOM, left out)") } else { String::new() };
    eprintln!(
        "--dicom-where {}: {} of {} files kept{not_dicom}",
        written.join(" --dicom-where "),
        kept.iter().filter(|kept| **kept).count(),
        kept.len()
    );
    for (at, condition) in conditions.iter().enumerate() {
        let values = |wanted: bool| {
            let mut counts: HashMap<Option<&str>, usize> = HashMap::new();
            for (texts, _) in texts.iter().zip(kept).filter(|(_, kept)| **kept == wanted) {
                if let Some(texts) = texts {
                    *counts.entry(texts[at].as_deref()).or_default() += 1;
                }
            }
            let mut counts: Vec<(Option<&str>, usize)> = counts.into_iter().collect();
            counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let more = counts.len().saturating_sub(VALUES_SHOWN);
            let named = |value: Option<&str>| value.map_or_else(|| "(absent)".to_string(), |value| format!("{value:?}"));
            let mut shown: Vec<String> = counts.into_iter().take(VALUES_SHOWN).map(|(value, n)| format!("{} {n}", named(value))).collect();
            if more > 0 {
                shown.push(format!("{more} more"));
            }
            if shown.is_empty() { "none".to_string() } else { shown.join(", ") }
        };
        eprintln!("  {} of the files kept: {}; of those left out: {}", condition.field, values(true), values(false));
    }
}
