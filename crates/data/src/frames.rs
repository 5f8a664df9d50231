//! Every frame of a DICOM file of several (or slice of a NIfTI volume) as an image of its own
//! (`--dicom-frame all`, or every k-th): an ultrasound or angiography cine loop's frames each a
//! scoring and training example, the file their group, so that a loop is never split between
//! train and test.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rayon::prelude::*;

use crate::dicom::{DicomFrame, dicom_frame_count};
use crate::error::{Error, Result};
use crate::split::Entry;
use crate::volume::{self, Orientation};

/// Which frames of a DICOM file of several (or slices of a NIfTI volume) become images: one chosen
/// frame (the file one image), or every k-th frame from the first (all of them where k is 1), each
/// an image of its own.
/// Written and read as `--dicom-frame` spells it: only, first, middle, last, N, all or every:K.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FrameSelection {
    /// One frame a file, as [`DicomFrame`] chooses it.
    One(DicomFrame),
    /// Frames 1, 1 + k, 1 + 2k, ... of each file (k the value), each an image.
    Every(u32),
}

impl Default for FrameSelection {
    fn default() -> Self {
        FrameSelection::One(DicomFrame::Only)
    }
}

impl FrameSelection {
    /// The frame a file is read at where its entry names none: the one chosen, or, where each
    /// frame is an entry of its own ([`frame_entries`] named the frames of every file of several),
    /// the file's only one.
    pub fn per_file(self) -> DicomFrame {
        match self {
            FrameSelection::One(frame) => frame,
            FrameSelection::Every(_) => DicomFrame::Only,
        }
    }

    /// Whether a file of several frames becomes several images.
    pub fn is_per_frame(self) -> bool {
        matches!(self, FrameSelection::Every(_))
    }
}

impl FromStr for FrameSelection {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "all" {
            return Ok(FrameSelection::Every(1));
        }
        if let Some(step) = text.strip_prefix("every:") {
            return match step.parse::<u32>() {
                Ok(step) if step >= 1 => Ok(FrameSelection::Every(step)),
                _ => Err(format!("'{text}': every:K takes every K-th frame, K a whole number from 1 (every:1 is all)")),
            };
        }
        text.parse().map(FrameSelection::One).map_err(|_| {
            format!(
                "'{text}' is not a frame choice: give only, first, middle, last or a frame number counted from 1 (one frame a file), \
                 or all or every:K (each frame, or every K-th, an image of its own)"
            )
        })
    }
}

crate::as_text::serde_as_text!(FrameSelection);

impl fmt::Display for FrameSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameSelection::One(frame) => frame.fmt(f),
            FrameSelection::Every(1) => f.write_str("all"),
            FrameSelection::Every(step) => write!(f, "every:{step}"),
        }
    }
}

/// How many frames the image file at `path` holds, from its header alone (the pixel data left
/// unread): a DICOM file's Number of Frames (1 where it has none), a NIfTI volume's slices as
/// `orientation` reads it, 1 for any other image. A header that cannot be read, or states more
/// frames than the file can hold (a damaged count would otherwise make thousands of images of one
/// file), is an error naming it.
pub fn frame_count(path: &Path, orientation: Orientation) -> Result<u32> {
    if volume::is_nifti(path) { volume::slice_count(path, orientation) } else { dicom_frame_count(path) }
}

/// `entries` with each DICOM file of several frames or NIfTI volume of several slices (under
/// `root`) in place of itself as an entry per frame `selection` keeps (frames 1, 1 + k, 1 + 2k,
/// ...), in order, each with the file's label, group and part: a loop's frames are never split
/// apart (a volume's slices as `orientation` reads it). Other images, and entries that already
/// name a frame, stay as they are; with one frame a file chosen, `entries` as given. Each file's
/// frame count is read from its header alone; every file whose header cannot be read is named at
/// once.
pub fn frame_entries(root: &Path, entries: &[Entry], selection: FrameSelection, orientation: Orientation) -> Result<Vec<Entry>> {
    let FrameSelection::Every(step) = selection else { return Ok(entries.to_vec()) };
    let step = usize::try_from(step).unwrap_or(usize::MAX).max(1);
    let counts: Vec<Result<u32>> = entries
        .par_iter()
        .map(|entry| if entry.frame.is_some() { Ok(1) } else { frame_count(&root.join(&entry.path), orientation) })
        .collect();
    let mut problems = Vec::new();
    let mut expanded = Vec::with_capacity(entries.len());
    for (entry, count) in entries.iter().zip(counts) {
        match count {
            Ok(1) => expanded.push(entry.clone()),
            Ok(frames) => expanded.extend((1..=frames).step_by(step).map(|frame| Entry { frame: Some(frame), ..entry.clone() })),
            Err(error) => problems.push(error.to_string()),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Unreadable { total: entries.len(), problems });
    }
    Ok(expanded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_are_written_as_they_are_read() {
        for text in ["only", "first", "middle", "last", "7", "all", "every:3"] {
            let selection: FrameSelection = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(selection.to_string(), text);
        }
        assert_eq!("every:1".parse::<FrameSelection>(), Ok(FrameSelection::Every(1)));
        assert_eq!("middle".parse::<FrameSelection>(), Ok(FrameSelection::One(DicomFrame::Middle)));
        for bad in ["every:0", "every:", "every:x", "al", "0", "-2"] {
            let error = bad.parse::<FrameSelection>().expect_err(bad);
            assert!(error.contains(bad), "{bad}: {error}");
        }
        assert_eq!(FrameSelection::default().per_file(), DicomFrame::Only);
        assert_eq!(FrameSelection::Every(2).per_file(), DicomFrame::Only);
        assert_eq!(FrameSelection::One(DicomFrame::Last).per_file(), DicomFrame::Last);
    }
}
