//! DICOM files to RGB8: a user's radiographs, CT, MR and dermoscopy images as scanners and PACS
//! exports write them (DICOM Part 10, one frame), through DICOM PS3.3's grayscale pipeline as
//! viewers and pydicom's `apply_modality_lut` + `apply_voi_lut` apply it.
//!
//! dicom-rs parses the file and decodes its pixel data (native, deflate, RLE, JPEG baseline,
//! extended and lossless, JPEG 2000 and HTJ2K through openjp2, OpenJPEG's Rust port; grayscale JPEG-LS,
//! which it decodes only through CharLS's C++, through pure_jpegls here); the display steps
//! are here, each the standard's formula, so that the 8-bit image is the one pydicom shows,
//! whatever the crate's own image conversion does:
//! 1. the Modality LUT: rescale slope and intercept (CT's Hounsfield units);
//! 2. the VOI LUT: the file's first VOI LUT table if it has one (pydicom's `prefer_lut`), else
//!    its first window with its VOI LUT function (LINEAR, LINEAR_EXACT, SIGMOID; C.11.2.1.2,
//!    C.11.2.1.3). With neither, a 16-bit image is min-max scaled (what the file leaves to the
//!    viewer; the Cheng slices are scaled so too) and an 8-bit one stays as stored;
//! 3. MONOCHROME1 (a radiograph stored white-is-low) or a Presentation LUT Shape of INVERSE
//!    inverted (once, where both), gray replicated to RGB.
//!
//! Colour is 8-bit RGB as pydicom's `pixel_array` gives it: JPEG's YBR as the JPEG decoder
//! converts it (dermoscopy), uncompressed or RLE YBR_FULL and YBR_FULL_422 (ultrasound,
//! endoscopy) through the standard's matrix, planes interleaved.
//! A file of several frames (a cine loop, an enhanced CT volume) is refused by default: the
//! backbones classify one 2-D image, and which frame is meant is the user's call
//! ([`DicomFrame`]; `frame.rs` makes the chosen one a single-frame image, its Functional Groups'
//! rescale and window with it).

mod condition;
mod frame;
mod geometry;
mod series;
mod stack;
mod window;

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use dicom_core::value::Value;
use dicom_core::{DataElement, Length, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::Codec;
use dicom_encoding::decode::{Decode, file_header_decoder};
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, FileMetaTable, OpenFileOptions};
use dicom_parser::DataSetReader;
use dicom_parser::dataset::DataToken;
use dicom_pixeldata::{
    ConvertOptions, DecodedPixelData, ModalityLutOption, PhotometricInterpretation, PixelDecoder, PlanarConfiguration, VoiLutFunction,
    VoiLutOption, WindowLevel,
};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use image::RgbImage;

use crate::error::{Error, Result};
use crate::limits::check_pixels;
pub use condition::{DicomCondition, dicom_field_texts};
pub use frame::DicomFrame;
pub(crate) use geometry::slice_normal;
pub(crate) use series::forget_placed_folders;
pub use series::{SeriesOrder, SeriesPlace, series_place, series_slices};
pub use stack::{FrameOrder, FrameStacks, frame_stacks};
pub use window::Window;

/// Where a Part 10 file's magic word sits: after its 128-byte preamble.
const MAGIC_AT: usize = 128;

/// The bytes that tell a DICOM file by its magic word: the preamble and the word.
pub(crate) const DICOM_HEAD: usize = MAGIC_AT + 4;

/// Whether `bytes` (of `path`) are a DICOM file: the `.dcm`/`.dicom` extension, or the `DICM`
/// magic after the preamble (PACS exports name their files `IM000001`, without extension).
pub(crate) fn is_dicom(path: &Path, bytes: &[u8]) -> bool {
    has_dicom_extension(path) || has_magic(bytes)
}

/// Whether `path` ends in `.dcm` or `.dicom` (any case).
fn has_dicom_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("dcm") || e.eq_ignore_ascii_case("dicom"))
}

/// Whether the file at `path`, whose name has no extension or a number for one (a PACS export's
/// `IM000001`, a UID-named `1.2.840.113619.2.55.3.320`), is a DICOM image file by its magic word.
/// A DICOMDIR (the index a DICOM disc or export carries) is not an image.
pub(crate) fn is_unnamed_dicom(path: &Path) -> bool {
    is_named_as_unnamed_dicom(path) && read_head(path).is_ok_and(|head| has_magic(&head))
}

/// Whether `path`'s name is one an unnamed DICOM file has: no extension or a number for one, and
/// not DICOMDIR.
fn is_named_as_unnamed_dicom(path: &Path) -> bool {
    let numeric = |e: &std::ffi::OsStr| e.to_str().is_some_and(|e| e.bytes().all(|b| b.is_ascii_digit()));
    path.extension().is_none_or(numeric) && !path.file_name().is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"))
}

/// The storage classes whose pixels are no image to classify, each with what it holds: a
/// segmentation's frames are masks, an RT Dose's a dose grid.
const NOT_IMAGES: [(&str, &str); 3] = [
    ("1.2.840.10008.5.1.4.1.1.66.4", "a segmentation: its frames are masks"),
    ("1.2.840.10008.5.1.4.1.1.66.7", "a label map segmentation: its frames are masks"),
    ("1.2.840.10008.5.1.4.1.1.481.2", "an RT dose: its frames are a dose grid"),
];

/// What the storage class `class` holds where its pixels are no image ([`NOT_IMAGES`]).
fn not_an_image(class: &str) -> Option<&'static str> {
    let class = class.trim_end_matches(['\0', ' ']);
    NOT_IMAGES.iter().find(|(uid, _)| *uid == class).map(|(_, what)| *what)
}

/// Whether the file at `path` is a DICOM object that holds no image to classify: no Pixel Data (a
/// structured report, a presentation state, a key object selection, an encapsulated PDF, an RT
/// structure set, which exports put beside the images), found by a walk over its elements'
/// headers, their values unread; or pixels of a storage class that are not an image
/// ([`NOT_IMAGES`]: a segmentation, an RT dose), by its file meta group. False for any other file,
/// and for one whose walk fails (its read then names the problem).
pub fn holds_no_image(path: &Path) -> bool {
    // Another format's file is not opened: a folder of 25,000 JPEGs is listed as fast as before.
    if !has_dicom_extension(path) && !is_named_as_unnamed_dicom(path) {
        return false;
    }
    let Ok(Some((mut source, size, magic))) = open_dicom(path) else { return false };
    match check_lengths(path, &mut source, size, true) {
        Ok(PixelsFound::Absent) => true,
        Ok(_) => {
            // dicom-rs's parser panics on some damaged files (as `dicom_header` says).
            let class = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                source.seek(SeekFrom::Start(magic)).ok()?;
                FileMetaTable::from_reader(&mut source).ok().map(|meta| meta.media_storage_sop_class_uid().to_string())
            }));
            class.ok().flatten().is_some_and(|class| not_an_image(&class).is_some())
        }
        Err(_) => false,
    }
}

