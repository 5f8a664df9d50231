//! The frames of an enhanced DICOM file (a CT, MR or PET volume of several frames) in order along
//! their stack, for `--adjacent-slices`: each frame's Plane Position (Patient) (its Functional
//! Groups') along the normal of its Plane Orientation, lowest first, as `series.rs` orders a
//! series stored a file a slice, so that the same scan exported either way makes the same 2.5-D
//! images. Frame numbers (`--slice N`, a manifest's `#N`) stay the file's own: only which frames
//! are a frame's neighbours follows the positions.
//!
//! Scanners store an enhanced file's frames in the order of its Dimension Index, which is not
//! always one stack from one end to the other: several echoes, phases or b-values of each slice,
//! or slices of several stacks, lie side by side in it, and the frames either side of one in the
//! file are then not the slices either side of it. Where the frames are not one stack, the file's
//! Dimension Index (PS3.3 C.7.6.17) tells the stacks apart as dcm2niix does: frames that share
//! every index but the spatial ones (In-Stack Position Number, Image Position) are one stack, each
//! ordered by position (an echo's, a phase's, a b-value's slices). A file whose index does not
//! tell them apart is refused, naming the frames, rather than given neighbours that are not.
//! Frames that state no position, and frames all at one position (a cine loop of one slice), keep
//! the file's order: their neighbours are in time.

use std::collections::BTreeMap;
use std::path::Path;

use dicom_core::Tag;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::value::{PrimitiveValue, Value};
use dicom_dictionary_std::{StandardDataDictionary, tags};
use dicom_object::DefaultDicomObject;

use super::geometry::{SAME, cross, group_value};
use super::{dicom_header, number_of_frames};
use crate::error::{Error, Result};

/// What orders a file's frames for 2.5-D images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameOrder {
    /// The file's own order: its frames state no positions, or all one (a loop in time).
    Stored,
    /// Plane Position (Patient) along the frames' normal, lowest first.
    Position,
}

/// A file's frames as the stacks (or loop) they make: which frame comes where in which stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameStacks {
    /// Each stack's frames, 0-based, in their order: one stack, but for a file whose Dimension
    /// Index tells several apart.
    pub stacks: Vec<Vec<u32>>,
    /// What ordered them.
    pub order: FrameOrder,
    /// The dimensions that told the stacks apart (their keywords: `DiffusionBValue`), where
    /// there are several.
    pub apart_by: Vec<String>,
    /// Each frame's stack and place in it.
    places: Vec<(usize, usize)>,
}

impl FrameStacks {
    /// `count` frames in the order they are stored.
    pub fn stored(count: u32) -> Self {
        FrameStacks::of(vec![(0..count).collect()], FrameOrder::Stored, Vec::new())
    }

    fn of(stacks: Vec<Vec<u32>>, order: FrameOrder, apart_by: Vec<String>) -> Self {
        let mut places = vec![(0, 0); stacks.iter().map(Vec::len).sum()];
        for (stack, frames) in stacks.iter().enumerate() {
            for (place, &frame) in frames.iter().enumerate() {
                if let Some(slot) = places.get_mut(frame as usize) {
                    *slot = (stack, place);
                }
            }
        }
        FrameStacks { stacks, order, apart_by, places }
    }

    /// The frames either side of the 0-based `frame` in its stack (itself at an end): the one
    /// before it and the one after.
    pub fn beside(&self, frame: u32) -> (u32, u32) {
        let Some(&(stack, place)) = self.places.get(frame as usize) else { return (frame, frame) };
        let frames = &self.stacks[stack];
        (frames[place.saturating_sub(1)], frames[(place + 1).min(frames.len() - 1)])
    }

    /// Whether the order is the file's own: one stack, as stored.
    pub fn is_stored_order(&self) -> bool {
        matches!(self.stacks.as_slice(), [frames] if frames.iter().copied().eq(0..frames.len() as u32))
    }
}

/// The stacks the `count` frames of the DICOM file at `path` make: one, ordered by the frames'
/// positions where each frame's Functional Groups state one and an orientation (each its own, or
/// the shared group's), else as stored (so too a file that is not DICOM); several where the
/// frames are not one stack and the file's Dimension Index tells them apart. Frames of two
/// orientations, or some at one position and others elsewhere, that the index does not tell apart
/// are an error naming the file, the frames and the fix.
pub fn frame_stacks(path: &Path, count: u32) -> Result<FrameStacks> {
    if count < 2 {
        return Ok(FrameStacks::stored(count));
    }
    let Some((object, _)) = dicom_header(path)? else { return Ok(FrameStacks::stored(count)) };
    if number_of_frames(&object).map_err(|what| Error::format(path, what))? != count {
        return Ok(FrameStacks::stored(count));
    }
    let planes: Option<Vec<Plane>> = (0..count as usize).map(|frame| frame_plane(&object, frame)).collect();
    let Some(planes) = planes else { return Ok(FrameStacks::stored(count)) };
    let refused = |problem: String| {
        Error::format(
            path,
            format!(
                "--adjacent-slices: {problem}, so the frames beside one in the file are not the slices beside it; convert it \
                 (dcm2niix writes each stack, echo or phase as a volume of its own), or read it without --adjacent-slices"
            ),
        )
    };
    let all: Vec<u32> = (0..count).collect();
    let problem = match in_order(&all, &planes) {
        Ok(None) => return Ok(FrameStacks::stored(count)),
        Ok(Some(frames)) => return Ok(FrameStacks::of(vec![frames], FrameOrder::Position, Vec::new())),
        Err(problem) => problem,
    };
    let Some((groups, apart_by)) = stacks_apart(&object, count).filter(|(groups, _)| groups.len() > 1) else {
        return Err(refused(format!("{problem}, and its Dimension Index does not tell them apart")));
    };
    let mut stacks = Vec::with_capacity(groups.len());
    for group in groups {
        // A stack all at one place (one slice through time) keeps the file's order.
        let ordered =
            in_order(&group, &planes).map_err(|problem| refused(format!("within one stack its Dimension Index tells apart, {problem}")))?;
        stacks.push(ordered.unwrap_or(group));
    }
    Ok(FrameStacks::of(stacks, FrameOrder::Position, apart_by))
}

