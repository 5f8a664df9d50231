//! 2.5-D images (`--adjacent-slices`): each chosen frame of a volume or a file of several frames
//! made of three, the one before in red, itself in green and the one after in blue (the first and
//! last repeating themselves at the ends), as CT and MR classifiers feed a little of the third
//! dimension to 2-D ImageNet backbones. Each of the three is rendered gray as it would be alone.

use std::collections::BTreeMap;
use std::path::Path;

use image::RgbImage;

use super::{Decoded, Rendering, load_image_frames};
use crate::dicom::DicomFrame;
use crate::error::{Error, Result};
use crate::frames::frame_count;

/// [`load_image_frames`] of `frames` of the file at `path`, each made of the frames either side
/// of it and itself, rendered as `rendering` says (its own `adjacent_slices` not set).
pub(super) fn adjacent_frames(path: &Path, frames: &[DicomFrame], rendering: Rendering) -> Result<Vec<Result<Decoded>>> {
    let count = frame_count(path, rendering.orientation)?;
    // Each chosen frame's 0-based index; a choice that names none is decoded as asked, for the
    // error its format gives it.
    let chosen: Vec<Option<u32>> = frames.iter().map(|frame| frame.index(count).ok()).collect();
    let needed: Vec<u32> = {
        let mut needed: Vec<u32> =
            chosen.iter().flatten().flat_map(|&index| [index.saturating_sub(1), index, (index + 1).min(count - 1)]).collect();
        needed.sort_unstable();
        needed.dedup();
        needed
    };
    let asked: Vec<DicomFrame> = needed.iter().map(|&index| DicomFrame::Number(index + 1)).collect();
    // Each frame read once, its grayness checked once, however many chosen frames it neighbours.
    let decoded: BTreeMap<u32, Result<Decoded>> = needed
        .iter()
        .copied()
        .zip(load_image_frames(path, &asked, rendering)?)
        .map(|(index, decoded)| (index, decoded.and_then(|decoded| if is_gray(&decoded.image) { Ok(decoded) } else { Err(colour(path)) })))
        .collect();
    let gray = |index: u32| -> Result<&Decoded> {
        match decoded.get(&index) {
            Some(Ok(decoded)) => Ok(decoded),
            // A frame's error (not Clone: several chosen frames may share this one) made anew.
            Some(Err(Error::Format { path, problem })) => Err(Error::format(path.clone(), problem.clone())),
            Some(Err(error)) => Err(Error::format(path, format!("frame {}: {error}", index + 1))),
            None => Err(Error::format(path, format!("frame {} was not read", index + 1))),
        }
    };
    Ok(frames
        .iter()
        .zip(chosen)
        .map(|(&frame, index)| {
            let Some(index) = index else {
                return load_image_frames(path, &[frame], rendering)?.remove(0);
            };
            let (before, itself, after) = (gray(index.saturating_sub(1))?, gray(index)?, gray((index + 1).min(count - 1))?);
            if before.image.dimensions() != itself.image.dimensions() || after.image.dimensions() != itself.image.dimensions() {
                return Err(Error::format(path, "its frames differ in size, so adjacent ones cannot be channels of one image"));
            }
            let mut image = itself.image.clone();
            for ((pixel, b), a) in image.pixels_mut().zip(before.image.pixels()).zip(after.image.pixels()) {
                *pixel = image::Rgb([b.0[0], pixel.0[1], a.0[2]]);
            }
            Ok(Decoded { image, faint: before.faint || itself.faint || after.faint })
        })
        .collect())
}

/// Why a colour frame cannot be made 2.5-D, and the fix.
fn colour(path: &Path) -> Error {
    Error::format(
        path,
        "a colour image (or three windows, one a channel): --adjacent-slices makes the three channels of three gray frames; read it \
         without --adjacent-slices, or with one window",
    )
}

/// Whether every pixel of `image` is gray (its channels equal).
fn is_gray(image: &RgbImage) -> bool {
    image.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2])
}