/// The first bytes of the file at `path`, up to its magic word (fewer for a shorter file).
fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(MAGIC_AT + 4);
    std::fs::File::open(path)?.take((MAGIC_AT + 4) as u64).read_to_end(&mut head)?;
    Ok(head)
}

fn has_magic(bytes: &[u8]) -> bool {
    bytes.get(MAGIC_AT..MAGIC_AT + 4) == Some(b"DICM")
}

/// The Patient ID (0010,0020) of the image file at `path`, read from its header (the pixel data
/// left unread); `None` for a file that is not DICOM or whose ID is absent or blank. A DICOM file
/// whose header cannot be read is an error naming it.
pub fn dicom_patient_id(path: &Path) -> Result<Option<String>> {
    header_text(path, tags::PATIENT_ID, "Patient ID")
}

/// The Series Instance UID (0020,000E) of the image file at `path`, read from its header as
/// [`dicom_patient_id`] reads the Patient ID: the slices of one series share it.
pub fn dicom_series_uid(path: &Path) -> Result<Option<String>> {
    header_text(path, tags::SERIES_INSTANCE_UID, "Series Instance UID")
}

/// The text of `tag` (`name`) in the header of the image file at `path`, trimmed of DICOM's
/// padding; `None` for a file that is not DICOM or where it is absent or blank.
fn header_text(path: &Path, tag: dicom_core::Tag, name: &str) -> Result<Option<String>> {
    let Some((object, _)) = dicom_header(path)? else { return Ok(None) };
    let Some(element) = object.element_opt(tag).ok().flatten() else { return Ok(None) };
    let text = element.to_str().map_err(|e| Error::format(path, format!("the DICOM file's {name} is not text ({e})")))?;
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    Ok((!text.is_empty()).then(|| text.to_string()))
}

/// How many frames the image file at `path` holds, read from its header (the pixel data left
/// unread): a DICOM file's Number of Frames (1 where it has none), 1 for any other image. A DICOM
/// file whose header cannot be read, or whose count is not a number, is 0, or is more than the
/// file's size can hold (a damaged count would otherwise make billions of images of one file), is
/// an error naming it.
pub(crate) fn dicom_frame_count(path: &Path) -> Result<u32> {
    let Some((object, size)) = dicom_header(path)? else { return Ok(1) };
    let frames = number_of_frames(&object).map_err(|what| Error::format(path, what))?;
    if frames == 0 {
        return Err(Error::format(path, "the DICOM file's Number of Frames is 0; correct it (1 for a single image)"));
    }
    if u64::from(frames).saturating_mul(least_frame_bytes(&object)) > size {
        return Err(Error::format(
            path,
            format!(
                "the DICOM file states {frames} frames, more than its {size} bytes can hold: a damaged header; export it again from the PACS or viewer"
            ),
        ));
    }
    Ok(frames)
}

/// The header's Number of Frames, 1 where it has none.
fn number_of_frames(header: &DefaultDicomObject) -> std::result::Result<u32, String> {
    match header.element_opt(tags::NUMBER_OF_FRAMES).ok().flatten() {
        Some(value) => value.to_int::<u32>().map_err(|e| format!("the DICOM file's Number of Frames is not a number ({e})")),
        None => Ok(1),
    }
}

/// The fewest bytes a frame of `header`'s image can take: uncompressed, its pixels' (as far as the
/// header states them); compressed, an item's 8-byte header.
fn least_frame_bytes(header: &DefaultDicomObject) -> u64 {
    let number = |tag| header.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<u32>().ok());
    // Explicit VR big endian (1.2.840.10008.1.2.2) is retired, but old archives hold it.
    let uncompressed = [uids::EXPLICIT_VR_LITTLE_ENDIAN, uids::IMPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.2"]
        .contains(&header.meta().transfer_syntax());
    match (uncompressed, number(tags::COLUMNS), number(tags::ROWS), number(tags::BITS_ALLOCATED)) {
        (true, Some(columns), Some(rows), Some(bits_allocated)) => {
            let samples = number(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
            let photometric = stored_photometric(header).map(|p| p.as_str().to_string()).unwrap_or_default();
            (frame::native_frame_bytes((columns, rows, samples, bits_allocated), &photometric) as u64).max(1)
        }
        _ => 8,
    }
}

/// The DICOM file at `path` opened, standing where its data set begins (its magic word, after the
/// preamble where it has one), its size, and that place; `None` for a file that is not DICOM.
/// One open file for the magic word, the length check and the header: a PACS export is thousands
/// of files, often on a network share.
fn open_dicom(path: &Path) -> Result<Option<(std::io::BufReader<std::fs::File>, u64, u64)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut source = std::io::BufReader::new(file);
    let mut head = Vec::with_capacity(MAGIC_AT + 4);
    (&mut source).take((MAGIC_AT + 4) as u64).read_to_end(&mut head).map_err(|e| Error::io(path, e))?;
    if !is_dicom(path, &head) {
        return Ok(None);
    }
    let magic = if has_magic(&head) { MAGIC_AT as u64 } else { 0 };
    source.seek(SeekFrom::Start(magic)).map_err(|e| Error::io(path, e))?;
    Ok(Some((source, size, magic)))
}

/// The header of the DICOM file at `path`, up to its Pixel Data (left unread), and the file's size;
/// `None` for a file that is not DICOM.
fn dicom_header(path: &Path) -> Result<Option<(DefaultDicomObject, u64)>> {
    let Some((mut source, size, magic)) = open_dicom(path)? else { return Ok(None) };
    let read_header = || {
        check_lengths(path, &mut source, size, true)?;
        source.seek(SeekFrom::Start(magic)).map_err(|e| Error::io(path, e))?;
        OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .read_preamble(ReadPreamble::Never)
            .from_reader(&mut source)
            .map_err(|e| Error::format(path, format!("cannot read the DICOM header ({e}); it may be truncated or corrupt")))
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read_header))
        .map_err(|_| Error::format(path, "a damaged DICOM file: its parser failed on it; export it again from the PACS or viewer"))?
        .map(|object| Some((object, size)))
}

