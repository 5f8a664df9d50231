#![allow(clippy::unwrap_used)]
//! DICOM files decoded as pydicom displays them (tests/fixtures/make_dicom.py: the Modality and
//! VOI LUTs, MONOCHROME1 inverted, to 8 bits), and the files a user's folder may hold that are
//! not one 2-D image, refused with the file named.

mod common;

use std::path::PathBuf;

use medxfer_data::{DicomFrame, Rendering, decode_rgb8, load_image, load_image_frame, load_image_frames, load_rgb8};

fn fixtures() -> PathBuf {
    common::fixtures("dicom")
}

#[test]
fn every_dicom_case_decodes_as_pydicom_displays_it() {
    let expected = common::expected(&fixtures());
    // Uncompressed, RLE, JPEG 2000 and HTJ2K lossless, JPEG-LS (near-lossless too: pure_jpegls and
    // CharLS reconstruct the same samples): the same 8 bits. JPEG: jpeg-decoder (dicom-rs) and
    // libjpeg-turbo (Pillow) differ in IDCT and chroma upsampling by a few levels, as for the
    // plain JPEGs.
    for (name, max_allowed, mean_allowed) in [
        ("ct_window.dcm", 0, 0.0),
        ("IM000001", 0, 0.0),
        ("mr_12bit_minmax.dcm", 0, 0.0),
        ("cr_monochrome1.dcm", 0, 0.0),
        ("dx_inverse.dcm", 0, 0.0),
        ("dx_monochrome1_inverse.dcm", 0, 0.0),
        ("sigmoid.dcm", 0, 0.0),
        ("voi_lut.dcm", 0, 0.0),
        ("rgb_implicit.dcm", 0, 0.0),
        ("rgb_planar.dcm", 0, 0.0),
        ("us_ybr_full.dcm", 0, 0.0),
        ("us_ybr_full_422.dcm", 0, 0.0),
        ("us_ybr_rle.dcm", 0, 0.0),
        ("us_ybr_422_rle.dcm", 0, 0.0),
        ("mr_rle.dcm", 0, 0.0),
        ("mr_j2k.dcm", 0, 0.0),
        ("mr_htj2k.dcm", 0, 0.0),
        ("ct_jpegls.dcm", 0, 0.0),
        ("mr_jpegls.dcm", 0, 0.0),
        ("xa_jpegls_near.dcm", 0, 0.0),
        ("gray_jpeg.dcm", 2, 0.5),
        ("dermoscopy_ybr_jpeg.dcm", 3, 1.0),
    ] {
        let decoded = load_image(&fixtures().join(name)).unwrap();
        assert!(!decoded.faint, "{name}: a displayed DICOM is never faint");
        let (max, mean, theirs) = common::differences(name, &decoded.image, &expected[name]);
        assert!(max <= max_allowed && mean <= mean_allowed, "{name}: max difference {max}, mean {mean:.3}");
        // Every case spans most of the range: a wrong window or inversion would not.
        let (low, high) = (theirs.iter().min().unwrap(), theirs.iter().max().unwrap());
        assert!(high - low > 150, "{name}: the fixture spans {low}..{high}");
    }
}

