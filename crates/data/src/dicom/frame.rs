//! One frame of a multi-frame DICOM file (an ultrasound or angiography cine loop, an enhanced CT
//! or MR volume) made a single-frame image, so that the one-frame pipeline reads it unchanged:
//! its pixel data cut to the frame, and the display attributes the file gives that frame
//! (PS3.3 C.7.6.16: a Functional Group, per frame or shared) put where a single-frame image has
//! them.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::str::FromStr;

use dicom_core::value::{PixelFragmentSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, InMemDicomObject};

/// Which frame of a DICOM file of several is read. Written and read as `--dicom-frame` spells it
/// (only, first, middle, last, or a number).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DicomFrame {
    /// A file of several frames is refused: the backbones classify one 2-D image, and which
    /// frame is meant is the user's call.
    #[default]
    Only,
    /// Frame 1.
    First,
    /// Frame ⌊n/2⌋ + 1 of n (counted from 1): the middle one of an odd count, the later of the
    /// two middle ones of an even count, as `pixel_array[n // 2]` picks it.
    Middle,
    /// Frame n of n.
    Last,
    /// Frame N, counted from 1 as DICOM counts them (a Referenced Frame Number).
    Number(u32),
}

impl DicomFrame {
    /// The 0-based index of the chosen frame among `frames`, or why there is none.
    pub fn index(self, frames: u32) -> Result<u32, String> {
        if frames == 0 {
            return Err("the DICOM file's Number of Frames is 0; correct it (1 for a single image)".into());
        }
        match self {
            DicomFrame::Only if frames == 1 => Ok(0),
            DicomFrame::Only => Err(format!(
                "the DICOM file holds {frames} frames (a cine loop or a volume); medxfer classifies one 2-D image per file: choose the frame \
                 (rank and predict: --dicom-frame first|middle|last|N), or export it as its own file"
            )),
            DicomFrame::First => Ok(0),
            DicomFrame::Middle => Ok(frames / 2),
            DicomFrame::Last => Ok(frames - 1),
            DicomFrame::Number(n) if (1..=frames).contains(&n) => Ok(n - 1),
            DicomFrame::Number(n) => {
                Err(format!("the DICOM file holds {frames} frame(s), so it has no frame {n} (--dicom-frame counts from 1)"))
            }
        }
    }
}

impl FromStr for DicomFrame {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "only" => Ok(DicomFrame::Only),
            "first" => Ok(DicomFrame::First),
            "middle" => Ok(DicomFrame::Middle),
            "last" => Ok(DicomFrame::Last),
            number => match number.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(DicomFrame::Number(n)),
                _ => Err(format!("'{text}' is not a frame: give only, first, middle, last, or a frame number counted from 1")),
            },
        }
    }
}

crate::as_text::serde_as_text!(DicomFrame);

impl fmt::Display for DicomFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DicomFrame::Only => f.write_str("only"),
            DicomFrame::First => f.write_str("first"),
            DicomFrame::Middle => f.write_str("middle"),
            DicomFrame::Last => f.write_str("last"),
            DicomFrame::Number(n) => write!(f, "{n}"),
        }
    }
}

/// The Functional Group sequences (PS3.3 C.7.6.16) that state a frame's display attributes, and
/// the attributes each carries that the one-frame pipeline reads at the top level.
const FUNCTIONAL_GROUPS: [(Tag, &[Tag]); 2] = [
    (tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, &[tags::RESCALE_INTERCEPT, tags::RESCALE_SLOPE, tags::RESCALE_TYPE]),
    (
        tags::FRAME_VOILUT_SEQUENCE,
        &[tags::WINDOW_CENTER, tags::WINDOW_WIDTH, tags::VOILUT_FUNCTION, tags::WINDOW_CENTER_WIDTH_EXPLANATION, tags::VOILUT_SEQUENCE],
    ),
];

/// Where an uncompressed image's Pixel Data lies in its file: `length` bytes from byte `at`, of
/// value representation `vr`.
pub(crate) struct NativePixels {
    pub at: u64,
    pub length: u64,
    pub vr: VR,
}