/// The frame `frame` chooses of the DICOM file `bytes` (the content of `path`, named in errors)
/// as RGB8.
///
/// dicom-rs's decoders index into what a damaged file says without checking every length (its
/// RLE decoder, seen in the mutation tests): a panic there is this file's error, not the end of
/// the process. Its parser zero-fills the length an element states before reading it: a length
/// beyond the file is refused first (`check_lengths`).
pub(crate) fn dicom_rgb8(path: &Path, bytes: &[u8], frame: DicomFrame) -> Result<RgbImage> {
    read_catching(path, &mut Cursor::new(bytes), bytes.len() as u64, frame)
}

/// [`dicom_rgb8`] of `file` (open at `path`), read from disk as far as it is needed: a frame of
/// an uncompressed cine loop or volume without the other frames (a loop of 600 ultrasound frames
/// is 860 MB, and the cache decodes a file per core).
pub(crate) fn dicom_file_rgb8(path: &Path, file: std::fs::File, frame: DicomFrame) -> Result<RgbImage> {
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    read_catching(path, &mut std::io::BufReader::new(file), size, frame)
}

/// [`dicom_file_rgb8`] of each of `frames` (grayscale ones through `window` where given), the
/// file's header read once for them all and a compressed file parsed once (each frame of a JPEG
/// loop would otherwise cost a parse of the whole file: 8 ms a frame of a 600-frame loop). The
/// outer error is the file's, the inner ones each frame's; a decoder's panic is every frame's.
pub(crate) fn dicom_file_frames_rgb8(
    path: &Path,
    file: std::fs::File,
    frames: &[DicomFrame],
    window: Option<Window>,
) -> Result<Vec<Result<RgbImage>>> {
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    catching(path, || read_dicom(path, &mut std::io::BufReader::new(file), size, frames, window))
}

/// [`read_dicom`] of one frame, its decoder's panic the file's error.
fn read_catching<R: Read + Seek>(path: &Path, source: &mut R, size: u64, frame: DicomFrame) -> Result<RgbImage> {
    let images = catching(path, || read_dicom(path, source, size, &[frame], None))?;
    images.into_iter().next().unwrap_or_else(|| Err(Error::format(path, "no frame was read")))
}

/// `read`'s outcome, a panic in it (dicom-rs's decoders, on a damaged file) the file's error.
fn catching<T>(path: &Path, read: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let message = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()));
            Err(Error::format(
                path,
                format!(
                    "a damaged DICOM file: its decoder failed on it ({}); export it again from the PACS or viewer",
                    message.unwrap_or_else(|| "no message".into())
                ),
            ))
        }
    }
}

/// The frames `frames` choose of the DICOM file `source` (`size` bytes, of `path`) as RGB8: its
/// header up to the Pixel Data read and checked first; then, for frames of an uncompressed file of
/// several, each frame's bytes alone, else the whole file, parsed once. The outer error is the
/// file's, the inner ones each frame's.
fn read_dicom<R: Read + Seek>(
    path: &Path,
    source: &mut R,
    size: u64,
    frames: &[DicomFrame],
    window: Option<Window>,
) -> Result<Vec<Result<RgbImage>>> {
    let problem = |what: String| Error::format(path, what);
    let mut head = Vec::with_capacity(MAGIC_AT + 4);
    source
        .seek(SeekFrom::Start(0))
        .and_then(|_| source.take((MAGIC_AT + 4) as u64).read_to_end(&mut head))
        .map_err(|e| Error::io(path, e))?;
    let (preamble, magic) = if has_magic(&head) {
        (ReadPreamble::Always, MAGIC_AT)
    } else if head.starts_with(b"DICM") {
        (ReadPreamble::Never, 0)
    } else {
        return Err(problem(
            "not a DICOM Part 10 file (no DICM magic word after a 128-byte preamble): a truncated copy, or a bare data set an older system wrote; export it again from the PACS or viewer"
                .into(),
        ));
    };
    let no_image = || {
        problem(
            "the DICOM file holds no image (no Pixel Data): a DICOMDIR, a report or a presentation state; leave it out of the image folder"
                .into(),
        )
    };
    source.seek(SeekFrom::Start(magic as u64)).map_err(|e| Error::io(path, e))?;
    let found = check_lengths(path, source, size, true)?;
    // Where the walk stopped: at a native Pixel Data's first byte.
    let pixels_at = source.stream_position().map_err(|e| Error::io(path, e))?;
    if found == PixelsFound::Absent {
        return Err(no_image());
    }
    let header = parse(path, source, OpenFileOptions::new().read_until(tags::PIXEL_DATA).read_preamble(preamble))?;
    if let Some(what) = not_an_image(header.meta().media_storage_sop_class_uid()) {
        return Err(problem(format!("the DICOM file is {what}, not an image to classify; leave it out of the image folder")));
    }
    let attribute = |tag, name: &str| -> Result<u32> {
        let value = header.element(tag).map_err(|_| problem(format!("the DICOM file has no {name}")))?;
        value.to_int::<u32>().map_err(|e| problem(format!("the DICOM file's {name} is not a number ({e})")))
    };
    let (rows, columns) = (attribute(tags::ROWS, "Rows")?, attribute(tags::COLUMNS, "Columns")?);
    check_pixels(path, columns, rows)?;
    let total = number_of_frames(&header).map_err(problem)?;
    // Each frame asked for, or why the file has no such frame.
    let mut indices: Vec<Result<u32>> = frames.iter().map(|frame| frame.index(total).map_err(problem)).collect();
    // None to read (a loop without a frame chosen): refused before the pixel data is read.
    if indices.iter().all(Result::is_err) {
        return Ok(indices.into_iter().filter_map(Result::err).map(Err).collect());
    }
    let bits_allocated = attribute(tags::BITS_ALLOCATED, "Bits Allocated")?;
    let bits_stored = attribute(tags::BITS_STORED, "Bits Stored")?;
    // dicom-rs's lookup tables assume these (and panic otherwise): checked here first.
    if !matches!(bits_allocated, 8 | 16) || bits_stored == 0 || bits_stored > bits_allocated {
        return Err(problem(format!(
            "the DICOM file stores {bits_stored} of {bits_allocated} bits per sample; medxfer reads 8- and 16-bit images (1 to 16 bits stored)"
        )));
    }
    let samples = match header.element_opt(tags::SAMPLES_PER_PIXEL).ok().flatten() {
        Some(value) => value.to_int::<u32>().map_err(|e| problem(format!("the DICOM file's Samples per Pixel is not a number ({e})")))?,
        None => 1,
    };
    let photometric = stored_photometric(&header).map_err(problem)?;
    let geometry = (columns, rows, samples, bits_allocated);
    let little_endian = [uids::EXPLICIT_VR_LITTLE_ENDIAN, uids::IMPLICIT_VR_LITTLE_ENDIAN].contains(&header.meta().transfer_syntax());
    let sizes = ImageSizes { columns, rows, samples, bits_allocated, bits_stored };
    let mut images = Vec::with_capacity(indices.len());
    match found {
        // Frames of an uncompressed file of several: each one's bytes alone, where the walk found
        // them.
        PixelsFound::Native { length, vr } if total > 1 && little_endian => {
            let native = frame::NativePixels { at: pixels_at, length, vr };
            for index in indices {
                images.push(index.and_then(|index| {
                    let mut object = header.clone();
                    frame::read_native_frame(&mut object, source, &native, (index, total), geometry, photometric.as_str())
                        .map_err(problem)?;
                    frame::keep_frame(&mut object, (index, 1), geometry, photometric.as_str()).map_err(problem)?;
                    frame_rgb8(path, object, sizes, window)
                }));
            }
        }
        _ => {
            // The whole file, read once: walked and parsed from memory.
            let mut whole = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            source.seek(SeekFrom::Start(0)).and_then(|_| source.read_to_end(&mut whole)).map_err(|e| Error::io(path, e))?;
            let mut memory = Cursor::new(whole.as_slice());
            memory.set_position(magic as u64);
            check_lengths(path, &mut memory, size, false)?;
            let mut object = parse(path, &mut memory, OpenFileOptions::new().read_preamble(preamble))?;
            drop(whole);
            if object.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
                return Err(no_image());
            }
            if let [index] = indices.as_mut_slice() {
                // One frame: cut from the object in place, no copy of it.
                let index = std::mem::replace(index, Ok(0))?;
                frame::keep_frame(&mut object, (index, total), geometry, photometric.as_str()).map_err(problem)?;
                return Ok(vec![frame_rgb8(path, object, sizes, window)]);
            }
            // Several: the Pixel Data taken out once, each frame's part of it put in a copy of
            // the rest.
            let pixels = object.take_element(tags::PIXEL_DATA).map_err(|_| no_image())?;
            for index in indices {
                images.push(index.and_then(|index| {
                    let mut one = object.clone();
                    frame::put_frame_pixels(&mut one, &pixels, (index, total), geometry, photometric.as_str()).map_err(problem)?;
                    frame::keep_frame(&mut one, (index, 1), geometry, photometric.as_str()).map_err(problem)?;
                    frame_rgb8(path, one, sizes, window)
                }));
            }
        }
    }
    Ok(images)
}

