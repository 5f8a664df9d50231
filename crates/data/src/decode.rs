//! Any image of the study to RGB8, as the reference's `PIL.Image.open(p).convert("RGB")` does:
//! grayscale replicated, alpha dropped (not composited), 16-bit samples reduced to their high
//! byte (Pillow's unpacking of 48-bit TIFF; `image`'s own `to_rgb8` rounds v/257 instead), no
//! EXIF rotation. Cheng's int16 MRI slices are min-max scaled per image.
//!
//! 16-bit grayscale, which no dataset of the study holds, is reduced to its high byte too, as
//! 16-bit RGB is: Pillow 13's `convert("RGB")` clips such samples at 255 instead, which makes most
//! of an image white. A user's 12-bit radiographs exported as 16-bit PNG or TIFF keep only
//! 0..15 of 255 that way: [`Decoded::faint`] says so, and the image cache warns of them; the
//! user's `--window` ([`Rendering::window`]) reads their stored values instead. DICOM files
//! themselves carry their display (rescale, window) and go through it (`dicom.rs`).
//!
//! A damaged or hostile file is an error naming it, never a silently filled image or an
//! allocation the machine cannot make: a JPEG whose data ends before its end-of-image marker
//! (a partial download) is refused as Pillow refuses it ("image file is truncated"; `image`'s
//! decoder would fill the missing part), and no image over [`MAX_PIXELS`](crate::MAX_PIXELS) is
//! decoded.

use std::io::{Cursor, Read};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::dicom::{DICOM_HEAD, DicomFrame, Window, dicom_file_frames_rgb8, dicom_file_rgb8, dicom_rgb8, is_dicom, is_unnamed_dicom};
use crate::error::{Error, Result};
use crate::layouts::read_cheng;
use crate::limits::{MAX_DECODER_BYTES, check_pixels};
use crate::volume::{self, Orientation, VolumeReading, Volumes, is_nifti};

mod adjacent;

/// The revision of what decoding makes of a file. Raise it with any change that gives some file
/// other pixels (a DICOM display step, a colour conversion, a codec): image caches are keyed by it,
/// so those an earlier decoder made are rebuilt, not read (a radiograph cached as a negative before
/// its Presentation LUT Shape was read would stay one), and rank's features, keyed by the caches,
/// are extracted again. 2: DICOM's Presentation LUT Shape, RLE labelled YBR_FULL_422, JPEG-LS.
/// 3: an enhanced DICOM image's rescale and window from its Functional Groups, the per-frame
/// one first (dicom-rs took top-level attributes first, and a frame's window by another rule).
/// 4: an enhanced DICOM file's 2.5-D neighbours along its stack by their Plane Positions, not as
/// stored (each stack its Dimension Index tells apart its own). 5: a grayscale PNG, TIFF, BMP or
/// JPEG through the user's `--window` (which passed them over before).
pub const DECODE_REVISION: u32 = 5;

/// Below this, every 16-bit sample of an image keeps a high byte of at most 15 (12-bit data).
pub const FAINT_16BIT_BELOW: u16 = 1 << 12;

/// An image as RGB8, and what the reduction to 8 bits lost.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The image as the backbones see it.
    pub image: RgbImage,
    /// Its samples were 16-bit ones all under [`FAINT_16BIT_BELOW`] (alpha aside): reduced to
    /// their high byte, they span at most 0..15 of 255 and the image is near black.
    pub faint: bool,
}

/// The extensions of the image files [`load_image`] reads (any case): the formats of the study's
/// datasets, DICOM and NIfTI-1.
pub const IMAGE_EXTENSIONS: [&str; 10] = ["jpg", "jpeg", "png", "tif", "tiff", "bmp", "dcm", "dicom", "nii", "nii.gz"];

/// Whether `path` is an image file [`load_image`] reads, by its extension, or, for a name without
/// one (or with a number for one, as DICOM exports name their files), by the DICOM magic word in
/// its first 132 bytes.
pub fn is_image_file(path: &Path) -> bool {
    let known = path.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
    known || is_nifti(path) || is_unnamed_dicom(path)
}

/// Decodes the image at `path` to RGB8.
pub fn load_rgb8(path: &Path) -> Result<RgbImage> {
    load_image(path).map(|decoded| decoded.image)
}

