//! 2.5-D images (`--adjacent-slices`): each chosen frame of a volume or a file of several frames
//! made of three, the one before in red, itself in green and the one after in blue (the first and
//! last repeating themselves at the ends), as CT and MR classifiers feed a little of the third
//! dimension to 2-D ImageNet backbones. Each of the three is rendered gray as it would be alone.
//! An enhanced DICOM file's frames are ordered along their stack by their positions
//! (`dicom/stack.rs`); a slice of a DICOM series stored a file a slice has the series' slices
//! either side of it (`dicom/series.rs` orders them), each of those files wanted for itself and
//! for each of its neighbours, and kept once read.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use image::RgbImage;

use super::{Decoded, Rendering, load_image_frames};
use crate::dicom::{DicomFrame, FrameStacks, SeriesPlace, frame_stacks, series_place};
use crate::error::{Error, Result};
use crate::frames::frame_count;
use crate::volume::is_nifti;

/// [`load_image_frames`] of `frames` of the file at `path`, each made of the frames either side
/// of it and itself, rendered as `rendering` says (its own `adjacent_slices` not set).
pub(super) fn adjacent_frames(path: &Path, frames: &[DicomFrame], rendering: Rendering) -> Result<Vec<Result<Decoded>>> {
    let count = frame_count(path, rendering.reading())?;
    if count == 1
        && let Some(place) = series_place(path)?
    {
        return Ok(series_frames(path, frames, &place, rendering));
    }
    // An enhanced DICOM file's frames in order along their stack; a volume's slices are.
    let stack = if is_nifti(path) { FrameStacks::stored(count) } else { frame_stacks(path, count)? };
    // Each chosen frame's 0-based index; a choice that names none is decoded as asked, for the
    // error its format gives it.
    let chosen: Vec<Option<u32>> = frames.iter().map(|frame| frame.index(count).ok()).collect();
    let needed: Vec<u32> = {
        let mut needed: Vec<u32> = chosen
            .iter()
            .flatten()
            .flat_map(|&index| {
                let (before, after) = stack.beside(index);
                [before, index, after]
            })
            .collect();
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
        .map(|(index, decoded)| (index, decoded.and_then(|decoded| gray_only(path, decoded))))
        .collect();
    let gray = |index: u32| again(path, decoded.get(&index), &format!("frame {}", index + 1));
    Ok(frames
        .iter()
        .zip(chosen)
        .map(|(&frame, index)| {
            let Some(index) = index else {
                return load_image_frames(path, &[frame], rendering)?.remove(0);
            };
            let (before, after) = stack.beside(index);
            let (before, itself, after) = (gray(before)?, gray(index)?, gray(after)?);
            stacked(path, [before, itself, after], "its frames differ in size")
        })
        .collect())
}

/// [`adjacent_frames`] of `frames` of the single-frame DICOM file at `path`, the slice of its
/// series `place` places: the series' slices either side of it its red and blue.
fn series_frames(path: &Path, frames: &[DicomFrame], place: &SeriesPlace, rendering: Rendering) -> Vec<Result<Decoded>> {
    let read = |file: &Path| read_slice(file, rendering);
    let neighbour = |file: &Path, which: &str| {
        read(file).map_err(|error| Error::format(path, format!("--adjacent-slices: the slice {which} it in its series: {error}")))
    };
    let [before, itself, after] = [neighbour(&place.before, "before"), read(path), neighbour(&place.after, "after")];
    frames
        .iter()
        .map(|&frame| {
            if frame.index(1).is_err() {
                return load_image_frames(path, &[frame], rendering)?.remove(0);
            }
            let three = [
                again(path, Some(&before), "the slice")?,
                again(path, Some(&itself), "the slice")?,
                again(path, Some(&after), "the slice")?,
            ];
            stacked(path, three, "the slices of its series differ in size")
        })
        .collect()
}

/// A series' slice as read for 2.5-D images: its file (path, size, modification time), the
/// rendering it was read with, and its gray image.
type ReadSlice = ((PathBuf, u64, Option<SystemTime>), Rendering, Decoded);

/// The slices of series read lately. Each slice is read for its own 2.5-D image and for each of
/// its two neighbours', which an image cache asks for one after another: kept, three reads a slice
/// become about one (a 512 x 512 CT slice: 8.4 ms a 2.5-D image read anew, 2.5 ms read alone).
static READ_SLICES: Mutex<VecDeque<ReadSlice>> = Mutex::new(VecDeque::new());

/// How many bytes of images [`READ_SLICES`] keeps at most (besides a few a decoding thread).
const READ_SLICES_BYTES: usize = 64 << 20;

/// The series' slice `file` read gray as `rendering` says: as kept, else read (then kept).
fn read_slice(file: &Path, rendering: Rendering) -> Result<Decoded> {
    let metadata = std::fs::metadata(file).map_err(|e| Error::io(file, e))?;
    let identity = (file.to_path_buf(), metadata.len(), metadata.modified().ok());
    let lock = || READ_SLICES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, _, decoded)) = lock().iter().find(|(kept, how, _)| *kept == identity && *how == rendering) {
        return Ok(decoded.clone());
    }
    let decoded = load_image_frames(file, &[DicomFrame::Only], rendering)?.into_iter().next();
    let decoded = decoded.unwrap_or_else(|| Err(Error::format(file, "no frame was read"))).and_then(|decoded| gray_only(file, decoded))?;
    let mut kept = lock();
    kept.push_back((identity, rendering, decoded.clone()));
    let most = 4 * rayon::current_num_threads();
    while kept.len() > most || (kept.len() > 1 && kept.iter().map(|(_, _, d)| d.image.as_raw().len()).sum::<usize>() > READ_SLICES_BYTES) {
        kept.pop_front();
    }
    Ok(decoded)
}

