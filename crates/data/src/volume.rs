//! NIfTI-1 volumes (`.nii`, `.nii.gz`: radiology research's MR and CT as dcm2niix, FSL, SPM and
//! nibabel write them) to RGB8 slices: each slice along the third stored axis is a frame, chosen
//! as a DICOM file's are (`--slice`, rank's and predict's `--dicom-frame` by another name:
//! `first|middle|last|N`, or `all`/`every:K` for each an image).
//!
//! nifti-rs reads the header and streams the slices (gzip or not, told by the gzip magic bytes,
//! not the name); here, the file's checks and the slices chosen, and in `display.rs` what they
//! show. A slice is shown as `np.rot90(img.get_fdata()[:, :, k])` shows it (the first axis
//! across, the second up), as stored by default: for the axial volumes CT and most MR conversions
//! store, the patient's front at the top. `--reorient canonical` reads the volume as nibabel's
//! `as_closest_canonical` gives it (`orientation.rs`: RAS+ by the header's affine), every
//! volume's slices axial whatever plane it was acquired in. Values are the stored ones times
//! `scl_slope` plus `scl_inter` (unscaled where the slope is 0, as the standard says, or not a
//! number, as nibabel reads it); they go through the user's `--window` where given, else the
//! header's `cal_min`..`cal_max` where it sets that range (the display range FSLeyes and Mango
//! open with), else are min-max scaled over the whole volume, so that one slice's noise is not
//! stretched to full contrast and a volume's slices stay comparable (a DICOM image without a
//! window is min-max scaled too); NaN voxels are black. RGB24 and RGBA32 volumes (alpha dropped)
//! are colour as stored.
//!
//! Of a 4-D file of several volumes (the Medical Segmentation Decathlon's brain tumour and
//! prostate files: one volume a modality; diffusion's b-values, a time series), the volume
//! `--volume N` names is read, as `img.get_fdata()[..., N - 1]`; or three (`--volume A+B+C`),
//! each the red, green or blue channel as alone it is gray (BraTS entries fed three MR sequences
//! to ImageNet backbones so); without it such a file is refused. A 5-D file, a NIfTI-2 file, a
//! header/image pair and complex data are refused with the conversion that makes them readable.
//! `plane.rs`: [`slice_plane`], the anatomical plane of the slices (rank warns where a folder's
//! volumes differ).

use std::io::{BufReader, Cursor, Read};
use std::path::Path;

use flate2::read::GzDecoder;
use image::RgbImage;
use nifti::{NiftiHeader, NiftiType};

use crate::dicom::{DicomFrame, Window};
use crate::error::{Error, Result};
use crate::limits::check_pixels;
pub(crate) use display::forget_held_volumes;
use display::{FileIdentity, Scale, display_range, read_slices, remember_range, remembered_range};
use orientation::Axes;
pub use orientation::Orientation;
pub use plane::{SlicePlane, slice_plane};

mod display;
mod orientation;
mod plane;

/// A NIfTI-1 header's size, and the least offset of a single file's voxels (the header and the
/// four bytes that say whether extensions follow).
const HEADER_BYTES: usize = 348;
const LEAST_VOXEL_OFFSET: u64 = 352;
/// NIfTI-2's header size, its first field as NIfTI-1's is.
const NIFTI2_HEADER_BYTES: i32 = 540;

/// Whether `path` names a NIfTI-1 file: `.nii` or `.nii.gz` (any case).
pub fn is_nifti(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|name| {
        let name = name.to_ascii_lowercase();
        name.ends_with(".nii") || name.ends_with(".nii.gz")
    })
}

/// The shape of a volume as medxfer reads it: slices of `width` x `height` voxels.
#[derive(Debug, Clone, Copy)]
struct Shape {
    width: u16,
    height: u16,
    slices: u32,
    datatype: NiftiType,
}

/// How a NIfTI file is read: which of a 4-D file's volumes, along which axes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeReading {
    /// The axes the volume is read along.
    pub orientation: Orientation,
    /// Of a 4-D file, the volume or volumes read (`--volume`); a 3-D file is its only volume 1.
    /// None: a 4-D file of several is refused.
    pub volume: Option<Volumes>,
}

/// Which of a 4-D NIfTI file's volumes are read, counted from 1: one (`--volume 2`), or three
/// joined by `+` (`--volume 1+3+4`), the red, green and blue channels each one's gray image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Volumes {
    /// One volume, its gray image.
    One(u32),
    /// Three volumes: the red, the green and the blue channel.
    Channels([u32; 3]),
}