/// Each frame of a file of several, chosen by number, and first, middle (⌊n/2⌋ + 1) and last:
/// a cine loop uncompressed in RGB (with a thumbnail's own Pixel Data before the image's too) and
/// in YBR_FULL_422, under RLE, as JPEG of two fragments a
/// frame (found by the Basic Offset Table), a JPEG-LS series, and an enhanced CT volume whose rescale and window
/// are its Functional Groups' (a frame's own before the shared, both before the top level's).
#[test]
fn the_chosen_frame_of_a_multi_frame_dicom_file_decodes_as_pydicom_displays_it() {
    let expected = common::expected(&fixtures());
    for (name, frames, max_allowed, mean_allowed) in [
        ("us_cine.dcm", 3, 0, 0.0),
        ("us_cine_icon.dcm", 3, 0, 0.0),
        ("us_cine_deflate.dcm", 3, 0, 0.0),
        ("us_cine_422.dcm", 2, 0, 0.0),
        ("us_cine_rle.dcm", 3, 0, 0.0),
        ("xa_cine_jpeg.dcm", 3, 2, 0.5),
        ("mr_jpegls_frames.dcm", 3, 0, 0.0),
        ("ct_enhanced.dcm", 3, 0, 0.0),
        ("ct_enhanced_rle.dcm", 3, 0, 0.0),
        ("xa_enhanced_lut.dcm", 3, 0, 0.0),
    ] {
        let chosen = (1..=frames).map(|n| (DicomFrame::Number(n), n)).chain([
            (DicomFrame::First, 1),
            (DicomFrame::Middle, frames / 2 + 1),
            (DicomFrame::Last, frames),
        ]);
        for (frame, number) in chosen {
            let case = format!("{name} frame {frame}");
            let decoded = load_image_frame(&fixtures().join(name), frame).unwrap();
            let truth = &expected[&format!("{name}#{number}")];
            let (max, mean, theirs) = common::differences(&case, &decoded.image, truth);
            assert!(max <= max_allowed && mean <= mean_allowed, "{case}: max difference {max}, mean {mean:.3}");
            let (low, high) = (theirs.iter().min().unwrap(), theirs.iter().max().unwrap());
            assert!(high - low > 150, "{case}: the fixture spans {low}..{high}");
            // The frames differ: a decoder that read another frame would not pass.
            for other in (1..=frames).filter(|&other| other != number) {
                let (max, _, _) = common::differences(&case, &decoded.image, &expected[&format!("{name}#{other}")]);
                assert!(max > 20, "{case}: frame {other} looks the same");
            }
        }
        let path = fixtures().join(name);
        // Read together, the file parsed once (each frame an image), last first: each frame as
        // read alone (pydicom's, above); a frame beyond the file's is that frame's error alone.
        let asked: Vec<DicomFrame> = (1..=frames + 1).rev().map(DicomFrame::Number).collect();
        let together = load_image_frames(&path, &asked, Rendering::default()).unwrap();
        assert_eq!(together.len(), asked.len());
        let error = together[0].as_ref().unwrap_err().to_string();
        assert!(error.contains(&format!("has no frame {}", frames + 1)), "{name}: {error}");
        for (decoded, &frame) in together.iter().zip(&asked).skip(1) {
            assert_eq!(
                decoded.as_ref().unwrap().image,
                load_image_frame(&path, frame).unwrap().image,
                "{name} frame {frame} read together"
            );
        }
        let error = load_rgb8(&path).unwrap_err().to_string();
        assert!(error.contains(&format!("holds {frames} frames")) && error.contains("--dicom-frame"), "{name}: {error}");
        let error = load_image_frame(&path, DicomFrame::Number(frames + 1)).unwrap_err().to_string();
        assert!(error.starts_with(&path.display().to_string()) && error.contains(&format!("has no frame {}", frames + 1)), "{error}");
    }
    // One frame: any choice but a number beyond it reads it.
    let single = load_rgb8(&fixtures().join("ct_window.dcm")).unwrap();
    for frame in [DicomFrame::First, DicomFrame::Middle, DicomFrame::Last, DicomFrame::Number(1)] {
        assert_eq!(load_image_frame(&fixtures().join("ct_window.dcm"), frame).unwrap().image, single, "{frame}");
    }
    // Fragments that the file does not say are whose: refused, not guessed.
    let path = fixtures().join("xa_cine_no_offsets.dcm");
    let error = load_image_frame(&path, DicomFrame::Middle).unwrap_err().to_string();
    assert!(error.contains("holds 3 frames in 6 fragments and no Basic Offset Table"), "{error}");
    // Fewer bytes than its frames need (Number of Frames edited from 3 to 4): refused.
    let mut bytes = std::fs::read(fixtures().join("us_cine.dcm")).unwrap();
    let number_of_frames = [0x28, 0x00, 0x08, 0x00, b'I', b'S', 2, 0, b'3', b' '];
    let at = bytes.windows(number_of_frames.len()).position(|w| w == number_of_frames).unwrap();
    bytes[at + 8] = b'4';
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.dcm");
    std::fs::write(&path, &bytes).unwrap();
    let error = load_image_frame(&path, DicomFrame::Last).unwrap_err().to_string();
    assert!(error.contains("Pixel Data holds 972 bytes, too few for 4 frames of 324"), "{error}");
    assert!(load_image_frame(&path, DicomFrame::First).is_ok());
    // A header whose sizes multiply past any file (13,000 x 13,000 pixels of 65,535 samples, the
    // last of 4,294,967,295 frames: an offset beyond 2^64): too few bytes, not an overflow.
    {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_dictionary_std::tags;
        let mut object = dicom_object::open_file(fixtures().join("us_cine.dcm")).unwrap();
        for (tag, value) in [(tags::ROWS, 13_000), (tags::COLUMNS, 13_000), (tags::SAMPLES_PER_PIXEL, 65_535)] {
            object.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value as u16)));
        }
        object.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from("4294967295")));
        let huge = dir.path().join("huge.dcm");
        object.write_to_file(&huge).unwrap();
        let error = load_image_frame(&huge, DicomFrame::Last).unwrap_err().to_string();
        assert!(error.contains("Pixel Data holds 972 bytes, too few for 4294967295 frames"), "{error}");
    }
    // No frames at all: refused for every choice (the last frame's index would underflow).
    bytes[at + 8] = b'0';
    std::fs::write(&path, &bytes).unwrap();
    for frame in [DicomFrame::Only, DicomFrame::First, DicomFrame::Middle, DicomFrame::Last] {
        let error = load_image_frame(&path, frame).unwrap_err().to_string();
        assert!(error.contains("Number of Frames is 0"), "{frame}: {error}");
    }
}

