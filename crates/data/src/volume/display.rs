//! A volume's voxels to 8-bit slices: scaled values through the user's window, the header's
//! display range or the volume's min-max (remembered once read), the first axis across and the
//! second up; colour as stored.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use image::RgbImage;
use nifti::{DataElement, Endianness, InMemNiftiVolume, NiftiHeader, NiftiType, StreamedNiftiVolume};

use super::Shape;
use crate::dicom::Window;
use crate::error::{Error, Result};

/// A volume's least and largest finite value.
pub(super) type ValueRange = (f64, f64);

/// A file on disk as [`VOLUME_RANGES`] knows it: a changed file (another size or time) is another.
pub(super) type FileIdentity = (std::path::PathBuf, u64, Option<std::time::SystemTime>);

/// Each volume's min-max range, once a read went through the whole volume for it: the image
/// cache reads a volume's slices (`--slice all`) in runs of `FRAMES_PER_READ`, and each run would
/// otherwise convert every slice again (15 ms a slice of a 512 x 512 x 200 volume, not 3 ms).
/// Forgotten at [`REMEMBERED_RANGES`] volumes.
static VOLUME_RANGES: std::sync::Mutex<BTreeMap<FileIdentity, ValueRange>> = std::sync::Mutex::new(BTreeMap::new());

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

/// The slices `wanted` (0-based, in any order) as RGB8, grayscale ones by `scale`, read in one
/// pass over the voxels: to the last one wanted, or, for the volume's range, to its end (the range
/// then returned too).
pub(super) fn read_slices(
    path: &Path,
    header: &NiftiHeader,
    shape: Shape,
    mut source: Box<dyn Read>,
    (wanted, scale): (&[u32], Scale),
) -> Result<(Vec<RgbImage>, Option<ValueRange>)> {
    let colour = matches!(shape.datatype, NiftiType::Rgb24 | NiftiType::Rgba32);
    let whole = !colour && matches!(scale, Scale::VolumeRange);
    let last_wanted = wanted.iter().copied().max().unwrap_or_default();
    let read_to = if whole { shape.slices } else { last_wanted + 1 };
    let mut volume = StreamedNiftiVolume::from_reader_rank(&mut source, header, 2)
        .map_err(|e| Error::format(path, format!("cannot read the NIfTI voxels ({e})")))?;
    let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
    // Each wanted slice's image (colour) or values (grayscale: an image once the range is known).
    let mut images: Vec<Option<RgbImage>> = vec![None; wanted.len()];
    let mut values_of: Vec<Vec<f64>> = vec![Vec::new(); wanted.len()];
    for index in 0..read_to {
        let slice = volume.read_slice().map_err(|e| {
            Error::format(
                path,
                format!("the NIfTI voxels end before slice {} of {} ({e}): the file is truncated; copy it again", index + 1, shape.slices),
            )
        })?;
        let places: Vec<usize> = (0..wanted.len()).filter(|&at| wanted[at] == index).collect();
        if colour {
            if !places.is_empty() {
                let image = colour_slice(path, shape, slice)?;
                places.iter().for_each(|&at| images[at] = Some(image.clone()));
            }
            continue;
        }
        if places.is_empty() && !whole {
            continue;
        }
        let values = gray_values(path, header, shape.datatype, slice.into_raw_data())?;
        if whole {
            (low, high) = finite_range(&values, (low, high));
        }
        places.iter().for_each(|&at| values_of[at].clone_from(&values));
    }
    if read_to == shape.slices {
        // The rest, read for gzip's check of its data (a file cut in its trailer, or damaged
        // where the inflater does not notice, fails it).
        std::io::copy(&mut source, &mut std::io::sink())
            .map_err(|e| Error::format(path, format!("the NIfTI file's gzip data is damaged or truncated ({e}); copy it again")))?;
    }
    let found = whole.then_some((low, high));
    // The range that maps to black..white: the one known, or the one just found.
    let (low, high) = if let Scale::Range(low, high) = scale { (low, high) } else { (low, high) };
    let unit = |v: f64| match scale {
        Scale::Window(window) => window.unit(v),
        _ if high > low => (v - low) / (high - low),
        _ => 0.0,
    };
    let images =
        images.into_iter().zip(&values_of).map(|(image, values)| image.unwrap_or_else(|| gray_rgb8(shape, values, unit))).collect();
    Ok((images, found))
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
/// through `unit` to black..white (0..1; half up, as a viewer's lookup table rounds), NaN black.
fn gray_rgb8(shape: Shape, values: &[f64], unit: impl Fn(f64) -> f64) -> RgbImage {
    let (width, height) = (u32::from(shape.width), u32::from(shape.height));
    RgbImage::from_fn(width, height, |column, row| {
        let v = values.get(((height - 1 - row) * width + column) as usize).copied().unwrap_or(f64::NAN);
        let unit = if v.is_finite() { unit(v).clamp(0.0, 1.0) } else { 0.0 };
        image::Rgb([(unit * 255.0 + 0.5).floor() as u8; 3])
    })
}

/// An RGB24 or RGBA32 slice (alpha dropped) to the image, oriented as [`gray_rgb8`] orients.
fn colour_slice(path: &Path, shape: Shape, slice: InMemNiftiVolume) -> Result<RgbImage> {
    let samples = if shape.datatype == NiftiType::Rgba32 { 4 } else { 3 };
    let (width, height) = (u32::from(shape.width), u32::from(shape.height));
    let raw = slice.into_raw_data();
    if raw.len() < (width * height) as usize * samples {
        return Err(Error::format(path, "the NIfTI colour voxels do not fill a slice"));
    }
    Ok(RgbImage::from_fn(width, height, |column, row| {
        let at = ((height - 1 - row) * width + column) as usize * samples;
        image::Rgb([raw[at], raw[at + 1], raw[at + 2]])
    }))
}