/// The bytes one frame of an uncompressed image takes: `columns` x `rows` pixels of `samples`
/// samples of `bits_allocated` bits, but two bytes a pixel in YBR_FULL_422, which stores each pair
/// of pixels in four (PS3.3 C.7.6.3.1.2).
pub(crate) fn native_frame_bytes((columns, rows, samples, bits_allocated): (u32, u32, u32, u32), photometric: &str) -> usize {
    let pixels = columns as usize * rows as usize;
    let per_pixel = if photometric == "YBR_FULL_422" { 2 } else { samples as usize } * (bits_allocated as usize / 8);
    pixels.saturating_mul(per_pixel)
}

/// Where frame `index` of `frames` of `frame_bytes` each lies among `length` bytes: None where
/// they are too few (a damaged Samples per Pixel or Number of Frames can state more than any
/// file holds, past 2^64).
fn frame_range(index: u32, frame_bytes: usize, length: u64) -> Option<std::ops::Range<usize>> {
    let start = frame_bytes.checked_mul(index as usize)?;
    let end = start.checked_add(frame_bytes)?;
    (end as u64 <= length).then_some(start..end)
}

fn too_few_bytes(length: u64, frames: u32, frame_bytes: usize) -> String {
    format!(
        "a damaged DICOM file: its Pixel Data holds {length} bytes, too few for {frames} frames of {frame_bytes}; export it again from the PACS or viewer"
    )
}

/// Frame `index` of the uncompressed image of `frames` frames in `source` (its Pixel Data at
/// `pixels`), read alone and put in `object` (the file's header) as its Pixel Data of one frame.
pub(crate) fn read_native_frame<R: Read + Seek>(
    object: &mut DefaultDicomObject,
    source: &mut R,
    pixels: &NativePixels,
    (index, frames): (u32, u32),
    geometry: (u32, u32, u32, u32),
    photometric: &str,
) -> Result<(), String> {
    let frame_bytes = native_frame_bytes(geometry, photometric);
    let range = frame_range(index, frame_bytes, pixels.length).ok_or_else(|| too_few_bytes(pixels.length, frames, frame_bytes))?;
    let mut frame = vec![0_u8; frame_bytes];
    source.seek(SeekFrom::Start(pixels.at + range.start as u64)).and_then(|_| source.read_exact(&mut frame)).map_err(|e| {
        format!("a damaged DICOM file: its Pixel Data ends before frame {} does ({e}); export it again from the PACS or viewer", index + 1)
    })?;
    object.put(DataElement::new(tags::PIXEL_DATA, pixels.vr, PrimitiveValue::from(frame)));
    object.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from("1")));
    Ok(())
}

/// `object` (of `frames` frames, Samples per Pixel `samples`, Bits Allocated `bits_allocated`,
/// `columns` x `rows`, in colour space `photometric`) reduced to its frame `index`: the Pixel
/// Data cut to that frame (where it holds `frames` > 1) and its Functional Groups' rescale and
/// window put at the top level, as
/// a single-frame image states them, replacing any top-level ones. PS3.3 C.7.6.16 puts a macro in
/// the shared group or the per-frame one, not both; a file that has both is read per-frame
/// first, as pixelmed reads it. A file with neither group and one frame is left as it is.
pub(crate) fn keep_frame(
    object: &mut DefaultDicomObject,
    (index, frames): (u32, u32),
    geometry: (u32, u32, u32, u32),
    photometric: &str,
) -> Result<(), String> {
    apply_functional_groups(object, index);
    if frames == 1 {
        return Ok(());
    }
    let element = object.take_element(tags::PIXEL_DATA).map_err(|e| format!("the DICOM file has no Pixel Data ({e})"))?;
    put_frame_pixels(object, &element, (index, frames), geometry, photometric)
}