/// The choice as `--dicom-frame` spells it, and back.
#[test]
fn a_frame_choice_reads_as_it_prints() {
    for (text, frame) in [
        ("only", DicomFrame::Only),
        ("first", DicomFrame::First),
        ("middle", DicomFrame::Middle),
        ("last", DicomFrame::Last),
        ("12", DicomFrame::Number(12)),
    ] {
        assert_eq!(text.parse::<DicomFrame>().unwrap(), frame);
        assert_eq!(frame.to_string(), text);
    }
    for bad in ["0", "-1", "centre", ""] {
        assert!(bad.parse::<DicomFrame>().unwrap_err().contains("counted from 1"), "{bad}");
    }
}

/// A DICOM object without Pixel Data (a report, a presentation state) is told from the images by
/// its elements' headers, a segmentation by its storage class; images of every kind, another
/// format's file, and a damaged copy (left to its read, which names the problem) are not such
/// objects.
#[test]
fn a_dicom_object_without_pixel_data_is_told_from_the_images() {
    use medxfer_data::holds_no_image;
    assert!(holds_no_image(&fixtures().join("no_pixels.dcm")));
    // Pixels, but a segmentation's masks.
    assert!(holds_no_image(&fixtures().join("segmentation.dcm")));
    for image in ["ct_enhanced.dcm", "gray_jpeg.dcm", "mr_j2k.dcm", "us_cine_deflate.dcm", "two_frames.dcm"] {
        assert!(!holds_no_image(&fixtures().join(image)), "{image}");
    }
    assert!(!holds_no_image(&common::fixtures("formats").join("gray.jpg")));
    assert!(!holds_no_image(&fixtures().join("missing.dcm")));
    // Without extension, found by its magic word, as a PACS export names it.
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixtures().join("no_pixels.dcm")).unwrap();
    std::fs::write(dir.path().join("IM000009"), &bytes).unwrap();
    assert!(holds_no_image(&dir.path().join("IM000009")));
    // Cut inside its meta group.
    std::fs::write(dir.path().join("cut.dcm"), &bytes[..200]).unwrap();
    assert!(!holds_no_image(&dir.path().join("cut.dcm")));
}