/// A frame's Image Position and Orientation (Patient).
type Plane = ([f64; 3], [f64; 6]);

/// `frames` (0-based, of `planes`) in order along their normal; `None` where they all lie at one
/// position; why they are not one stack where they are not.
fn in_order(frames: &[u32], planes: &[Plane]) -> std::result::Result<Option<Vec<u32>>, String> {
    let plane = |frame: u32| planes[frame as usize];
    let first = plane(frames[0]).1;
    if let Some(&other) = frames.iter().find(|&&frame| plane(frame).1.iter().zip(&first).any(|(a, b)| (a - b).abs() > SAME)) {
        return Err(format!(
            "its frames {} and {} are of two orientations (Image Orientation (Patient) {first:?} and {:?}), so they are not \
             one stack",
            frames[0] + 1,
            other + 1,
            plane(other).1
        ));
    }
    let normal = cross([first[0], first[1], first[2]], [first[3], first[4], first[5]]);
    let along = |frame: u32| plane(frame).0.iter().zip(&normal).map(|(p, n)| p * n).sum::<f64>();
    let mut keyed: Vec<(f64, u32)> = frames.iter().map(|&frame| (along(frame), frame)).collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    if keyed[keyed.len() - 1].0 - keyed[0].0 <= SAME {
        return Ok(None);
    }
    if let Some(pair) = keyed.windows(2).find(|pair| pair[1].0 - pair[0].0 <= SAME) {
        let (a, b) = (pair[0].1.min(pair[1].1), pair[0].1.max(pair[1].1));
        return Err(format!(
            "its frames {} and {} lie at the same position ({:.3} mm along their normal) and others elsewhere: several echoes, \
             phases or stacks in one file",
            a + 1,
            b + 1,
            pair[0].0
        ));
    }
    Ok(Some(keyed.into_iter().map(|(_, frame)| frame).collect()))
}

/// The dimensions of a Dimension Index that place a frame within its stack rather than tell
/// stacks apart.
const SPATIAL: [Tag; 2] = [tags::IN_STACK_POSITION_NUMBER, tags::IMAGE_POSITION_PATIENT];

/// The `count` frames of `object` grouped by their Dimension Index Values on every dimension but
/// the spatial ones (each group's frames as stored, the groups by those values), and the keywords
/// of those dimensions; `None` where the file has no such dimension or a frame states no values.
fn stacks_apart(object: &DefaultDicomObject, count: u32) -> Option<(Vec<Vec<u32>>, Vec<String>)> {
    let dimensions = object.element_opt(tags::DIMENSION_INDEX_SEQUENCE).ok().flatten()?.items()?;
    let pointers: Vec<Tag> = dimensions
        .iter()
        .map(|dimension| match dimension.element_opt(tags::DIMENSION_INDEX_POINTER).ok().flatten()?.value() {
            Value::Primitive(PrimitiveValue::Tags(tags)) => tags.first().copied(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let apart: Vec<usize> = (0..pointers.len()).filter(|&at| !SPATIAL.contains(&pointers[at])).collect();
    if apart.is_empty() {
        return None;
    }
    let mut groups: BTreeMap<Vec<u32>, Vec<u32>> = BTreeMap::new();
    let per_frame = object.element_opt(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).ok().flatten()?.items()?;
    for frame in 0..count {
        let content = per_frame.get(frame as usize)?.element_opt(tags::FRAME_CONTENT_SEQUENCE).ok().flatten()?.items()?.first()?;
        let values: Vec<u32> = content.element_opt(tags::DIMENSION_INDEX_VALUES).ok().flatten()?.to_multi_int().ok()?;
        if values.len() != pointers.len() {
            return None;
        }
        groups.entry(apart.iter().map(|&at| values[at]).collect()).or_default().push(frame);
    }
    let keyword = |tag: Tag| StandardDataDictionary.by_tag(tag).map_or_else(|| tag.to_string(), |entry| entry.alias().to_string());
    Some((groups.into_values().collect(), apart.iter().map(|&at| keyword(pointers[at])).collect()))
}

/// Frame `frame`'s Image Position and Orientation (Patient) from `object`'s Functional Groups
/// (Plane Position and Plane Orientation), its own group's first, then the shared one's.
fn frame_plane(object: &DefaultDicomObject, frame: usize) -> Option<Plane> {
    let position = group_value(object, frame, tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT)?;
    let orientation = group_value(object, frame, tags::PLANE_ORIENTATION_SEQUENCE, tags::IMAGE_ORIENTATION_PATIENT)?;
    Some((position.try_into().ok()?, orientation.try_into().ok()?))
}
