//! The frames of an enhanced DICOM file (a CT, MR or PET volume of several frames) in order along
//! their stack, for `--adjacent-slices`: each frame's Plane Position (Patient) (its Functional
//! Groups') along the normal of its Plane Orientation, lowest first, as `series.rs` orders a
//! series stored a file a slice, so that the same scan exported either way makes the same 2.5-D
//! images. Frame numbers (`--slice N`, a manifest's `#N`) stay the file's own: only which frames
//! are a frame's neighbours follows the positions.
//!
//! Scanners store an enhanced file's frames in the order of its Dimension Index, which is not
//! always one stack from one end to the other: several echoes or phases of each slice, or slices
//! of several stacks, lie side by side in it, and the frames either side of one in the file are
//! then not the slices either side of it. Those files are refused, naming the frames, rather than
//! given neighbours that are not. Frames that state no position, and frames all at one position
//! (a cine loop of one slice), keep the file's order: their neighbours are in time.

use std::path::Path;

use dicom_dictionary_std::tags;
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

/// A file's frames in the order that makes them one stack (or loop): which frame comes where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameStack {
    /// The frames, 0-based, in their order.
    pub frames: Vec<u32>,
    /// What ordered them.
    pub order: FrameOrder,
    /// Each frame's place in `frames`.
    places: Vec<usize>,
}

impl FrameStack {
    /// `count` frames in the order they are stored.
    pub fn stored(count: u32) -> Self {
        FrameStack::ordered((0..count).collect(), FrameOrder::Stored)
    }

    fn ordered(frames: Vec<u32>, order: FrameOrder) -> Self {
        let mut places = vec![0; frames.len()];
        for (place, &frame) in frames.iter().enumerate() {
            places[frame as usize] = place;
        }
        FrameStack { frames, order, places }
    }

    /// The frames either side of the 0-based `frame` (itself at an end of the stack): the one
    /// before it and the one after.
    pub fn beside(&self, frame: u32) -> (u32, u32) {
        let Some(&place) = self.places.get(frame as usize) else { return (frame, frame) };
        (self.frames[place.saturating_sub(1)], self.frames[(place + 1).min(self.frames.len() - 1)])
    }

    /// Whether the order is the file's own.
    pub fn is_stored_order(&self) -> bool {
        self.frames.iter().copied().eq(0..self.frames.len() as u32)
    }
}

/// The stack the `count` frames of the DICOM file at `path` make: ordered by their positions where
/// each frame's Functional Groups state one and an orientation (each its own, or the shared
/// group's), else as stored (so too a file that is not DICOM). Frames of two orientations, or
/// some but not all at one position, are an error naming the file, the frames and the fix.
pub fn frame_stack(path: &Path, count: u32) -> Result<FrameStack> {
    if count < 2 {
        return Ok(FrameStack::stored(count));
    }
    let Some((object, _)) = dicom_header(path)? else { return Ok(FrameStack::stored(count)) };
    if number_of_frames(&object).map_err(|what| Error::format(path, what))? != count {
        return Ok(FrameStack::stored(count));
    }
    let planes: Option<Vec<([f64; 3], [f64; 6])>> = (0..count as usize).map(|frame| frame_plane(&object, frame)).collect();
    let Some(planes) = planes else { return Ok(FrameStack::stored(count)) };
    stack_of(&planes).map_err(|problem| {
        Error::format(
            path,
            format!(
                "--adjacent-slices: {problem}, so the frames beside one in the file are not the slices beside it; convert it \
                 (dcm2niix writes each stack, echo or phase as a volume of its own), or read it without --adjacent-slices"
            ),
        )
    })
}

/// The frames of `planes` (each frame's position and orientation) in order along their normal;
/// why they are not one stack where they are not.
fn stack_of(planes: &[([f64; 3], [f64; 6])]) -> std::result::Result<FrameStack, String> {
    let (_, first) = planes[0];
    if let Some(other) = planes.iter().position(|(_, o)| o.iter().zip(&first).any(|(a, b)| (a - b).abs() > SAME)) {
        return Err(format!(
            "its frames 1 and {} are of two orientations (Image Orientation (Patient) {first:?} and {:?}), so they are not \
             one stack",
            other + 1,
            planes[other].1
        ));
    }
    let normal = cross([first[0], first[1], first[2]], [first[3], first[4], first[5]]);
    let along = |(position, _): &([f64; 3], [f64; 6])| position.iter().zip(&normal).map(|(p, n)| p * n).sum::<f64>();
    let mut keyed: Vec<(f64, u32)> = planes.iter().map(along).zip(0..).collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (lowest, highest) = (keyed[0].0, keyed[keyed.len() - 1].0);
    if highest - lowest <= SAME {
        return Ok(FrameStack::stored(planes.len() as u32));
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
    Ok(FrameStack::ordered(keyed.into_iter().map(|(_, frame)| frame).collect(), FrameOrder::Position))
}

/// Frame `frame`'s Image Position and Orientation (Patient) from `object`'s Functional Groups
/// (Plane Position and Plane Orientation), its own group's first, then the shared one's.
fn frame_plane(object: &DefaultDicomObject, frame: usize) -> Option<([f64; 3], [f64; 6])> {
    let position = group_value(object, frame, tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT)?;
    let orientation = group_value(object, frame, tags::PLANE_ORIENTATION_SEQUENCE, tags::IMAGE_ORIENTATION_PATIENT)?;
    Some((position.try_into().ok()?, orientation.try_into().ok()?))
}