impl Volumes {
    /// Each volume read, in channel order.
    fn each(self) -> Vec<u32> {
        match self {
            Volumes::One(volume) => vec![volume],
            Volumes::Channels(volumes) => volumes.to_vec(),
        }
    }
}

impl std::str::FromStr for Volumes {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let volumes: Vec<u32> = text
            .split('+')
            .map(|part| match part.trim().parse::<u32>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(format!("'{text}': a volume is a whole number from 1 (the first volume is 1)")),
            })
            .collect::<std::result::Result<_, _>>()?;
        match volumes[..] {
            [one] => Ok(Volumes::One(one)),
            [red, green, blue] => Ok(Volumes::Channels([red, green, blue])),
            _ => Err(format!(
                "'{text}': {} volumes; give one (N), or three joined by + for the red, green and blue channels (1+3+4)",
                volumes.len()
            )),
        }
    }
}

crate::as_text::serde_as_text!(Volumes);

impl std::fmt::Display for Volumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Volumes::One(volume) => write!(f, "{volume}"),
            Volumes::Channels([red, green, blue]) => write!(f, "{red}+{green}+{blue}"),
        }
    }
}

impl From<Orientation> for VolumeReading {
    fn from(orientation: Orientation) -> Self {
        VolumeReading { orientation, volume: None }
    }
}

/// A NIfTI file's content (gunzipped where it is gzip) and what the file takes on disk.
struct Stored {
    content: Box<dyn Read>,
    bytes: u64,
    gzip: bool,
    /// The file's path, size and modification time, where it was opened from disk: what its
    /// volume range is remembered by.
    identity: Option<FileIdentity>,
}

/// deflate's largest ratio (a run of one byte): a gzip file holds at least 1/1032 of its data.
const DEFLATE_MAX_RATIO: u64 = 1032;

/// How many slices the NIfTI file at `path` holds as `reading` reads it, from its header alone.
pub(crate) fn slice_count(path: &Path, reading: VolumeReading) -> Result<u32> {
    let mut stored = open(path)?;
    let header = read_header(path, &mut stored.content)?;
    let mut slices = 0;
    // Each volume asked checked: the volumes of a file share their shape.
    for volume in reading.volume.map_or_else(|| vec![None], |volumes| volumes.each().into_iter().map(Some).collect()) {
        let (shape, _) = shape(path, &header, &stored, volume)?;
        slices = read_shape(path, &header, shape, reading.orientation)?.1.slices;
    }
    Ok(slices)
}

/// The NIfTI file at `path` (its bytes already read where `bytes` holds them), one image for each
/// of `frames` among its slices as `reading` reads it, a grayscale one through `window` where
/// given (in place of the display range or the volume's min-max): the outer error is the file's,
/// the inner ones each frame's.
pub(crate) fn slices_rgb8(
    path: &Path,
    bytes: Option<&[u8]>,
    frames: &[DicomFrame],
    (window, reading): (Option<Window>, VolumeReading),
) -> Result<Vec<Result<RgbImage>>> {
    let read = |volume, as_channel| volume_slices_rgb8(path, bytes, frames, (window, reading.orientation), (volume, as_channel));
    let volumes = match reading.volume {
        None => return read(None, false),
        Some(Volumes::One(volume)) => return read(Some(volume), false),
        Some(Volumes::Channels(volumes)) => volumes,
    };
    let [red, green, blue] = [read(Some(volumes[0]), true)?, read(Some(volumes[1]), true)?, read(Some(volumes[2]), true)?];
    Ok(red
        .into_iter()
        .zip(green)
        .zip(blue)
        .map(|((red, green), blue)| {
            let (mut image, green, blue) = (red?, green?, blue?);
            for ((pixel, g), b) in image.pixels_mut().zip(green.pixels()).zip(blue.pixels()) {
                pixel.0[1] = g.0[1];
                pixel.0[2] = b.0[2];
            }
            Ok(image)
        })
        .collect())
}