/// Decodes the image at `path` to RGB8, saying whether it came out faint (a DICOM file of several
/// frames is refused).
pub fn load_image(path: &Path) -> Result<Decoded> {
    load_image_frame(path, DicomFrame::Only)
}

/// Decodes the image at `path` to RGB8, saying whether it came out faint; of a DICOM file of
/// several frames, the frame `frame` chooses.
pub fn load_image_frame(path: &Path, frame: DicomFrame) -> Result<Decoded> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("mat")) {
        return cheng_rgb8(path).map(|image| Decoded { image, faint: false });
    }
    if is_nifti(path) {
        return only_frame(path, volume::slices_rgb8(path, None, &[frame], Rendering::default().nifti())?);
    }
    // One open file: its first bytes tell DICOM (read from disk as far as needed: a frame of an
    // uncompressed loop without the others) from the rest (read whole).
    let (mut file, mut bytes) = open_head(path)?;
    if is_dicom(path, &bytes) {
        return dicom_file_rgb8(path, file, frame).map(|image| Decoded { image, faint: false });
    }
    file.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    decode_image(path, &bytes, frame)
}

/// How a file's stored values become an image beyond what its own header says.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rendering {
    /// The user's display window for grayscale images: DICOM and NIfTI in their rescaled values,
    /// in place of the file's own VOI or display range (or its min-max); other formats' 8- and
    /// 16-bit grayscale in their stored values, in place of their high byte.
    pub window: Option<Window>,
    /// The axes a NIfTI volume is read along (other images are read as stored).
    pub orientation: Orientation,
    /// Of a 4-D NIfTI file, the volume read (or three, one a colour channel), counted from 1
    /// (other files have none).
    pub volume: Option<Volumes>,
    /// Each frame of a volume or a file of several frames made 2.5-D: the frame before in red,
    /// itself in green, the frame after in blue (`adjacent.rs`).
    pub adjacent_slices: bool,
}

impl Rendering {
    /// Which volume of a NIfTI file is read, along which axes.
    pub fn reading(self) -> VolumeReading {
        VolumeReading { orientation: self.orientation, volume: self.volume }
    }

    /// What a volume is read and shown by.
    fn nifti(self) -> (Option<Window>, VolumeReading) {
        (self.window, self.reading())
    }
}

/// [`load_image_frame`] of each of `frames` of the image at `path` (a file's frames each an
/// image): of a DICOM file, its header read once for them all and a compressed one parsed once;
/// another image, which has one frame, decoded once; each rendered as `rendering` says. The outer
/// error is the file's, the inner ones each frame's.
pub fn load_image_frames(path: &Path, frames: &[DicomFrame], rendering: Rendering) -> Result<Vec<Result<Decoded>>> {
    if rendering.adjacent_slices {
        return adjacent::adjacent_frames(path, frames, Rendering { adjacent_slices: false, ..rendering });
    }
    if let ([frame], true) = (frames, rendering == Rendering::default()) {
        return Ok(vec![load_image_frame(path, *frame)]);
    }
    if is_nifti(path) {
        let images = volume::slices_rgb8(path, None, frames, rendering.nifti())?;
        return Ok(images.into_iter().map(|image| image.map(|image| Decoded { image, faint: false })).collect());
    }
    let is_mat = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("mat"));
    if !is_mat {
        let (mut file, mut bytes) = open_head(path)?;
        if is_dicom(path, &bytes) {
            let images = dicom_file_frames_rgb8(path, file, frames, rendering.window)?;
            return Ok(images.into_iter().map(|image| image.map(|image| Decoded { image, faint: false })).collect());
        }
        if let Some(window) = rendering.window {
            file.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
            let decoded = windowed(decode_dynamic(path, &bytes)?, window);
            return Ok(frames.iter().map(|_| Ok(decoded.clone())).collect());
        }
    }
    let decoded = load_image_frame(path, DicomFrame::Only)?;
    Ok(frames.iter().map(|_| Ok(decoded.clone())).collect())
}

/// Lets go of what reads keep for the reads that follow: the volumes held whole for reoriented
/// slices, the series placed, the series' slices read for 2.5-D images. An image cache calls it
/// once every image is cached: the training that follows wants none of them.
pub(crate) fn forget_kept_reads() {
    volume::forget_held_volumes();
    crate::dicom::forget_placed_folders();
    adjacent::forget_read_slices();
}