#[test]
fn dicom_files_that_are_not_one_image_are_refused_naming_the_file_and_the_fix() {
    for (name, expected) in [
        ("two_frames.dcm", "holds 2 frames"),
        ("no_pixels.dcm", "no Pixel Data"),
        ("segmentation.dcm", "is a segmentation: its frames are masks, not an image to classify"),
        ("zero_width_window.dcm", "width at least 1 for LINEAR"),
        ("palette.dcm", "PALETTE COLOR with 1 samples of 8 bits"),
        ("rgb_jpegls.dcm", "colour (3 samples per pixel) compressed as JPEG-LS"),
    ] {
        let path = fixtures().join(name);
        let error = load_rgb8(&path).unwrap_err().to_string();
        assert!(error.starts_with(&path.display().to_string()) && error.contains(expected), "{name}: {error}");
    }
    // A stream whose own header states another width than the file's (one byte of it set to
    // 0xff): refused from that header, before the decoder allocates and decodes it (a JPEG 2000
    // of 600 million pixels took openjp2 4 s, a JPEG of 1.3 billion jpeg-decoder 6 s). The byte
    // 7 after the header's marker: a JPEG frame header's width's first (after the length,
    // precision and height; JPEG-LS's too), a JPEG 2000 SIZ segment's Xsiz's second (after Lsiz
    // and Rsiz).
    for (name, header, at, expected) in [
        ("mr_j2k.dcm", [0xff, 0x51], 7, "its JPEG 2000 image states 16711720 x 36 pixels, its header 40 x 36"),
        ("mr_htj2k.dcm", [0xff, 0x51], 7, "its JPEG 2000 image states 16711720 x 36 pixels, its header 40 x 36"),
        ("gray_jpeg.dcm", [0xff, 0xc0], 7, "its JPEG image states 65292 x 9 pixels, its header 12 x 9"),
        ("ct_jpegls.dcm", [0xff, 0xf7], 7, "its JPEG image states 65292 x 9 pixels, its header 12 x 9"),
    ] {
        let mut bytes = std::fs::read(fixtures().join(name)).unwrap();
        let marker = bytes.windows(2).position(|w| w == header).unwrap();
        bytes[marker + at] = 0xff;
        let error = decode_rgb8(&fixtures().join(name), &bytes).unwrap_err().to_string();
        assert!(error.contains(expected), "{name}: {error}");
    }
    // A Presentation LUT Shape the standard does not define: refused, not guessed.
    let mut bytes = std::fs::read(fixtures().join("dx_inverse.dcm")).unwrap();
    let at = bytes.windows(7).position(|w| w == b"INVERSE").unwrap();
    bytes[at..at + 7].copy_from_slice(b"REVERSE");
    let error = decode_rgb8(&fixtures().join("dx_inverse.dcm"), &bytes).unwrap_err().to_string();
    assert!(error.contains("Presentation LUT Shape is REVERSE; the standard allows IDENTITY and INVERSE"), "{error}");
    // A JPEG-LS image whose samples use more bits than the file says it stores (Bits Stored
    // edited from 12 to 10): refused, not cut to the low bits.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bits.dcm");
    let mut bytes = std::fs::read(fixtures().join("ct_jpegls.dcm")).unwrap();
    let bits_stored = [0x28, 0x00, 0x01, 0x01, b'U', b'S', 2, 0, 12, 0];
    let at = bytes.windows(bits_stored.len()).position(|w| w == bits_stored).unwrap();
    bytes[at + 8] = 10;
    std::fs::write(&path, &bytes).unwrap();
    let error = load_rgb8(&path).unwrap_err().to_string();
    assert!(error.starts_with(&path.display().to_string()) && error.contains("beyond its 10 bits stored"), "{error}");
}