/// What [`frame_rgb8`] checks a frame's decoded pixels against: the header's size and sample
/// layout.
#[derive(Clone, Copy)]
struct ImageSizes {
    columns: u32,
    rows: u32,
    samples: u32,
    bits_allocated: u32,
    bits_stored: u32,
}

/// The single-frame image `object` (of the DICOM file `path`, of `sizes`) decoded, as a viewer
/// displays it, to RGB8.
fn frame_rgb8(path: &Path, mut object: DefaultDicomObject, sizes: ImageSizes, window: Option<Window>) -> Result<RgbImage> {
    let problem = |what: String| Error::format(path, what);
    let ImageSizes { columns, rows, samples, bits_allocated, bits_stored } = sizes;
    check_stated_size(&object, (columns, rows)).map_err(problem)?;
    if [uids::JPEGLS_LOSSLESS, uids::JPEGLS_NEAR_LOSSLESS].contains(&object.meta().transfer_syntax()) {
        if samples != 1 {
            return Err(problem(format!(
                "the DICOM file is colour ({samples} samples per pixel) compressed as JPEG-LS, which medxfer reads in grayscale only; export it uncompressed, or as JPEG 2000 or RLE"
            )));
        }
        decode_jpeg_ls(&mut object, (columns, rows), bits_allocated, bits_stored).map_err(problem)?;
    }
    let pixels =
        object.decode_pixel_data().map_err(|e| problem(format!("cannot decode the DICOM pixel data ({e}); it may be truncated, or compressed in a syntax medxfer does not read (JPEG XL, colour JPEG-LS)")))?;
    let image = match pixels.photometric_interpretation() {
        PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2 => {
            gray_rgb8(&pixels, presentation_inverse(&object).map_err(problem)?, window).map_err(problem)?
        }
        decoded if pixels.samples_per_pixel() == 3 && pixels.bits_allocated() == 8 => {
            // JPEG and JPEG 2000 decoders convert to RGB and dicom-rs says so; its RLE decoder
            // relabels the samples RGB but leaves them in the file's colour space. RLE codes
            // every pixel's three samples: a file labelled YBR_FULL_422 (the standard does not
            // allow it under RLE) holds YBR_FULL, as pydicom reads it.
            let rle = object.meta().transfer_syntax() == uids::RLE_LOSSLESS;
            let space = match rle.then(|| stored_photometric(&object)).transpose().map_err(problem)? {
                Some(PhotometricInterpretation::YbrFull422) => PhotometricInterpretation::YbrFull,
                Some(stored) => stored,
                None => decoded.clone(),
            };
            colour_rgb8(&pixels, &space).map_err(problem)?
        }
        other => {
            return Err(problem(format!(
                "the DICOM file's image is {other} with {} samples of {} bits; medxfer reads MONOCHROME1/2 and 8-bit RGB, YBR_FULL and YBR_FULL_422",
                pixels.samples_per_pixel(),
                pixels.bits_allocated()
            )));
        }
    };
    Ok(image)
}

/// The DICOM file `source` (of `path`) as dicom-rs reads it with `options`, from its start.
fn parse<R: Read + Seek>(path: &Path, source: &mut R, options: OpenFileOptions) -> Result<DefaultDicomObject> {
    source.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    options
        .from_reader(source)
        .map_err(|e| Error::format(path, format!("cannot read the DICOM file ({e}); it may be truncated or corrupt")))
}

