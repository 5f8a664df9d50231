//! A volume's voxels to 8-bit slices: scaled values through the user's window, the header's
//! display range or the volume's min-max (remembered once read), the first axis across and the
//! second up; colour as stored.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use image::RgbImage;
use nifti::{DataElement, Endianness, NiftiHeader, NiftiType, StreamedNiftiVolume};

use super::orientation::Axes;
use super::{Shape, Stored};
use crate::dicom::Window;
use crate::error::{Error, Result};

/// A volume's least and largest finite value.
pub(super) type ValueRange = (f64, f64);

/// A volume on disk as [`VOLUME_RANGES`] knows it: a changed file (another size or time) is
/// another; the last the volume's 0-based index in its file (a 4-D file's several).
pub(super) type FileIdentity = (std::path::PathBuf, u64, Option<std::time::SystemTime>, u32);

/// Each volume's min-max range, once a read went through the whole volume for it: the image
/// cache reads a volume's slices (`--slice all`) in runs of `FRAMES_PER_READ`, and each run would
/// otherwise convert every slice again (15 ms a slice of a 512 x 512 x 200 volume, not 3 ms).
/// Forgotten at [`REMEMBERED_RANGES`] volumes.
static VOLUME_RANGES: Mutex<BTreeMap<FileIdentity, ValueRange>> = Mutex::new(BTreeMap::new());

const REMEMBERED_RANGES: usize = 100_000;

/// The volume range remembered for the file `identity`, where a read went through it whole.
pub(super) fn remembered_range(identity: &FileIdentity) -> Option<ValueRange> {
    VOLUME_RANGES.lock().ok().and_then(|ranges| ranges.get(identity).copied())
}

/// Remembers `range` as the volume range of the file `identity`.
pub(super) fn remember_range(identity: FileIdentity, range: ValueRange) {
    if let Ok(mut ranges) = VOLUME_RANGES.lock() {
        if ranges.len() >= REMEMBERED_RANGES {
            ranges.clear();
        }
        ranges.insert(identity, range);
    }
}

/// How a grayscale volume's values become 0..1.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scale {
    /// The user's window.
    Window(Window),
    /// A known range: the header's display range, or the volume's min-max read before.
    Range(f64, f64),
    /// The volume's min-max, to be found by reading it whole.
    VolumeRange,
}

/// The header's display range, cal_min..cal_max, where it sets one.
pub(super) fn display_range(header: &NiftiHeader) -> Option<(f64, f64)> {
    (header.cal_min.is_finite() && header.cal_max.is_finite() && header.cal_max > header.cal_min)
        .then(|| (f64::from(header.cal_min), f64::from(header.cal_max)))
}

/// The slices `wanted` (0-based among the slices as `axes` read the volume, in any order) as
/// RGB8, grayscale ones by `scale`, read in one pass over the voxels: to the last stored slice
/// wanted, or, for the volume's range, to its end (the range then returned too). Where a slice as
/// read crosses the stored ones (a volume reoriented to another plane), the whole volume is held,
/// and kept for the next runs of its slices ([`held_volume`]).
pub(super) fn read_slices(
    path: &Path,
    header: &NiftiHeader,
    (shape, axes): (Shape, Axes),
    stored: Stored,
    (wanted, scale): (&[u32], Scale),
) -> Result<(Vec<RgbImage>, Option<ValueRange>)> {
    let colour = matches!(shape.datatype, NiftiType::Rgb24 | NiftiType::Rgba32);
    let whole = !colour && matches!(scale, Scale::VolumeRange);
    let needed: Option<Vec<u32>> = wanted.iter().map(|&index| axes.stored_slice(index, shape.slices)).collect();
    let (volume, found) = match (&needed, &stored.identity) {
        (Some(needed), _) => {
            let read_to = if whole { shape.slices } else { needed.iter().copied().max().map_or(0, |last| last + 1) };
            let volume = read_stored(path, header, shape, stored.content, (read_to, |index| needed.contains(&index), whole))?;
            let found = volume.range;
            (Arc::new(volume), found)
        }
        (None, Some(identity)) => {
            let volume =
                held_volume(identity.clone(), || read_stored(path, header, shape, stored.content, (shape.slices, |_| true, whole)))?;
            // Read by a run before this one's scale was chosen: the range, where it lacks it.
            let found = match volume.range {
                None if whole => Some(volume.slices.iter().try_fold((f64::INFINITY, f64::NEG_INFINITY), |range, raw| {
                    Ok::<_, Error>(finite_range(&gray_values(path, header, shape.datatype, raw.clone())?, range))
                })?),
                range => range.filter(|_| whole),
            };
            (volume, found)
        }
        (None, None) => {
            let volume = read_stored(path, header, shape, stored.content, (shape.slices, |_| true, whole))?;
            let found = volume.range;
            (Arc::new(volume), found)
        }
    };
    let held = &volume.slices;
    // The range that maps to black..white: the one known, or the one just found.
    let (low, high) = match (scale, found) {
        (Scale::Range(low, high), _) | (_, Some((low, high))) => (low, high),
        _ => (f64::INFINITY, f64::NEG_INFINITY),
    };
    // A gray window's one LINEAR value a voxel, not three alike.
    let gray_window = matches!(scale, Scale::Window(window) if window.is_gray());
    let unit = |v: f64| match scale {
        Scale::Window(window) if gray_window => [window.unit(v); 3],
        Scale::Window(window) => window.units(v),
        _ if high > low => [(v - low) / (high - low); 3],
        _ => [0.0; 3],
    };
    let stored_sizes = [usize::from(shape.width), usize::from(shape.height), shape.slices as usize];
    let [width, height, _] = axes.sizes(stored_sizes);
    let read_shape = Shape { width: width as u16, height: height as u16, ..shape };
    let mut images = Vec::with_capacity(wanted.len());
    for &index in wanted {
        let raw = match axes.stored_slice(index, shape.slices) {
            Some(stored) if axes == Axes::STORED => held.get(stored as usize).cloned().unwrap_or_default(),
            _ => slice_as_read(held, axes, (stored_sizes, shape.datatype.size_of()), index as usize),
        };
        images.push(if colour {
            colour_slice(path, read_shape, &raw)?
        } else {
            gray_rgb8(read_shape, &gray_values(path, header, shape.datatype, raw)?, unit)
        });
    }
    Ok((images, found))
}