/// The file at `path`, open after its first [`DICOM_HEAD`] bytes, and those bytes.
fn open_head(path: &Path) -> Result<(std::fs::File, Vec<u8>)> {
    let io = |e| Error::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    (&mut file).take(DICOM_HEAD as u64).read_to_end(&mut bytes).map_err(io)?;
    Ok((file, bytes))
}

/// Decodes `bytes`, the content of `path` (named in errors), to RGB8 (a DICOM file of several
/// frames is refused).
pub fn decode_rgb8(path: &Path, bytes: &[u8]) -> Result<RgbImage> {
    decode_image(path, bytes, DicomFrame::Only).map(|decoded| decoded.image)
}

/// Decodes `bytes`, the content of `path` (named in errors), to RGB8, saying whether it came
/// out faint; of a DICOM file of several frames, the frame `frame` chooses.
pub fn decode_image(path: &Path, bytes: &[u8], frame: DicomFrame) -> Result<Decoded> {
    if is_dicom(path, bytes) {
        return dicom_rgb8(path, bytes, frame).map(|image| Decoded { image, faint: false });
    }
    if is_nifti(path) {
        return only_frame(path, volume::slices_rgb8(path, Some(bytes), &[frame], Rendering::default().nifti())?);
    }
    let image = decode_dynamic(path, bytes)?;
    let faint = is_faint_16bit(&image);
    Ok(Decoded { image: to_rgb8(image), faint })
}

/// `bytes`, the content of `path` (named in errors), an image of a format the `image` crate reads
/// (not DICOM or NIfTI), decoded as stored.
fn decode_dynamic(path: &Path, bytes: &[u8]) -> Result<DynamicImage> {
    let corrupt =
        |e: image::ImageError| Error::format(path, format!("cannot decode the image ({e}); the file may be truncated or corrupt"));
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| Error::io(path, e))?;
    if reader.format() == Some(ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        return Err(Error::format(
            path,
            "image file is truncated: the JPEG data ends before its end-of-image marker (a partial download or copy); fetch the file again or remove it",
        ));
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODER_BYTES);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    check_pixels(path, width, height)?;
    DynamicImage::from_decoder(decoder).map_err(corrupt)
}

/// A grayscale image's stored values (8 or 16 bits, alpha aside) through the user's `window`, as
/// a DICOM image's without a rescale; a colour one as [`to_rgb8`] gives it (a window shows one
/// value's range, which colour does not have).
fn windowed(image: DynamicImage, window: Window) -> Decoded {
    let size = (image.width(), image.height());
    let values: Option<Vec<f64>> = match &image {
        DynamicImage::ImageLuma8(gray) => Some(gray.pixels().map(|p| f64::from(p.0[0])).collect()),
        DynamicImage::ImageLumaA8(gray) => Some(gray.pixels().map(|p| f64::from(p.0[0])).collect()),
        DynamicImage::ImageLuma16(gray) => Some(gray.pixels().map(|p| f64::from(p.0[0])).collect()),
        DynamicImage::ImageLumaA16(gray) => Some(gray.pixels().map(|p| f64::from(p.0[0])).collect()),
        _ => None,
    };
    match values.and_then(|values| window.rgb8(&values, size, false)) {
        Some(image) => Decoded { image, faint: false },
        None => {
            let faint = is_faint_16bit(&image);
            Decoded { image: to_rgb8(image), faint }
        }
    }
}

/// The one image [`volume::slices_rgb8`] made for one frame asked.
fn only_frame(path: &Path, images: Vec<Result<RgbImage>>) -> Result<Decoded> {
    let image = images.into_iter().next().unwrap_or_else(|| Err(Error::format(path, "no frame was asked for")))?;
    Ok(Decoded { image, faint: false })
}

/// Whether `image` has 16-bit samples, all under [`FAINT_16BIT_BELOW`] (alpha aside).
fn is_faint_16bit(image: &DynamicImage) -> bool {
    fn below(mut samples: impl Iterator<Item = u16>) -> bool {
        samples.all(|v| v < FAINT_16BIT_BELOW)
    }
    match image {
        DynamicImage::ImageLuma16(gray) => below(gray.pixels().map(|p| p.0[0])),
        DynamicImage::ImageLumaA16(gray) => below(gray.pixels().map(|p| p.0[0])),
        DynamicImage::ImageRgb16(rgb) => below(rgb.as_raw().iter().copied()),
        DynamicImage::ImageRgba16(rgba) => below(rgba.pixels().flat_map(|p| [p.0[0], p.0[1], p.0[2]])),
        _ => false,
    }
}