/// [`slices_rgb8`] of one volume (of a 4-D file, the `volume`-th, from 1), refused where it is
/// colour and read `as_channel` (one of three volumes a channel).
fn volume_slices_rgb8(
    path: &Path,
    bytes: Option<&[u8]>,
    frames: &[DicomFrame],
    (window, orientation): (Option<Window>, Orientation),
    (volume, as_channel): (Option<u32>, bool),
) -> Result<Vec<Result<RgbImage>>> {
    let mut stored = match bytes {
        Some(bytes) => stored(Cursor::new(bytes.to_vec()), bytes.len() as u64).map_err(|e| Error::io(path, e))?,
        None => open(path)?,
    };
    let mut header = read_header(path, &mut stored.content)?;
    // nibabel reads a slope that is not a number as none, as the standard reads 0.
    if !header.scl_slope.is_finite() {
        header.scl_slope = 0.0;
    }
    if header.scl_slope != 0.0 && !header.scl_inter.is_finite() {
        return Err(Error::format(
            path,
            format!("the NIfTI header's scl_slope is {} but its scl_inter is not a number; correct the header", header.scl_slope),
        ));
    }
    let (shape, volume) = shape(path, &header, &stored, volume)?;
    if as_channel && matches!(shape.datatype, NiftiType::Rgb24 | NiftiType::Rgba32) {
        return Err(Error::format(
            path,
            "an RGB NIfTI volume cannot be one channel of three (--volume A+B+C reads gray volumes): read one volume (--volume N)",
        ));
    }
    let (axes, read) = read_shape(path, &header, shape, orientation)?;
    // Read as a 3-D volume of 2-D slices: a 2-D image one slice, a 4-D file's volume its first
    // three dimensions (nifti-rs streams slices of a lower rank than the volume's only), the
    // volumes before it skipped.
    header.dim[0] = 3;
    header.dim[3] = u16::try_from(shape.slices).unwrap_or(1);
    let indices: Vec<std::result::Result<u32, String>> = frames.iter().map(|&frame| slice_index(frame, read.slices)).collect();
    let wanted: Vec<u32> = indices.iter().filter_map(|index| index.as_ref().ok().copied()).collect();
    if wanted.is_empty() {
        return Ok(indices.into_iter().map(|index| Err(Error::format(path, index.err().unwrap_or_default()))).collect());
    }
    skip_to_voxels(path, &header, &mut stored.content)?;
    skip_volumes(path, shape, volume, &mut stored.content)?;
    // Each volume of a file its own range and held voxels.
    stored.identity = stored.identity.map(|(file, bytes, modified, _)| (file, bytes, modified, volume));
    let scale = match (window, display_range(&header), stored.identity.as_ref().and_then(remembered_range)) {
        (Some(window), _, _) => Scale::Window(window),
        (None, Some((low, high)), _) | (None, None, Some((low, high))) => Scale::Range(low, high),
        (None, None, None) => Scale::VolumeRange,
    };
    let identity = stored.identity.clone();
    let (slices, range) = read_slices(path, &header, (shape, axes), stored, (&wanted, scale))?;
    if let (Some(range), Some(identity)) = (range, identity) {
        remember_range(identity, range);
    }
    let mut slices = slices.into_iter();
    // `wanted` are the chosen indices in order, so each chosen frame takes the next slice read.
    Ok(indices.into_iter().map(|index| index.map_err(|why| Error::format(path, why)).map(|_| slices.next().unwrap_or_default())).collect())
}

/// The 0-based slice `frame` chooses among `slices`, or why there is none.
fn slice_index(frame: DicomFrame, slices: u32) -> std::result::Result<u32, String> {
    match frame {
        DicomFrame::Only if slices > 1 => Err(format!(
            "the NIfTI volume holds {slices} slices; medxfer classifies one 2-D image per file: choose the slice (rank and predict: \
             --slice first|middle|last|N, or all or every:K for each slice, or every K-th, an image of its own)"
        )),
        DicomFrame::Number(n) if n > slices => {
            Err(format!("the NIfTI volume holds {slices} slice(s), so it has no slice {n} (--slice counts from 1)"))
        }
        frame => frame.index(slices),
    }
}

/// The file at `path`.
fn open(path: &Path) -> Result<Stored> {
    let io = |e| Error::io(path, e);
    let file = std::fs::File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    let mut stored = stored(BufReader::new(file), metadata.len()).map_err(io)?;
    stored.identity = Some((path.to_path_buf(), metadata.len(), metadata.modified().ok(), 0));
    Ok(stored)
}

/// `source` of `bytes` on disk, through a gzip decoder where its first bytes are gzip's magic.
fn stored<R: std::io::BufRead + 'static>(mut source: R, bytes: u64) -> std::io::Result<Stored> {
    let gzip = source.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let content: Box<dyn Read> = if gzip { Box::new(BufReader::new(GzDecoder::new(source))) } else { Box::new(source) };
    Ok(Stored { content, bytes, gzip, identity: None })
}