/// The stored slices of `source` (just past the header's extensions) up to `read_to`, those
/// `keep` keeps; with the least and largest finite value of them all where `whole`. Read to the
/// end, the rest of a gzip stream is read for its check.
fn read_stored(
    path: &Path,
    header: &NiftiHeader,
    shape: Shape,
    mut source: Box<dyn Read>,
    (read_to, keep, whole): (u32, impl Fn(u32) -> bool, bool),
) -> Result<HeldVolume> {
    let mut volume = StreamedNiftiVolume::from_reader_rank(&mut source, header, 2)
        .map_err(|e| Error::format(path, format!("cannot read the NIfTI voxels ({e})")))?;
    let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(read_to as usize);
    for index in 0..read_to {
        let slice = volume.read_slice().map_err(|e| {
            Error::format(
                path,
                format!("the NIfTI voxels end before slice {} of {} ({e}): the file is truncated; copy it again", index + 1, shape.slices),
            )
        })?;
        let mut raw = slice.into_raw_data();
        let kept = keep(index);
        if whole {
            let values = if kept { raw.clone() } else { std::mem::take(&mut raw) };
            (low, high) = finite_range(&gray_values(path, header, shape.datatype, values)?, (low, high));
        }
        held.push(if kept { raw } else { Vec::new() });
    }
    if read_to == shape.slices {
        // The rest, read for gzip's check of its data (a file cut in its trailer, or damaged
        // where the inflater does not notice, fails it).
        std::io::copy(&mut source, &mut std::io::sink())
            .map_err(|e| Error::format(path, format!("the NIfTI file's gzip data is damaged or truncated ({e}); copy it again")))?;
    }
    Ok(HeldVolume { slices: held, range: whole.then_some((low, high)) })
}

/// A volume's stored slices as stored (those not read empty), and its range where the read found
/// it.
struct HeldVolume {
    slices: Vec<Vec<u8>>,
    range: Option<ValueRange>,
}

/// The volumes read whole for slices that cross their stored ones, the latest last, each behind
/// a lock of its own: the image cache reads a volume's slices in runs of `FRAMES_PER_READ` on
/// several threads at once, and each run would otherwise read (and inflate) the whole file again,
/// 32 times for 512 slices. At most one per thread and one more are kept.
#[allow(clippy::type_complexity)]
static HELD_VOLUMES: Mutex<VecDeque<(FileIdentity, Arc<Mutex<Option<Arc<HeldVolume>>>>)>> = Mutex::new(VecDeque::new());

/// The volume of the file `identity`, as kept, else as `read` reads it (then kept). Runs that ask
/// for it while it is being read wait for that read rather than read it again.
fn held_volume(identity: FileIdentity, read: impl FnOnce() -> Result<HeldVolume>) -> Result<Arc<HeldVolume>> {
    let slot = {
        let mut kept = HELD_VOLUMES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match kept.iter().find(|(kept, _)| *kept == identity) {
            Some((_, slot)) => slot.clone(),
            None => {
                if kept.len() > rayon::current_num_threads() {
                    kept.pop_front();
                }
                let slot = Arc::new(Mutex::new(None));
                kept.push_back((identity, slot.clone()));
                slot
            }
        }
    };
    let mut volume = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(volume) = volume.as_ref() {
        return Ok(volume.clone());
    }
    // A failed read keeps nothing: the next run tries again and names its own error.
    let read = Arc::new(read()?);
    *volume = Some(read.clone());
    Ok(read)
}

/// Lets go of the volumes [`held_volume`] kept (the reads that hold one keep it until done).
pub(crate) fn forget_held_volumes() {
    HELD_VOLUMES.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
}