/// That no element of the DICOM file `source` (at its magic word; `size` bytes in all) states a
/// length beyond the file's size, up to its Pixel Data if `until_pixels`. dicom-rs's parser
/// zero-fills a value's stated length before reading it, so a damaged length field (one flipped
/// bit makes 12 bytes 4 GiB) would cost seconds and gigabytes per file (per decoding thread)
/// before its error. The file meta group (explicit VR little endian) and the data set are walked
/// with dicom-rs's own header decoder and token reader, which yield each header before the value
/// is read. A deflated data set is left to dicom-rs (its inflated size is unknown beforehand).
/// What these walks cannot parse, dicom-rs's parse after them reports. Up to the Pixel Data, it
/// says what the walk found of the image's (top-level) Pixel Data.
fn check_lengths<R: Read + Seek>(path: &Path, source: &mut R, size: u64, until_pixels: bool) -> Result<PixelsFound> {
    let too_long_for = |length: Length| {
        length.get().filter(|&l| u64::from(l) > size).map(|l| {
            Error::format(
                path,
                format!(
                    "a damaged DICOM file: an element states {l} bytes, more than the whole file's {size}; export it again from the PACS or viewer"
                ),
            )
        })
    };
    let Ok(magic) = source.stream_position() else { return Ok(PixelsFound::Unknown) };
    // The file meta group as dicom-rs reads it: its group length first, then elements until
    // that many bytes are read, whatever their tags.
    let decoder = file_header_decoder();
    if source.seek(SeekFrom::Current(4)).is_ok()
        && let Ok((first, _)) = decoder.decode_header(source)
        && first.tag == tags::FILE_META_INFORMATION_GROUP_LENGTH
        && first.len == Length(4)
    {
        let mut group_length = [0_u8; 4];
        if source.read_exact(&mut group_length).is_ok() {
            let (group_length, mut read) = (u64::from(u32::from_le_bytes(group_length)), 0);
            while read < group_length {
                let Ok((header, header_size)) = decoder.decode_header(source) else { break };
                if let Some(error) = too_long_for(header.len) {
                    return Err(error);
                }
                let length = u64::from(header.len.get().unwrap_or(0));
                if source.seek(SeekFrom::Current(length as i64)).is_err() {
                    break;
                }
                read += header_size as u64 + length;
            }
        }
    }
    if source.seek(SeekFrom::Start(magic)).is_err() {
        return Ok(PixelsFound::Unknown);
    }
    let Ok(meta) = FileMetaTable::from_reader(&mut *source) else { return Ok(PixelsFound::Unknown) };
    let Some(syntax) = TransferSyntaxRegistry.get(meta.transfer_syntax()) else { return Ok(PixelsFound::Unknown) };
    let native = match syntax.codec() {
        Codec::None => true,
        Codec::EncapsulatedPixelData(..) => false,
        _ => return Ok(PixelsFound::Unknown),
    };
    let Ok(tokens) = DataSetReader::new_with_ts(&mut *source, syntax) else { return Ok(PixelsFound::Unknown) };
    // Sequences open: an icon's Pixel Data (in the Icon Image Sequence) is not the image's.
    let mut depth = 0_usize;
    let mut found = PixelsFound::Absent;
    for token in tokens {
        let (length, pixels) = match token {
            Ok(DataToken::ElementHeader(header)) => {
                let image = header.tag == tags::PIXEL_DATA && depth == 0;
                if image {
                    found = match (native, header.len.get()) {
                        (true, Some(length)) => PixelsFound::Native { length: u64::from(length), vr: header.vr },
                        _ => PixelsFound::Unknown,
                    };
                }
                (header.len, image)
            }
            Ok(DataToken::SequenceStart { len, .. }) => {
                depth += 1;
                (len, false)
            }
            Ok(DataToken::ItemStart { len }) => (len, false),
            Ok(DataToken::PixelSequenceStart) => {
                depth += 1;
                if depth == 1 {
                    found = PixelsFound::Encapsulated;
                }
                (Length(0), depth == 1)
            }
            Ok(DataToken::SequenceEnd) => {
                depth = depth.saturating_sub(1);
                continue;
            }
            Ok(_) => continue,
            Err(_) => return Ok(PixelsFound::Unknown),
        };
        if let Some(error) = too_long_for(length) {
            return Err(error);
        }
        if pixels && until_pixels {
            break;
        }
    }
    Ok(found)
}

/// What [`check_lengths`]'s walk found of a file's (top-level) Pixel Data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PixelsFound {
    /// Uncompressed, `length` bytes of value representation `vr`; with the walk stopped at it,
    /// the source stands at its first byte.
    Native { length: u64, vr: VR },
    /// Fragments (a compressed image).
    Encapsulated,
    /// None: a DICOMDIR, a report, a presentation state.
    Absent,
    /// Not known: a deflated data set, or one the walk could not parse (dicom-rs's parse says why).
    Unknown,
}

/// The one grayscale frame of a JPEG-LS file (lossless or near-lossless) put back in `object` as
/// native samples in explicit VR little endian, which dicom-rs's pipeline then reads as any
/// uncompressed file. JPEG-LS codes a signed image as its Bits Stored-bit two's complement, which
/// is what native data holds in its low Bits Stored bits; dicom-rs reads those alone, sign and all
/// (its lookup tables span Bits Stored bits), as pydicom reads the codec's output.
fn decode_jpeg_ls(
    object: &mut DefaultDicomObject,
    (columns, rows): (u32, u32),
    bits_allocated: u32,
    bits_stored: u32,
) -> std::result::Result<(), String> {
    let element = object.element(tags::PIXEL_DATA).map_err(|e| format!("the DICOM file has no Pixel Data ({e})"))?;
    let Value::PixelSequence(sequence) = element.value() else {
        return Err("the DICOM file says JPEG-LS, but its Pixel Data is not encapsulated (fragments); export it again".into());
    };
    // One frame: every fragment is part of it.
    let stream: Vec<u8> = sequence.fragments().iter().flatten().copied().collect();
    let (samples, _, _) = jpegls::decode(&stream, columns, rows).map_err(|e| {
        format!("cannot decode the DICOM file's JPEG-LS image ({e}); it may be truncated, or a colour or interleaved stream medxfer does not read")
    })?;
    if samples.len() != columns as usize * rows as usize {
        return Err(format!("the DICOM file's JPEG-LS image holds {} samples, not its {columns} x {rows}", samples.len()));
    }
    if let Some(&beyond) = samples.iter().find(|&&v| u32::from(v) >> bits_stored != 0) {
        return Err(format!(
            "the DICOM file's JPEG-LS image has a sample of {beyond}, beyond its {bits_stored} bits stored; correct its Bits Stored"
        ));
    }
    let native: Vec<u8> = match bits_allocated {
        8 => samples.iter().map(|&v| v as u8).collect(),
        _ => samples.iter().flat_map(|&v| v.to_le_bytes()).collect(),
    };
    let vr = if bits_allocated == 8 { VR::OB } else { VR::OW };
    object.put(DataElement::new(tags::PIXEL_DATA, vr, PrimitiveValue::from(native)));
    object.update_meta(|meta| meta.set_transfer_syntax(&dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN));
    Ok(())
}

