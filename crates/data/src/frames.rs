//! Every frame of a DICOM file of several (or slice of a NIfTI volume) as an image of its own
//! (`--dicom-frame all`, or every k-th): an ultrasound or angiography cine loop's frames each a
//! scoring and training example, the file their group, so that a loop is never split between
//! train and test.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rayon::prelude::*;

use crate::dicom::{DicomFrame, dicom_frame_count, series_place};
use crate::error::{Error, Result};
use crate::split::Entry;
use crate::volume::{self, VolumeReading};

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
/// `reading` reads it (an [`Orientation`](crate::Orientation), or a [`VolumeReading`] with a 4-D
/// file's volume), 1 for any other image. A header that cannot be read, or states more frames than
/// the file can hold (a damaged count would otherwise make thousands of images of one file), is an
/// error naming it.
pub fn frame_count(path: &Path, reading: impl Into<VolumeReading>) -> Result<u32> {
    if volume::is_nifti(path) { volume::slice_count(path, reading.into()) } else { dicom_frame_count(path) }
}

/// `entries` with each DICOM file of several frames or NIfTI volume of several slices (under
/// `root`) in place of itself as an entry per frame `selection` keeps (frames 1, 1 + k, 1 + 2k,
/// ...), in order, each with the file's label, group and part: a loop's frames are never split
/// apart (a volume's slices as `reading` reads it). A DICOM series stored a file a slice
/// (`dicom/series.rs`) is a volume whose frames are its files: of its slices, only those
/// `selection` keeps stay (its middle one, every k-th from the first; a chosen number's as its
/// file's only frame), each series' own; with `only`, the default, every slice. Other images, and
/// entries that already name a frame, stay as they are. Each file's frame count and place are read
/// from its header alone; every file whose header cannot be read, or whose series has no such slice
/// or cannot be put in order, is named at once.
pub fn frame_entries(root: &Path, entries: &[Entry], selection: FrameSelection, reading: impl Into<VolumeReading>) -> Result<Vec<Entry>> {
    let reading = reading.into();
    if selection == FrameSelection::default() {
        return Ok(entries.to_vec());
    }
    let kept: Vec<Result<Kept>> = entries
        .par_iter()
        .map(|entry| if entry.frame.is_some() { Ok(Kept::Itself) } else { kept_of(&root.join(&entry.path), selection, reading) })
        .collect();
    let mut problems = Vec::new();
    let mut expanded = Vec::with_capacity(entries.len());
    for (entry, kept) in entries.iter().zip(kept) {
        match kept {
            Ok(Kept::Itself) => expanded.push(entry.clone()),
            Ok(Kept::OnlyFrame) => expanded.push(Entry { frame: Some(1), ..entry.clone() }),
            Ok(Kept::Nothing) => {}
            Ok(Kept::Frames { count, step }) => {
                let step = usize::try_from(step).unwrap_or(usize::MAX).max(1);
                expanded.extend((1..=count).step_by(step).map(|frame| Entry { frame: Some(frame), ..entry.clone() }));
            }
            Err(error) => problems.push(error.to_string()),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Unreadable { total: entries.len(), problems });
    }
    Ok(expanded)
}

/// What of a file [`frame_entries`] keeps.
enum Kept {
    /// The file as its entry is (one image, read at the frame the selection chooses).
    Itself,
    /// The file's only frame, named (a series' slice chosen by number: the number is the slice's
    /// in its series, not a frame of its file).
    OnlyFrame,
    /// Nothing: a slice of a series the selection does not keep.
    Nothing,
    /// Every `step`-th of its `count` frames, each an image.
    Frames { count: u32, step: u32 },
}

/// What `selection` keeps of the file at `path` (its frames as `reading` reads a volume).
fn kept_of(path: &Path, selection: FrameSelection, reading: VolumeReading) -> Result<Kept> {
    let count = frame_count(path, reading)?;
    if count > 1 {
        return Ok(match selection {
            FrameSelection::Every(step) => Kept::Frames { count, step },
            FrameSelection::One(_) => Kept::Itself,
        });
    }
    let Some(place) = series_place(path)? else { return Ok(Kept::Itself) };
    let (index, len) = (u32::try_from(place.index).unwrap_or(u32::MAX), u32::try_from(place.len).unwrap_or(u32::MAX));
    let folder = path.parent().unwrap_or(path).display();
    match selection {
        FrameSelection::Every(step) => Ok(if index % step.max(1) == 0 { Kept::Itself } else { Kept::Nothing }),
        FrameSelection::One(frame) => match frame.index(len) {
            Ok(chosen) if chosen != index => Ok(Kept::Nothing),
            Ok(_) if matches!(frame, DicomFrame::Number(_)) => Ok(Kept::OnlyFrame),
            Ok(_) => Ok(Kept::Itself),
            Err(_) => Err(Error::format(
                path,
                format!("its DICOM series holds {len} slices in {folder}, so it has no slice {frame} (--slice counts from 1)"),
            )),
        },
    }
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