/// The NIfTI-1 header at the start of `source`, read past.
fn read_header(path: &Path, source: &mut Box<dyn Read>) -> Result<NiftiHeader> {
    let mut bytes = vec![0; HEADER_BYTES];
    source.read_exact(&mut bytes).map_err(|e| {
        Error::format(path, format!("cannot read the NIfTI header ({e}): the file is shorter than one, or its gzip data is damaged"))
    })?;
    let first = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if i32::from_le_bytes(first) == NIFTI2_HEADER_BYTES || i32::from_be_bytes(first) == NIFTI2_HEADER_BYTES {
        return Err(Error::format(
            path,
            "a NIfTI-2 file; medxfer reads NIfTI-1: save it as NIfTI-1 (nibabel: nib.save(nib.Nifti1Image(img.dataobj, img.affine), 'out.nii.gz'))",
        ));
    }
    let header = NiftiHeader::from_reader(bytes.as_slice()).map_err(|e| {
        Error::format(path, format!("not a NIfTI-1 file ({e}): its header lacks the n+1 magic or is damaged; convert or export it again"))
    })?;
    if &header.magic == nifti::header::MAGIC_CODE_NI1 {
        return Err(Error::format(
            path,
            "the header of a NIfTI .hdr/.img pair; medxfer reads single-file NIfTI: convert it (fslchfiletype NIFTI_GZ, or nibabel)",
        ));
    }
    Ok(header)
}

/// The volume's slices and their type, and the 0-based index of the volume `volume` chooses (of
/// a 4-D file; a 3-D file's is 0), or why medxfer cannot read them: among others, more voxels
/// than the `stored` file can hold (a damaged header, refused before its slices are allocated).
fn shape(path: &Path, header: &NiftiHeader, stored: &Stored, volume: Option<u32>) -> Result<(Shape, u32)> {
    let dims = header.dim().map_err(|e| Error::format(path, format!("the NIfTI header's dimensions are invalid ({e})")))?;
    let (width, height, rest) = match dims {
        [width, height, rest @ ..] => (*width, *height, rest),
        _ => return Err(Error::format(path, "a 1-D NIfTI file (a signal, not an image)")),
    };
    if let [_, _, beyond @ ..] = rest
        && beyond.iter().any(|&d| d > 1)
    {
        return Err(Error::format(
            path,
            format!(
                "a {}-D NIfTI file ({dims:?}); medxfer reads a 3-D volume, or one of a 4-D file's (--volume): save the volumes you \
                 want as a 4-D or 3-D file (nibabel: nib.Nifti1Image(data.reshape(...), img.affine))",
                dims.len()
            ),
        ));
    }
    let volumes = rest.get(1).map_or(1, |&d| u32::from(d.max(1)));
    let volume = match volume {
        None if volumes > 1 => {
            return Err(Error::format(
                path,
                format!(
                    "a 4-D NIfTI file of {volumes} volumes (modalities, b-values or time points); choose the one to read with \
                     --volume N (1 to {volumes}), or split it (fslsplit, or nibabel's four_to_three)"
                ),
            ));
        }
        None => 0,
        Some(n) if n == 0 || n > volumes => {
            return Err(Error::format(
                path,
                format!("the NIfTI file holds {volumes} volume(s), so it has no volume {n} (--volume counts from 1)"),
            ));
        }
        Some(n) => n - 1,
    };
    check_pixels(path, u32::from(width), u32::from(height))?;
    let datatype = header.data_type().map_err(|e| Error::format(path, format!("the NIfTI header's datatype is unknown ({e})")))?;
    if matches!(datatype, NiftiType::Complex64 | NiftiType::Complex128 | NiftiType::Complex256 | NiftiType::Float128) {
        return Err(Error::format(
            path,
            format!("the NIfTI voxels are {datatype:?}; medxfer reads integer, float32/64 and RGB volumes: save the magnitude as float32"),
        ));
    }
    let shape = Shape { width, height, slices: rest.first().map_or(1, |&d| u32::from(d)), datatype };
    let needed = voxel_offset(header) + u64::from(volumes) * u64::from(shape.slices) * shape.slice_bytes() as u64;
    let holds = if stored.gzip { stored.bytes.saturating_mul(DEFLATE_MAX_RATIO) } else { stored.bytes };
    if needed > holds {
        let file = if stored.gzip { "gzip file, even at deflate's largest ratio," } else { "file" };
        let of_volumes = if volumes > 1 { format!(" x {volumes}") } else { String::new() };
        return Err(Error::format(
            path,
            format!(
                "the NIfTI header states {width} x {height} x {}{of_volumes} voxels of {datatype:?} ({needed} bytes with the header), \
                 more than its {} byte {file} holds: the file is truncated or its header damaged; copy or export it again",
                shape.slices, stored.bytes
            ),
        ));
    }
    Ok((shape, volume))
}