/// Slice `index` as `axes` read the volume, its voxels' bytes gathered from the `held` stored
/// slices of a volume of `stored` sizes and voxels of `voxel_bytes` each.
fn slice_as_read(held: &[Vec<u8>], axes: Axes, (stored, voxel_bytes): ([usize; 3], usize), index: usize) -> Vec<u8> {
    let [width, height, _] = axes.sizes(stored);
    let mut raw = Vec::with_capacity(width * height * voxel_bytes);
    // In storage order, as a stored slice's bytes are: the first axis as read fastest.
    for second in 0..height {
        for first in 0..width {
            let [x, y, slice] = axes.stored_voxel(stored, [first, second, index]);
            let at = (y * stored[0] + x) * voxel_bytes;
            let voxel = held.get(slice).and_then(|bytes| bytes.get(at..at + voxel_bytes));
            raw.extend_from_slice(voxel.unwrap_or(&[0; 16][..voxel_bytes.min(16)]));
        }
    }
    raw
}

/// A grayscale slice's values in storage order (the first axis fastest), scaled by `header`'s
/// slope and intercept as nifti-rs's `get_f64` scales a voxel (a slope of 0 leaves them). The
/// slice's bytes are converted whole (nifti-rs's `from_raw_vec`): a voxel at a time through
/// `get_f64`, a CT volume's 52 million voxels took 0.58 s a pass.
fn gray_values(path: &Path, header: &NiftiHeader, datatype: NiftiType, raw: Vec<u8>) -> Result<Vec<f64>> {
    fn typed<T: DataElement>(raw: Vec<u8>, endianness: Endianness, to_f64: impl Fn(T) -> f64) -> nifti::Result<Vec<f64>> {
        Ok(T::from_raw_vec(raw, endianness)?.into_iter().map(to_f64).collect())
    }
    let endianness = header.endianness;
    let values = match datatype {
        NiftiType::Uint8 => typed(raw, endianness, |v: u8| f64::from(v)),
        NiftiType::Int8 => typed(raw, endianness, |v: i8| f64::from(v)),
        NiftiType::Uint16 => typed(raw, endianness, |v: u16| f64::from(v)),
        NiftiType::Int16 => typed(raw, endianness, |v: i16| f64::from(v)),
        NiftiType::Uint32 => typed(raw, endianness, |v: u32| f64::from(v)),
        NiftiType::Int32 => typed(raw, endianness, |v: i32| f64::from(v)),
        NiftiType::Uint64 => typed(raw, endianness, |v: u64| v as f64),
        NiftiType::Int64 => typed(raw, endianness, |v: i64| v as f64),
        NiftiType::Float32 => typed(raw, endianness, |v: f32| f64::from(v)),
        NiftiType::Float64 => typed(raw, endianness, |v: f64| v),
        other => return Err(Error::format(path, format!("the NIfTI voxels are {other:?}, not grayscale numbers"))),
    };
    let mut values = values.map_err(|e| Error::format(path, format!("cannot read the NIfTI voxels ({e})")))?;
    if header.scl_slope != 0.0 {
        let (slope, intercept) = (f64::from(header.scl_slope), f64::from(header.scl_inter));
        values.iter_mut().for_each(|v| *v = *v * slope + intercept);
    }
    Ok(values)
}

/// The least and the largest finite ones of `values` and `(low, high)`.
fn finite_range(values: &[f64], (mut low, mut high): (f64, f64)) -> (f64, f64) {
    // Comparisons, not f64::min/max, which treat NaN apart: these vectorise, and NaN fails both.
    for &v in values {
        if v.is_finite() {
            low = if v < low { v } else { low };
            high = if v > high { v } else { high };
        }
    }
    (low, high)
}

/// Scaled values in storage order to the image: the first axis across, the second up; each
/// through `unit` to black..white in each channel (0..1; half up, as a viewer's lookup table
/// rounds), NaN black.
fn gray_rgb8(shape: Shape, values: &[f64], unit: impl Fn(f64) -> [f64; 3]) -> RgbImage {
    let (width, height) = (u32::from(shape.width), u32::from(shape.height));
    RgbImage::from_fn(width, height, |column, row| {
        let v = values.get(((height - 1 - row) * width + column) as usize).copied().unwrap_or(f64::NAN);
        let units = if v.is_finite() { unit(v) } else { [0.0; 3] };
        image::Rgb(units.map(|unit| (unit.clamp(0.0, 1.0) * 255.0 + 0.5).floor() as u8))
    })
}

/// An RGB24 or RGBA32 slice (alpha dropped) to the image, oriented as [`gray_rgb8`] orients.
fn colour_slice(path: &Path, shape: Shape, raw: &[u8]) -> Result<RgbImage> {
    let samples = if shape.datatype == NiftiType::Rgba32 { 4 } else { 3 };
    let (width, height) = (u32::from(shape.width), u32::from(shape.height));
    if raw.len() < (width * height) as usize * samples {
        return Err(Error::format(path, "the NIfTI colour voxels do not fill a slice"));
    }
    Ok(RgbImage::from_fn(width, height, |column, row| {
        let at = ((height - 1 - row) * width + column) as usize * samples;
        image::Rgb([raw[at], raw[at + 1], raw[at + 2]])
    }))
}