/// That an encapsulated image's own header (a JPEG frame header, a JPEG 2000 or HTJ2K SIZ
/// segment) states the file's Columns x Rows (PS3.5 A.4), checked before decoding: the JPEG and
/// JPEG 2000 decoders allocate and decode whatever size a damaged stream states (one flipped byte:
/// a billion pixels, gigabytes and seconds) before dicom-rs finds the samples do not fit. A
/// stream whose header is not where it belongs is left to its decoder.
fn check_stated_size(object: &DefaultDicomObject, (columns, rows): (u32, u32)) -> std::result::Result<(), String> {
    let Ok(element) = object.element(tags::PIXEL_DATA) else { return Ok(()) };
    let Value::PixelSequence(sequence) = element.value() else { return Ok(()) };
    let Some(first) = sequence.fragments().first() else { return Ok(()) };
    let Some((kind, width, height)) = stated_size(first) else { return Ok(()) };
    // A JPEG may leave its height to a DNL marker after the first scan (a height of 0).
    if width != columns || (height != rows && !(kind == "JPEG" && height == 0)) {
        return Err(format!(
            "a damaged DICOM file: its {kind} image states {width} x {height} pixels, its header {columns} x {rows}; export it again from the PACS or viewer"
        ));
    }
    Ok(())
}

/// The stream's kind and the width and height its header states: a JPEG's (any process, JPEG-LS
/// too) first frame header, found by walking the marker segments from SOI; a JPEG 2000
/// codestream's SIZ (SOC then SIZ: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, big-endian), at the start
/// or inside a JP2 wrapper, which DICOM does not allow and some systems write.
fn stated_size(stream: &[u8]) -> Option<(&'static str, u32, u32)> {
    let word = |at: usize| stream.get(at..at + 2).map(|b| u32::from(u16::from_be_bytes([b[0], b[1]])));
    if stream.starts_with(&[0xff, 0xd8]) {
        let mut at = 2;
        loop {
            let marker = stream.get(at..at + 2)?;
            if marker[0] != 0xff {
                return None;
            }
            match marker[1] {
                // Fill bytes before a marker.
                0xff => at += 1,
                // SOF0-3, 5-7, 9-11, 13-15 and JPEG-LS's SOF55: P, Y, X after the length.
                0xc0..=0xc3 | 0xc5..=0xc7 | 0xc9..=0xcb | 0xcd..=0xcf | 0xf7 => {
                    return Some(("JPEG", word(at + 7)?, word(at + 5)?));
                }
                // The first scan came before any frame header: not a stream to judge.
                0xda | 0xd9 => return None,
                _ => at += 2 + word(at + 2)? as usize,
            }
        }
    }
    // Searched for only inside a JP2 wrapper (its signature box first): RLE's and other
    // streams' bytes may hold the two markers by chance.
    let at = if stream.starts_with(&[0xff, 0x4f, 0xff, 0x51]) {
        0
    } else if stream.starts_with(&[0, 0, 0, 0x0c, b'j', b'P', b' ', b' ']) {
        stream.windows(4).position(|w| w == [0xff, 0x4f, 0xff, 0x51])?
    } else {
        return None;
    };
    let siz = stream.get(at + 4..at + 4 + 22)?;
    let word = |i: usize| u32::from_be_bytes([siz[i], siz[i + 1], siz[i + 2], siz[i + 3]]);
    Some(("JPEG 2000", word(4).wrapping_sub(word(12)), word(8).wrapping_sub(word(16))))
}

/// Whether the file's Presentation LUT Shape (2050,0020) is INVERSE: the displayed output
/// inverted (PS3.3 C.11.6.1), as some radiographs store white-is-low in MONOCHROME2. The DX IOD
/// requires INVERSE of every MONOCHROME1 image: the same inversion, done once. A Presentation
/// LUT table (a Sequence, rare outside presentation states) is not applied.
fn presentation_inverse(object: &DefaultDicomObject) -> std::result::Result<bool, String> {
    let Some(element) = object.element_opt(tags::PRESENTATION_LUT_SHAPE).ok().flatten() else { return Ok(false) };
    let shape = element.to_str().map_err(|e| format!("the DICOM file's Presentation LUT Shape is not text ({e})"))?;
    match shape.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_ascii_uppercase().as_str() {
        "INVERSE" => Ok(true),
        "IDENTITY" | "" => Ok(false),
        other => Err(format!("the DICOM file's Presentation LUT Shape is {other}; the standard allows IDENTITY and INVERSE")),
    }
}

/// The Photometric Interpretation the file states (dicom-rs reports the decoded one).
fn stored_photometric(object: &DefaultDicomObject) -> std::result::Result<PhotometricInterpretation, String> {
    let element =
        object.element(tags::PHOTOMETRIC_INTERPRETATION).map_err(|_| "the DICOM file has no Photometric Interpretation".to_string())?;
    let name = element.to_str().map_err(|e| format!("the DICOM file's Photometric Interpretation is not text ({e})"))?;
    Ok(PhotometricInterpretation::from(name.trim_matches(|c: char| c.is_whitespace() || c == '\0')))
}

/// An 8-bit, 3-sample frame in colour space `space` as RGB, as pydicom's `pixel_array` converts
/// it: planes (Planar Configuration 1) interleaved, YBR_FULL_422's chrominance pair given to
/// both of its pixels, YBR_FULL through PS3.3 C.7.6.3.1.2's full-range matrix. Other colour
/// spaces (YBR_PARTIAL_*, PALETTE COLOR) are refused by name.
fn colour_rgb8(pixels: &DecodedPixelData<'_>, space: &PhotometricInterpretation) -> std::result::Result<RgbImage, String> {
    let (width, height) = (pixels.columns(), pixels.rows());
    let count = width as usize * height as usize;
    let data = pixels.data();
    let mut samples = match space {
        PhotometricInterpretation::YbrFull422 => {
            if width % 2 != 0 || data.len() < count * 2 {
                return Err(format!(
                    "the DICOM file's YBR_FULL_422 samples do not fill its {width} x {height} image (an even width, two bytes per pixel)"
                ));
            }
            data[..count * 2].chunks_exact(4).flat_map(|pair| [pair[0], pair[2], pair[3], pair[1], pair[2], pair[3]]).collect()
        }
        PhotometricInterpretation::Rgb | PhotometricInterpretation::YbrFull => {
            let data =
                data.get(..count * 3).ok_or_else(|| format!("the DICOM file's colour samples do not fill its {width} x {height} image"))?;
            match pixels.planar_configuration() {
                PlanarConfiguration::Standard => data.to_vec(),
                PlanarConfiguration::PixelFirst => (0..count).flat_map(|i| [data[i], data[count + i], data[2 * count + i]]).collect(),
            }
        }
        other => {
            return Err(format!("the DICOM file's colour is {other}; medxfer reads RGB, YBR_FULL and YBR_FULL_422: convert it to RGB"));
        }
    };
    if *space != PhotometricInterpretation::Rgb {
        samples.chunks_exact_mut(3).for_each(ybr_full_to_rgb);
    }
    RgbImage::from_raw(width, height, samples).ok_or_else(|| "the DICOM colour samples do not fill Rows x Columns".into())
}