/// The axes `orientation` reads the volume of `header` and `shape` (as stored) in, and its shape as
/// read (its slices' size checked anew: a reoriented slice is another).
fn read_shape(path: &Path, header: &NiftiHeader, shape: Shape, orientation: Orientation) -> Result<(Axes, Shape)> {
    let axes = Axes::read(header, orientation).map_err(|why| Error::format(path, why))?;
    let [width, height, slices] = axes.sizes([usize::from(shape.width), usize::from(shape.height), shape.slices as usize]);
    // Each size is one of the stored ones, which the header holds as 16-bit numbers.
    let read = Shape { width: width as u16, height: height as u16, slices: slices as u32, ..shape };
    check_pixels(path, u32::from(read.width), u32::from(read.height))?;
    Ok((axes, read))
}

impl Shape {
    /// A slice's bytes as stored.
    fn slice_bytes(self) -> usize {
        usize::from(self.width) * usize::from(self.height) * self.datatype.size_of()
    }
}

/// Where the voxels start: the header's offset, read below 352 as 352 as nibabel reads it (a
/// writer's slip in a single file).
fn voxel_offset(header: &NiftiHeader) -> u64 {
    if header.vox_offset.is_finite() { (header.vox_offset as u64).max(LEAST_VOXEL_OFFSET) } else { LEAST_VOXEL_OFFSET }
}

/// Reads `source` (just past the header) up to the header's voxel offset: past the extensions.
fn skip_to_voxels(path: &Path, header: &NiftiHeader, source: &mut Box<dyn Read>) -> Result<()> {
    let offset = voxel_offset(header);
    let skip = offset - HEADER_BYTES as u64;
    let skipped = std::io::copy(&mut source.take(skip), &mut std::io::sink()).map_err(|e| Error::io(path, e))?;
    if skipped < skip {
        return Err(Error::format(path, format!("the NIfTI file ends before its voxels (at byte {offset}): truncated; copy it again")));
    }
    Ok(())
}

/// Reads `source` (at the voxels) past the `volume` volumes of `shape` before the one read.
fn skip_volumes(path: &Path, shape: Shape, volume: u32, source: &mut Box<dyn Read>) -> Result<()> {
    let skip = u64::from(volume) * u64::from(shape.slices) * shape.slice_bytes() as u64;
    let skipped = std::io::copy(&mut source.take(skip), &mut std::io::sink())
        .map_err(|e| Error::format(path, format!("the NIfTI file's gzip data is damaged or truncated ({e}); copy it again")))?;
    if skipped < skip {
        return Err(Error::format(path, format!("the NIfTI file ends before its volume {} (truncated); copy it again", volume + 1)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nifti_files_are_told_by_their_names() {
        for name in ["brain.nii", "ct.NII.GZ", "a.b.nii.gz"] {
            assert!(is_nifti(Path::new(name)), "{name}");
        }
        for name in ["brain.nii.zip", "nii", "scan.gz", "scan.dcm", "x.niix"] {
            assert!(!is_nifti(Path::new(name)), "{name}");
        }
    }

    #[test]
    fn slices_are_chosen_as_frames_are() {
        assert_eq!(slice_index(DicomFrame::Only, 1), Ok(0));
        assert_eq!(slice_index(DicomFrame::Middle, 5), Ok(2));
        assert_eq!(slice_index(DicomFrame::Last, 5), Ok(4));
        assert_eq!(slice_index(DicomFrame::Number(5), 5), Ok(4));
        let error = slice_index(DicomFrame::Only, 5).unwrap_err();
        assert!(error.contains("5 slices") && error.contains("--slice first|middle"), "{error}");
        let error = slice_index(DicomFrame::Number(6), 5).unwrap_err();
        assert!(error.contains("no slice 6"), "{error}");
    }
}