/// Lets go of the slices [`read_slice`] kept.
pub(crate) fn forget_read_slices() {
    READ_SLICES.lock().unwrap_or_else(PoisonError::into_inner).clear();
}

/// `decoded` where it is gray, else why colour cannot be 2.5-D.
fn gray_only(path: &Path, decoded: Decoded) -> Result<Decoded> {
    if is_gray(&decoded.image) { Ok(decoded) } else { Err(colour(path)) }
}

/// The image `read` holds, or its error made anew (errors are not Clone, and several chosen
/// frames may share a neighbour), `what` (a frame) naming it where the error does not name a file.
fn again<'a>(path: &Path, read: Option<&'a Result<Decoded>>, what: &str) -> Result<&'a Decoded> {
    match read {
        Some(Ok(decoded)) => Ok(decoded),
        Some(Err(Error::Format { path, problem })) => Err(Error::format(path.clone(), problem.clone())),
        Some(Err(Error::Io { path, problem })) => Err(Error::Io { path: path.clone(), problem: problem.clone() }),
        Some(Err(error)) => Err(Error::format(path, format!("{what}: {error}"))),
        None => Err(Error::format(path, format!("{what} was not read"))),
    }
}

/// The 2.5-D image of `before`, `itself` and `after` (of `path`): the red of the first, the
/// green of the second, the blue of the third; `unequal` says why where their sizes differ.
fn stacked(path: &Path, [before, itself, after]: [&Decoded; 3], unequal: &str) -> Result<Decoded> {
    if before.image.dimensions() != itself.image.dimensions() || after.image.dimensions() != itself.image.dimensions() {
        return Err(Error::format(path, format!("{unequal}, so adjacent ones cannot be channels of one image")));
    }
    let mut image = itself.image.clone();
    for ((pixel, b), a) in image.pixels_mut().zip(before.image.pixels()).zip(after.image.pixels()) {
        *pixel = image::Rgb([b.0[0], pixel.0[1], a.0[2]]);
    }
    Ok(Decoded { image, faint: before.faint || itself.faint || after.faint })
}

/// Why a colour frame cannot be made 2.5-D, and the fix.
fn colour(path: &Path) -> Error {
    Error::format(
        path,
        "a colour image (or three windows or volumes, one a channel): --adjacent-slices makes the three channels of three gray \
         frames; read it without --adjacent-slices, or with one window and one volume",
    )
}

/// Whether every pixel of `image` is gray (its channels equal).
fn is_gray(image: &RgbImage) -> bool {
    image.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2])
}