#[test]
fn a_damaged_dicom_file_is_an_error_naming_it_wherever_it_is_cut() {
    let path = fixtures().join("ct_window.dcm");
    let bytes = std::fs::read(&path).unwrap();
    let whole = decode_rgb8(&path, &bytes).unwrap();
    // Cut in the preamble, the file meta group, the data set's attributes and the pixel data
    // (the last 216 bytes: 9 x 12 16-bit samples).
    for cut in [0, 100, 131, 140, 300, 500, bytes.len() - 216, bytes.len() - 100, bytes.len() - 1] {
        let error = decode_rgb8(&path, &bytes[..cut]).map(|image| image == whole);
        let error = error.unwrap_err().to_string();
        assert!(error.starts_with(&path.display().to_string()), "cut at {cut}: {error}");
    }
    // An RLE frame whose header claims 1000 segments: dicom-rs's decoder slices past its
    // fragment (a panic there), which is this file's error.
    let path = fixtures().join("mr_rle.dcm");
    let mut bytes = std::fs::read(&path).unwrap();
    let header = [2, 0, 0, 0, 64, 0, 0, 0];
    let at = bytes.windows(8).position(|w| w == header).unwrap();
    bytes[at..at + 4].copy_from_slice(&1000_u32.to_le_bytes());
    let error = decode_rgb8(&path, &bytes).unwrap_err().to_string();
    assert!(error.starts_with(&path.display().to_string()) && error.contains("a damaged DICOM file"), "{error}");
    // A JPEG renamed .dcm is not taken for a JPEG either.
    let jpeg = common::fixtures("formats").join("gray.jpg");
    let renamed = fixtures().join("renamed.dcm");
    let error = decode_rgb8(&renamed, &std::fs::read(jpeg).unwrap()).unwrap_err().to_string();
    assert!(error.contains("not a DICOM Part 10 file"), "{error}");
}

#[test]
fn a_length_field_beyond_the_file_is_refused_before_it_is_read() {
    // dicom-rs would zero-fill the stated length (here 2 GiB) before failing: seconds and
    // gigabytes per file. In the file meta group (its File Meta Information Version, OB) and in
    // the data set (the Pixel Data, OW).
    let path = fixtures().join("ct_window.dcm");
    let original = std::fs::read(&path).unwrap();
    for header in [&[0x02, 0x00, 0x01, 0x00, b'O', b'B', 0, 0][..], &[0xe0, 0x7f, 0x10, 0x00, b'O', b'W', 0, 0]] {
        let mut bytes = original.clone();
        let at = bytes.windows(8).position(|w| w == header).unwrap() + 8;
        bytes[at..at + 4].copy_from_slice(&0x7fff_fff0_u32.to_le_bytes());
        let error = decode_rgb8(&path, &bytes).unwrap_err().to_string();
        assert!(error.contains("states 2147483632 bytes, more than the whole file's 864"), "{error}");
        // Reading the Patient ID alone (the header up to the Pixel Data) checks them too.
        let dir = tempfile::tempdir().unwrap();
        let damaged = dir.path().join("IM000002");
        std::fs::write(&damaged, &bytes).unwrap();
        let error = medxfer_data::dicom_patient_id(&damaged).unwrap_err().to_string();
        assert!(error.starts_with(&damaged.display().to_string()) && error.contains("more than the whole file's 864"), "{error}");
    }
}

#[test]
fn a_folder_s_dicom_files_are_found_by_extension_or_by_their_magic_word() {
    let dir = tempfile::tempdir().unwrap();
    let ct = std::fs::read(fixtures().join("ct_window.dcm")).unwrap();
    let jpeg = std::fs::read(common::fixtures("formats").join("gray.jpg")).unwrap();
    for (name, bytes, image) in [
        ("slice.DCM", &ct, true),
        ("slice.dicom", &ct, true),
        ("IM000001", &ct, true),
        // A UID-named file: its "extension" is the UID's last number.
        ("1.2.840.113619.2.55.3.320", &ct, true),
        ("photo.jpg", &jpeg, true),
        // The index of a DICOM export holds the magic word and no image.
        ("DICOMDIR", &ct, false),
        ("README", &jpeg, false),
        ("notes.txt", &ct, false),
        ("scan.v2", &ct, false),
        ("empty", &Vec::new(), false),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(medxfer_data::is_image_file(&path), image, "{name}");
        if image {
            load_rgb8(&path).unwrap();
        }
    }
}