/// One YBR_FULL pixel to RGB in place: pydicom's `convert_color_space` (f32, the matrix of
/// PS3.3 C.7.6.3.1.2 inverted, rounded half up, clipped).
fn ybr_full_to_rgb(pixel: &mut [u8]) {
    const GREEN_FROM_CB: f32 = (-0.114 * 1.772 / 0.587) as f32;
    const GREEN_FROM_CR: f32 = (-0.299 * 1.402 / 0.587) as f32;
    let (y, cb, cr) = (f32::from(pixel[0]), f32::from(pixel[1]) - 128.0, f32::from(pixel[2]) - 128.0);
    let rgb = [y + 1.402 * cr, y + GREEN_FROM_CB * cb + GREEN_FROM_CR * cr, y + 1.772 * cb];
    for (out, value) in pixel.iter_mut().zip(rgb) {
        *out = (value + 0.5).floor().clamp(0.0, 255.0) as u8;
    }
}

/// A grayscale frame through the Modality and VOI LUTs to 8 bits, gray replicated; inverted where
/// it is MONOCHROME1 or `inverse` (its Presentation LUT Shape). A `user_window` replaces the VOI
/// (one a channel where it gives three).
fn gray_rgb8(pixels: &DecodedPixelData<'_>, inverse: bool, user_window: Option<Window>) -> std::result::Result<RgbImage, String> {
    let options = ConvertOptions::new().with_modality_lut(ModalityLutOption::Default).with_voi_lut(VoiLutOption::Identity);
    let modality: Vec<f64> = pixels.to_vec_frame_with_options(0, &options).map_err(|e| format!("cannot read the DICOM samples ({e})"))?;
    let table = pixels.voi_lut_sequence().map_err(|e| format!("cannot read the DICOM VOI LUT Sequence ({e})"))?.and_then(|t| t.first());
    let window = pixels.window().map_err(|e| format!("cannot read the DICOM window ({e})"))?.and_then(|w| w.first().copied());
    let invert = inverse || *pixels.photometric_interpretation() == PhotometricInterpretation::Monochrome1;
    let (width, height) = (pixels.columns(), pixels.rows());
    if modality.len() != width as usize * height as usize {
        return Err(format!("the DICOM file's {} samples do not fill its {width} x {height} image", modality.len()));
    }
    // Half up, as a viewer's lookup table rounds.
    let byte = |u: f64| {
        let u = if invert { 1.0 - u.clamp(0.0, 1.0) } else { u.clamp(0.0, 1.0) };
        (u * 255.0 + 0.5).floor() as u8
    };
    if let Some(user_window) = user_window {
        return user_window.rgb8(&modality, (width, height), invert).ok_or_else(|| "the DICOM samples do not fill Rows x Columns".into());
    }
    let unit: Vec<f64> = if let Some(table) = table {
        // Values below the table's first mapped value take its first entry, above its end its
        // last (C.11.2.1.1); the entries span the bits they use, at most the declared depth
        // (a CR's 12-bit table declared 16 bits would come out near black; dicom-rs reads it so).
        let last = table.data.len().checked_sub(1).ok_or("the DICOM VOI LUT table is empty")?;
        let used = u16::BITS - table.data.iter().copied().max().unwrap_or(0).leading_zeros();
        let declared = u32::from(table.bits_stored);
        let bits = if used == 0 || used > declared { declared } else { used };
        if !(1..=16).contains(&bits) {
            return Err(format!("the DICOM VOI LUT table declares {declared} bits per entry; the standard allows 8 to 16"));
        }
        let top = f64::from((1_u32 << bits) - 1);
        modality
            .iter()
            .map(|&v| {
                let index = (v.round() - f64::from(table.min_pixel_value)).clamp(0.0, last as f64) as usize;
                f64::from(table.data[index]) / top
            })
            .collect()
    } else if let Some(window) = window {
        let function = pixels
            .voi_lut_function()
            .map_err(|e| format!("cannot read the DICOM VOI LUT Function ({e})"))?
            .and_then(|f| f.first().copied());
        let function = function.unwrap_or(VoiLutFunction::Linear);
        check_window(function, window)?;
        modality.iter().map(|&v| windowed(function, window, v)).collect()
    } else if pixels.bits_allocated() == 8 {
        modality.iter().map(|&v| v / 255.0).collect()
    } else {
        let (low, high) = modality.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        modality.iter().map(|&v| if high > low { (v - low) / (high - low) } else { 0.0 }).collect()
    };
    let rgb = unit.into_iter().flat_map(|u| [byte(u); 3]).collect();
    RgbImage::from_raw(width, height, rgb).ok_or_else(|| "the DICOM samples do not fill Rows x Columns".into())
}

/// A window the standard allows: width at least 1 for LINEAR, above 0 otherwise.
fn check_window(function: VoiLutFunction, window: WindowLevel) -> std::result::Result<(), String> {
    let least = if function == VoiLutFunction::Linear { 1.0 } else { f64::MIN_POSITIVE };
    if window.width >= least && window.center.is_finite() {
        Ok(())
    } else {
        Err(format!(
            "the DICOM window (center {}, width {}) is not one the standard allows for {function:?} (width at least 1 for LINEAR, above 0 otherwise); correct the file's Window Width",
            window.center, window.width
        ))
    }
}