/// Whether a JPEG's marker structure runs to its end-of-image marker (EOI): headers by their
/// lengths, each scan's entropy-coded data to the next marker (0xFF followed by anything but a
/// stuffed zero, a fill byte or a restart marker). A file cut anywhere, the EOI included,
/// ends first; trailing bytes after the EOI are allowed, as Pillow allows them.
pub(crate) fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const SOI: u8 = 0xD8;
    const EOI: u8 = 0xD9;
    const SOS: u8 = 0xDA;
    if bytes.get(..2) != Some(&[0xFF, SOI]) {
        return false;
    }
    let mut at = 2;
    loop {
        // A marker: 0xFF, any fill bytes (0xFF), then the code.
        if bytes.get(at) != Some(&0xFF) {
            return false;
        }
        while bytes.get(at) == Some(&0xFF) {
            at += 1;
        }
        let Some(&code) = bytes.get(at) else { return false };
        at += 1;
        match code {
            EOI => return true,
            // Stand-alone markers: no length.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(length) = bytes.get(at..at + 2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else { return false };
        if length < 2 {
            return false;
        }
        at += length;
        if at > bytes.len() {
            return false;
        }
        if code == SOS {
            // Entropy-coded data: skip to the next marker that is not a restart.
            loop {
                let Some(offset) = bytes[at..].iter().position(|&b| b == 0xFF) else { return false };
                at += offset;
                let mut next = at + 1;
                while bytes.get(next) == Some(&0xFF) {
                    next += 1;
                }
                match bytes.get(next) {
                    None => return false,
                    Some(0x00 | 0xD0..=0xD7) => at = next + 1,
                    Some(_) => {
                        at = next - 1;
                        break;
                    }
                }
            }
        }
    }
}

/// RGB8 the way Pillow's `convert("RGB")` makes it.
pub fn to_rgb8(image: DynamicImage) -> RgbImage {
    let high_byte = |v: u16| (v >> 8) as u8;
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgb16(rgb) => {
            let (w, h) = rgb.dimensions();
            RgbImage::from_fn(w, h, |x, y| image::Rgb(rgb.get_pixel(x, y).0.map(high_byte)))
        }
        DynamicImage::ImageRgba16(rgba) => {
            let (w, h) = rgba.dimensions();
            RgbImage::from_fn(w, h, |x, y| {
                let [r, g, b, _] = rgba.get_pixel(x, y).0;
                image::Rgb([r, g, b].map(high_byte))
            })
        }
        DynamicImage::ImageLuma16(gray) => {
            let (w, h) = gray.dimensions();
            RgbImage::from_fn(w, h, |x, y| image::Rgb([high_byte(gray.get_pixel(x, y).0[0]); 3]))
        }
        DynamicImage::ImageLumaA16(gray) => {
            let (w, h) = gray.dimensions();
            RgbImage::from_fn(w, h, |x, y| image::Rgb([high_byte(gray.get_pixel(x, y).0[0]); 3]))
        }
        // 8-bit gray, gray+alpha, RGBA: channel replication / alpha dropped, as Pillow does.
        other => other.to_rgb8(),
    }
}

/// A Cheng slice: int16 intensities min-max scaled to 0..=255 (rounded), gray replicated.
fn cheng_rgb8(path: &Path) -> Result<RgbImage> {
    let slice = read_cheng(path, true)?;
    let pixels = slice.pixels.unwrap_or_default();
    let (min, max) = pixels.iter().fold((i16::MAX, i16::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let range = f64::from(max) - f64::from(min);
    let scale = |v: i16| if range > 0.0 { ((f64::from(v) - f64::from(min)) * 255.0 / range).round() as u8 } else { 0 };
    let (w, h) = (slice.width as u32, slice.height as u32);
    Ok(RgbImage::from_fn(w, h, |x, y| image::Rgb([scale(pixels[y as usize * slice.width + x as usize]); 3])))
}