#[test]
fn a_dicom_file_s_patient_id_is_read_from_its_header() {
    let id = |name: &str| medxfer_data::dicom_patient_id(&fixtures().join(name));
    assert_eq!(id("ct_window.dcm").unwrap().as_deref(), Some("TJ-0042"));
    assert_eq!(id("IM000001").unwrap().as_deref(), Some("TJ-0042"));
    assert_eq!(id("ct_jpegls.dcm").unwrap().as_deref(), Some("TJ-0043"));
    assert_eq!(id("mr_12bit_minmax.dcm").unwrap(), None);
    assert_eq!(id("expected.safetensors").unwrap(), None);
    assert_eq!(medxfer_data::dicom_patient_id(&common::fixtures("formats").join("gray.jpg")).unwrap(), None);
    let dir = tempfile::tempdir().unwrap();
    // A file an older system wrote without the 128-byte preamble (it starts at the magic word),
    // found by its extension: the same header, the same ID and image.
    let bare = dir.path().join("bare.dcm");
    std::fs::write(&bare, &std::fs::read(fixtures().join("ct_window.dcm")).unwrap()[128..]).unwrap();
    assert_eq!(medxfer_data::dicom_patient_id(&bare).unwrap().as_deref(), Some("TJ-0042"));
    assert_eq!(load_rgb8(&bare).unwrap(), load_rgb8(&fixtures().join("ct_window.dcm")).unwrap());
    // A header cut short: an error naming the file.
    let cut = dir.path().join("cut.dcm");
    std::fs::write(&cut, &std::fs::read(fixtures().join("ct_window.dcm")).unwrap()[..200]).unwrap();
    let error = medxfer_data::dicom_patient_id(&cut).unwrap_err().to_string();
    assert!(error.starts_with(&cut.display().to_string()), "{error}");
}

