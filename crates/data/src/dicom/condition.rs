//! `--dicom-where`: which DICOM files of a folder are the images to classify, by their header's
//! fields. A PACS export holds every series of a study (the localizer, T1, T2, FLAIR, the
//! contrast phases); a classifier is trained on one kind, chosen by a field such as Series
//! Description, Modality, Image Type or Body Part Examined.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use dicom_core::Tag;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_dictionary_std::StandardDataDictionary;

use super::dicom_header;
use crate::error::Result;

/// A condition on a DICOM header field: `FIELD=PATTERN` (the field's text matches the pattern)
/// or `FIELD!=PATTERN` (it does not, or the header lacks the field). FIELD is a keyword of the
/// standard's dictionary (SeriesDescription) or a tag ((0008,103E)); PATTERN matches the whole
/// text in any case, `*` any run of characters and `?` one (ImageType's values joined by `\`:
/// `*LOCALIZER*`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DicomCondition {
    /// As written.
    text: String,
    /// The field's keyword (its tag where the dictionary has no keyword for it).
    pub field: String,
    tag: Tag,
    /// Whether the field must not match.
    pub negated: bool,
    pattern: glob::Pattern,
}

impl DicomCondition {
    /// Whether a field whose text is `value` (`None`: the header lacks it) meets the condition.
    pub fn holds(&self, value: Option<&str>) -> bool {
        let options = glob::MatchOptions { case_sensitive: false, require_literal_separator: false, require_literal_leading_dot: false };
        let matches = value.is_some_and(|value| self.pattern.matches_with(value, options));
        matches != self.negated
    }
}

impl FromStr for DicomCondition {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        // The first '=' ends the field (a pattern may hold '=' and '!'), a '!' before it negates.
        let Some((field, pattern)) = text.split_once('=') else {
            return Err(format!(
                "'{text}' is not a condition: give FIELD=PATTERN or FIELD!=PATTERN (SeriesDescription=*FLAIR*, \
                 ImageType!=*LOCALIZER*, Modality=MR)"
            ));
        };
        let (field, negated) = field.strip_suffix('!').map_or((field, false), |field| (field, true));
        let field = field.trim();
        let tag = StandardDataDictionary.parse_tag(field).ok_or_else(|| {
            format!(
                "'{text}': {field} is not a DICOM keyword or tag: give a keyword of the standard's dictionary, in its case \
                 (SeriesDescription, Modality, ImageType, BodyPartExamined, ProtocolName), or a tag as (0008,103E)"
            )
        })?;
        let field = StandardDataDictionary.by_tag(tag).map_or_else(|| tag.to_string(), |entry| entry.alias().to_string());
        let pattern = glob::Pattern::new(pattern).map_err(|e| format!("'{text}': the pattern {pattern:?} cannot be read ({e})"))?;
        Ok(DicomCondition { text: text.to_string(), field, tag, negated, pattern })
    }
}

impl fmt::Display for DicomCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

crate::as_text::serde_as_text!(DicomCondition);

/// The text of each of `conditions`' fields in the header of the DICOM file at `path` (its
/// values joined by `\`, DICOM's padding trimmed; `None` where the header lacks it or it is not
/// text); `None` for a file that is not DICOM.
pub fn dicom_field_texts(path: &Path, conditions: &[DicomCondition]) -> Result<Option<Vec<Option<String>>>> {
    let Some((object, _)) = dicom_header(path)? else { return Ok(None) };
    let text = |tag: Tag| {
        let element = object.element_opt(tag).ok().flatten()?;
        let value = element.to_str().ok()?;
        Some(value.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string())
    };
    Ok(Some(conditions.iter().map(|condition| text(condition.tag)).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Conditions as written: the field by keyword or tag, `=` or `!=`, the pattern in any case;
    /// a field the header lacks matches no pattern; bad conditions refused naming the fix.
    #[test]
    fn a_condition_holds_where_its_field_matches() {
        let flair: DicomCondition = "SeriesDescription=*flair*".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((flair.field.as_str(), flair.negated), ("SeriesDescription", false));
        assert!(flair.holds(Some("AX T2 FLAIR")) && flair.holds(Some("flair")));
        assert!(!flair.holds(Some("AX T1")) && !flair.holds(None));
        let not_localizer: DicomCondition = "ImageType!=*LOCALIZER*".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(not_localizer.negated && !not_localizer.holds(Some("ORIGINAL\\PRIMARY\\LOCALIZER")));
        assert!(not_localizer.holds(Some("ORIGINAL\\PRIMARY\\AXIAL")) && not_localizer.holds(None));
        // A tag names the field by its keyword; ? is one character; the whole text must match.
        let modality: DicomCondition = "(0008,0060)=C?".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((modality.field.as_str(), modality.to_string().as_str()), ("Modality", "(0008,0060)=C?"));
        assert!(modality.holds(Some("CT")) && !modality.holds(Some("CTX")) && !modality.holds(Some("MR")));
        // The first '=' ends the field: '!=' and '=' within the pattern are the pattern's.
        let odd: DicomCondition = "SeriesDescription=a!=b=c".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(!odd.negated && odd.holds(Some("A!=B=C")));
        let not_odd: DicomCondition = "ProtocolName!=x=*".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(not_odd.negated && !not_odd.holds(Some("x=1")) && not_odd.holds(Some("y=1")));
        for (bad, says) in [
            ("SeriesDescription", "not a condition"),
            ("seriesdescription=x", "not a DICOM keyword or tag"),
            ("Modality=[", "cannot be read"),
        ] {
            let error = bad.parse::<DicomCondition>().expect_err(bad);
            assert!(error.contains(says) && error.contains(bad), "{bad}: {error}");
        }
    }

    /// A condition is kept (a model card) as its text and read back the same.
    #[test]
    fn a_condition_is_kept_as_its_text() {
        let condition: DicomCondition = "ImageType!=*LOCALIZER*".parse().unwrap_or_else(|e| panic!("{e}"));
        let json = serde_json::to_string(&condition).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json, "\"ImageType!=*LOCALIZER*\"");
        assert_eq!(serde_json::from_str::<DicomCondition>(&json).unwrap_or_else(|e| panic!("{e}")), condition);
        assert!(serde_json::from_str::<DicomCondition>("\"NoSuchField=x\"").is_err());
    }
}