/// A modality value through a window to 0..=1 (PS3.3 C.11.2.1.2.1, C.11.2.1.3.1-2).
pub(crate) fn windowed(function: VoiLutFunction, window: WindowLevel, value: f64) -> f64 {
    let WindowLevel { center, width } = window;
    match function {
        VoiLutFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (value - center) / width).exp()),
        linear => {
            // LINEAR centres half a level below and spans one less than LINEAR_EXACT.
            let (center, width) = if linear == VoiLutFunction::Linear { (center - 0.5, width - 1.0) } else { (center, width) };
            if value <= center - width / 2.0 {
                0.0
            } else if value > center + width / 2.0 || width == 0.0 {
                // (A LINEAR window of width 1 is a threshold: nothing lies strictly inside it.)
                1.0
            } else {
                (value - center) / width + 0.5
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Read, Seek, SeekFrom};
    use std::path::Path;

    use dicom_core::value::Value;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::{tags, uids};
    use dicom_object::InMemDicomObject;

    use super::{DicomFrame, read_dicom, stated_size};

    /// A byte source that counts what is read of it.
    struct Counted<R> {
        inner: R,
        read: u64,
    }

    impl<R: Read> Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl<R: Seek> Seek for Counted<R> {
        fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(to)
        }
    }

    /// A 256 x 256 ultrasound loop of three frames as a Part 10 file: `samples` samples a pixel
    /// in `photometric`, its Pixel Data `pixels`, in `transfer_syntax`.
    fn loop_file(transfer_syntax: &str, (samples, photometric): (u16, &str), pixels: Value<InMemDicomObject>) -> Vec<u8> {
        let us = |tag, value: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(value));
        let object = InMemDicomObject::from_element_iter([
            DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE)),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.826.0.1.3680043.2")),
            us(tags::SAMPLES_PER_PIXEL, samples),
            DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, PrimitiveValue::from(photometric)),
            us(tags::PLANAR_CONFIGURATION, 0),
            DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from("3")),
            us(tags::ROWS, 256),
            us(tags::COLUMNS, 256),
            us(tags::BITS_ALLOCATED, 8),
            us(tags::BITS_STORED, 8),
            us(tags::HIGH_BIT, 7),
            us(tags::PIXEL_REPRESENTATION, 0),
            DataElement::new(tags::PIXEL_DATA, VR::OB, pixels),
        ]);
        let meta = dicom_object::FileMetaTableBuilder::new()
            .transfer_syntax(transfer_syntax)
            .media_storage_sop_class_uid(uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE)
            .media_storage_sop_instance_uid("1.2.826.0.1.3680043.2");
        let mut bytes = Vec::new();
        object.with_meta(meta).unwrap().write_all(&mut bytes).unwrap();
        bytes
    }

    /// The last of three 256 x 256 RGB frames (192 KiB each, frame k every sample 60 k + 20) of an
    /// uncompressed loop is read without the two before it: less than two frames' bytes are read
    /// in all, and the image is that frame.
    #[test]
    fn a_frame_of_an_uncompressed_loop_is_read_alone() {
        let frame_bytes = 256 * 256 * 3;
        let pixels: Vec<u8> = (0..3_u8).flat_map(|k| std::iter::repeat_n(60 * k + 20, frame_bytes)).collect();
        let bytes = loop_file(uids::EXPLICIT_VR_LITTLE_ENDIAN, (3, "RGB"), PrimitiveValue::from(pixels).into());
        let size = bytes.len() as u64;
        let mut source = Counted { inner: Cursor::new(bytes.clone()), read: 0 };
        let images = read_dicom(Path::new("loop.dcm"), &mut source, size, &[DicomFrame::Last], None).unwrap();
        assert!(images[0].as_ref().unwrap().as_raw().iter().all(|&v| v == 140), "not the last frame");
        assert!(source.read < 2 * frame_bytes as u64, "{} of {size} bytes read", source.read);
        // Two frames read together (each frame an image): the two alone, each itself.
        let mut source = Counted { inner: Cursor::new(bytes), read: 0 };
        let images = read_dicom(Path::new("loop.dcm"), &mut source, size, &[DicomFrame::Last, DicomFrame::First], None).unwrap();
        let values: Vec<u8> = images.iter().map(|image| image.as_ref().unwrap().as_raw()[0]).collect();
        assert!(images.iter().zip(&values).all(|(image, &v)| image.as_ref().unwrap().as_raw().iter().all(|&s| s == v)));
        assert_eq!(values, [140, 20]);
        assert!(source.read < 3 * frame_bytes as u64, "{} of {size} bytes read", source.read);
    }

    /// A compressed loop read without a frame chosen is refused from its header: its fragments
    /// are not read.
    #[test]
    fn a_loop_without_a_frame_chosen_is_refused_before_its_pixels_are_read() {
        // Three fragments of 100 kB, a frame each (never decoded: the file is refused first).
        let fragments = dicom_core::value::PixelFragmentSequence::new(Vec::<u32>::new(), vec![vec![0xAB_u8; 100_000]; 3]);
        let bytes = loop_file(uids::JPEG_BASELINE8_BIT, (1, "MONOCHROME2"), Value::PixelSequence(fragments));
        let size = bytes.len() as u64;
        let mut source = Counted { inner: Cursor::new(bytes), read: 0 };
        let images = read_dicom(Path::new("xa.dcm"), &mut source, size, &[DicomFrame::Only], None).unwrap();
        let error = images[0].as_ref().unwrap_err().to_string();
        assert!(error.contains("holds 3 frames"), "{error}");
        assert!(source.read < 100_000, "{} of {size} bytes read", source.read);
    }

    /// A JPEG 2000 codestream's start: SOC, SIZ (Lsiz 41, Rsiz 0), Xsiz 40 + 3, Ysiz 36 + 5,
    /// XOsiz 3, YOsiz 5, then the rest of SIZ.
    fn codestream() -> Vec<u8> {
        let mut bytes = vec![0xff, 0x4f, 0xff, 0x51, 0, 41, 0, 0];
        for value in [43_u32, 41, 3, 5] {
            bytes.extend(value.to_be_bytes());
        }
        bytes.extend([0; 24]);
        bytes
    }

    #[test]
    fn a_stream_s_own_header_gives_its_size() {
        // The image is the reference grid less its offset.
        assert_eq!(stated_size(&codestream()), Some(("JPEG 2000", 40, 36)));
        // Inside a JP2 wrapper: the signature box, a file type box, then the codestream box.
        let mut jp2 = vec![0, 0, 0, 0x0c, b'j', b'P', b' ', b' ', 0x0d, 0x0a, 0x87, 0x0a];
        jp2.extend([0, 0, 0, 0x14, b'f', b't', b'y', b'p', b'j', b'p', b'2', b' ', 0, 0, 0, 0, b'j', b'p', b'2', b' ']);
        jp2.extend([0, 0, 0, 0, b'j', b'p', b'2', b'c']);
        jp2.extend(codestream());
        assert_eq!(stated_size(&jp2), Some(("JPEG 2000", 40, 36)));
        // The markers inside another stream's bytes (an RLE segment's) are not a header.
        let mut rle = vec![1, 0, 0, 0, 64, 0, 0, 0];
        rle.extend(codestream());
        assert_eq!(stated_size(&rle), None);
        // A JPEG: SOI, an APP0 segment of 16 bytes, fill bytes, then SOF2 (progressive): P 8,
        // Y 9, X 12.
        let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe0, 0, 16];
        jpeg.extend([0; 14]);
        jpeg.extend([0xff, 0xff, 0xc2, 0, 11, 8, 0, 9, 0, 12, 1, 1, 0x11, 0]);
        assert_eq!(stated_size(&jpeg), Some(("JPEG", 12, 9)));
        // A scan before any frame header, and a stream cut inside a segment: no size to judge.
        assert_eq!(stated_size(&[0xff, 0xd8, 0xff, 0xda, 0, 8, 1, 1, 0, 0, 0x3f, 0]), None);
        assert_eq!(stated_size(&jpeg[..24]), None);
    }
}