/// `--dicom-frame all` and `every:K`: each frame of a loop an entry of its own, in the loop's
/// place, with its label, group and part (frames 1, 1 + K, ... of each file; a single image, a
/// DICOM slice or not, stays one entry); the cache built from them holds each frame as pydicom
/// displays it, and its index tells one order of a loop's frames from another.
#[test]
fn every_frame_of_a_loop_is_an_image_of_its_own_in_the_loop_s_group() {
    use medxfer_data::{Entry, FrameSelection, ImageCache, Orientation, Part, frame_count, frame_entries, transform};
    let expected = common::expected(&fixtures());
    let entry = |path: &str, label: u32, split: Part| Entry { path: path.into(), label, group: format!("g-{path}"), split, frame: None };
    let entries =
        [entry("us_cine.dcm", 1, Part::Train), entry("ct_window.dcm", 0, Part::Val), entry("mr_jpegls_frames.dcm", 2, Part::Test)];
    let listed = |selection: FrameSelection| -> Vec<(String, Option<u32>, u32, String, Part)> {
        frame_entries(&fixtures(), &entries, selection, Orientation::Stored)
            .unwrap()
            .into_iter()
            .map(|e| (e.path, e.frame, e.label, e.group, e.split))
            .collect()
    };
    let row = |path: &str, frame: Option<u32>, label: u32, split: Part| (path.to_string(), frame, label, format!("g-{path}"), split);
    assert_eq!(
        listed(FrameSelection::Every(1)),
        [
            row("us_cine.dcm", Some(1), 1, Part::Train),
            row("us_cine.dcm", Some(2), 1, Part::Train),
            row("us_cine.dcm", Some(3), 1, Part::Train),
            row("ct_window.dcm", None, 0, Part::Val),
            row("mr_jpegls_frames.dcm", Some(1), 2, Part::Test),
            row("mr_jpegls_frames.dcm", Some(2), 2, Part::Test),
            row("mr_jpegls_frames.dcm", Some(3), 2, Part::Test),
        ]
    );
    assert_eq!(
        listed(FrameSelection::Every(2)),
        [
            row("us_cine.dcm", Some(1), 1, Part::Train),
            row("us_cine.dcm", Some(3), 1, Part::Train),
            row("ct_window.dcm", None, 0, Part::Val),
            row("mr_jpegls_frames.dcm", Some(1), 2, Part::Test),
            row("mr_jpegls_frames.dcm", Some(3), 2, Part::Test),
        ]
    );
    assert_eq!(frame_entries(&fixtures(), &entries, FrameSelection::One(DicomFrame::Middle), Orientation::Stored).unwrap(), entries);
    assert_eq!(frame_count(&fixtures().join("ct_enhanced.dcm"), Orientation::Stored).unwrap(), 3);
    assert_eq!(frame_count(&fixtures().join("IM000001"), Orientation::Stored).unwrap(), 1);
    assert_eq!(frame_count(&common::fixtures("formats").join("gray.jpg"), Orientation::Stored).unwrap(), 1);

    let frames = frame_entries(&fixtures(), &entries, FrameSelection::Every(1), Orientation::Stored).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache =
        ImageCache::open_or_build_frame(dir.path(), "loops", &fixtures(), &frames, (16, DicomFrame::Only, Rendering::default()), false)
            .unwrap();
    assert_eq!(cache.len(), frames.len());
    for (i, entry) in frames.iter().enumerate() {
        let name = format!("{}#{}", entry.path, entry.frame.unwrap_or(1));
        let truth = expected.get(&name).unwrap_or_else(|| &expected[&entry.path]);
        let (height, width, _) = truth.dims3().unwrap();
        let truth = image::RgbImage::from_raw(width as u32, height as u32, truth.flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap();
        assert_eq!(cache.read(i).unwrap(), transform::resize_shorter(&truth, 16).unwrap(), "{name}");
    }
    // The loop's frames in another order: not read from the cache above, each frame where it
    // now is.
    let mut reversed = frames.clone();
    reversed[..3].reverse();
    let other =
        ImageCache::open_or_build_frame(dir.path(), "loops", &fixtures(), &reversed, (16, DicomFrame::Only, Rendering::default()), false)
            .unwrap();
    assert_eq!(other.read(0).unwrap(), cache.read(2).unwrap());
    assert_ne!(other.read(0).unwrap(), cache.read(0).unwrap());
    // A count more than the file can hold (a damaged header: a billion frames of a 2 kB file)
    // is the file's error, not a billion entries: us_cine.dcm's frames are 324 bytes, so 4 fit in
    // its 1.5 kB (the fourth's pixels then missing: that frame's error when read), 5 do not; a
    // compressed file's frames take at least 8 bytes.
    let stating = |name: &str, frames: &str| -> PathBuf {
        let mut object = dicom_object::open_file(fixtures().join(name)).unwrap();
        object.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::NUMBER_OF_FRAMES,
            dicom_core::VR::IS,
            dicom_core::PrimitiveValue::from(frames),
        ));
        let damaged = dir.path().join(format!("{frames}-{name}"));
        object.write_to_file(&damaged).unwrap();
        damaged
    };
    assert_eq!(frame_count(&stating("us_cine.dcm", "4"), Orientation::Stored).unwrap(), 4);
    for (name, frames) in [("us_cine.dcm", "5"), ("us_cine.dcm", "1000000000"), ("xa_cine_jpeg.dcm", "1000")] {
        let damaged = stating(name, frames);
        let error = frame_count(&damaged, Orientation::Stored).unwrap_err().to_string();
        assert!(error.starts_with(&damaged.display().to_string()) && error.contains(&format!("states {frames} frames")), "{error}");
    }
    // A file whose header cannot be read is named, with the others that cannot.
    let cut = dir.path().join("cut.dcm");
    std::fs::write(&cut, &std::fs::read(fixtures().join("us_cine.dcm")).unwrap()[..300]).unwrap();
    std::fs::copy(fixtures().join("us_cine.dcm"), dir.path().join("whole.dcm")).unwrap();
    let given = [entry("whole.dcm", 0, Part::Train), entry("cut.dcm", 0, Part::Train), entry("absent.dcm", 0, Part::Train)];
    let error = frame_entries(dir.path(), &given, FrameSelection::Every(1), Orientation::Stored).unwrap_err().to_string();
    assert!(error.starts_with("2 of 3 image(s) could not be read") && error.contains("cut.dcm") && error.contains("absent.dcm"), "{error}");
}