/// Frame `index` of `element`, the Pixel Data of an image of `frames` frames (Samples per Pixel,
/// Bits Allocated, columns and rows as `geometry` gives them, in colour space `photometric`), put in
/// `object` as its Pixel Data of one frame.
pub(crate) fn put_frame_pixels(
    object: &mut DefaultDicomObject,
    element: &InMemElement,
    (index, frames): (u32, u32),
    geometry: (u32, u32, u32, u32),
    photometric: &str,
) -> Result<(), String> {
    let cut = match element.value() {
        Value::PixelSequence(sequence) => {
            let fragments = frame_fragments(sequence, index, frames)?;
            DataElement::new(tags::PIXEL_DATA, VR::OB, Value::PixelSequence(PixelFragmentSequence::new(Vec::<u32>::new(), fragments)))
        }
        Value::Primitive(value) => {
            let frame_bytes = native_frame_bytes(geometry, photometric);
            let bytes = value.to_bytes();
            let range = frame_range(index, frame_bytes, bytes.len() as u64)
                .ok_or_else(|| too_few_bytes(bytes.len() as u64, frames, frame_bytes))?;
            DataElement::new(tags::PIXEL_DATA, element.vr(), PrimitiveValue::from(bytes[range].to_vec()))
        }
        Value::Sequence(_) => return Err("the DICOM file's Pixel Data is a sequence of items, not an image; export it again".into()),
    };
    object.put(cut);
    object.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from("1")));
    Ok(())
}

/// The fragments of frame `index` of an encapsulated image of `frames` frames: one fragment a
/// frame, or, where a frame spans several, those its Basic Offset Table places in it (PS3.5
/// A.4). Without the table the frames' bounds are unknown, and the file is refused.
fn frame_fragments(sequence: &PixelFragmentSequence<Vec<u8>>, index: u32, frames: u32) -> Result<Vec<Vec<u8>>, String> {
    let fragments = sequence.fragments();
    if fragments.len() == frames as usize {
        return Ok(vec![fragments[index as usize].clone()]);
    }
    let offsets = sequence.offset_table();
    if offsets.len() != frames as usize {
        return Err(format!(
            "the DICOM file holds {frames} frames in {} fragments and no Basic Offset Table to say which are whose; export the frame as its own file",
            fragments.len()
        ));
    }
    let (start, end) = (u64::from(offsets[index as usize]), offsets.get(index as usize + 1).map_or(u64::MAX, |&o| u64::from(o)));
    // Each fragment's offset: from the first fragment's item tag, 8 bytes of item header each.
    let mut at = 0_u64;
    let mut kept = Vec::new();
    for fragment in fragments {
        if (start..end).contains(&at) {
            kept.push(fragment.clone());
        }
        at += 8 + fragment.len() as u64;
    }
    if kept.is_empty() {
        return Err(format!("the DICOM file's Basic Offset Table places no fragment in frame {}; export it again", index + 1));
    }
    Ok(kept)
}

/// The rescale and window the Functional Groups give frame `index`, put at the top level, and
/// the groups removed (dicom-rs would read them again, by another rule).
fn apply_functional_groups(object: &mut DefaultDicomObject, index: u32) {
    let item_of = |tag: Tag, at: usize| -> Option<InMemDicomObject> {
        object.get(tag).and_then(|element| element.items()).and_then(|items| items.get(at)).cloned()
    };
    let shared = item_of(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, 0);
    let per_frame = item_of(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, index as usize);
    if shared.is_none() && per_frame.is_none() {
        return;
    }
    for (group, attributes) in FUNCTIONAL_GROUPS {
        let macro_item =
            |groups: &Option<InMemDicomObject>| -> Option<InMemDicomObject> { groups.as_ref()?.get(group)?.items()?.first().cloned() };
        let Some(item) = macro_item(&per_frame).or_else(|| macro_item(&shared)) else { continue };
        for &attribute in attributes {
            object.remove_element(attribute);
            if let Some(element) = item.get(attribute) {
                object.put(element.clone());
            }
        }
    }
    object.remove_element(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    object.remove_element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
}
