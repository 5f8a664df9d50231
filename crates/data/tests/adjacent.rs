#![allow(clippy::unwrap_used)]
//! 2.5-D images (`--adjacent-slices`): each chosen frame of a NIfTI volume or a DICOM file of
//! several frames made of the frame before (red), itself (green) and the frame after (blue), the
//! ends repeating themselves; each channel the gray image its frame gives alone, as the fixtures'
//! nibabel and pydicom truths show them. A colour image, or three windows, is refused.

mod common;

use std::collections::HashMap;

use candle_core::Tensor;
use medxfer_data::{DicomFrame, Orientation, Rendering, Window, load_image_frames};

/// The image 2.5-D frame `k` (from 1, of `count`) of `file` must be: channel c of its truth's
/// neighbour `k - 1`, `k` or `k + 1` (clamped), from `expected`'s "<file>#<frame>" images.
fn assembled(expected: &HashMap<String, Tensor>, file: &str, k: u32, count: u32) -> Tensor {
    let frame = |n: u32, channel: usize| expected[&format!("{file}#{n}")].narrow(2, channel, 1).unwrap();
    Tensor::cat(&[frame(k.max(2) - 1, 0), frame(k, 1), frame((k + 1).min(count), 2)], 2).unwrap()
}

#[test]
fn each_frame_is_its_neighbours_and_itself_as_red_green_and_blue() {
    let adjacent = Rendering { adjacent_slices: true, ..Rendering::default() };
    for (folder, file, count) in
        [("nifti", "ct_window.nii.gz", 4), ("nifti", "mr_12bit_big_endian.nii", 3), ("dicom", "ct_enhanced.dcm", 3)]
    {
        let expected = common::expected(&common::fixtures(folder));
        let path = common::fixtures(folder).join(file);
        let asked: Vec<DicomFrame> = (1..=count).map(DicomFrame::Number).chain([DicomFrame::Middle]).collect();
        let images = load_image_frames(&path, &asked, adjacent).unwrap();
        for (k, image) in (1..=count).chain([count / 2 + 1]).zip(images) {
            let case = format!("{file} adjacent frame {k}");
            let image = image.unwrap().image;
            let (max, _, _) = common::differences(&case, &image, &assembled(&expected, file, k, count));
            assert_eq!(max, 0, "{case}");
            // Not gray: the neighbours differ.
            assert!(image.pixels().any(|p| p.0[0] != p.0[1] || p.0[1] != p.0[2]), "{case}");
        }
        // A frame beyond the file: its format's own error, the others read.
        let images = load_image_frames(&path, &[DicomFrame::Number(count + 1), DicomFrame::First], adjacent).unwrap();
        let error = images[0].as_ref().unwrap_err().to_string();
        assert!(error.contains(&format!("{}", count + 1)) && error.starts_with(&path.display().to_string()), "{error}");
        assert!(images[1].is_ok());
    }
    // Reoriented first: the frames are the reoriented slices.
    let expected = common::expected(&common::fixtures("nifti"));
    let path = common::fixtures("nifti").join("t1_sagittal.nii.gz");
    let reoriented = Rendering { adjacent_slices: true, orientation: Orientation::Canonical, ..Rendering::default() };
    let image = load_image_frames(&path, &[DicomFrame::Number(5)], reoriented).unwrap().remove(0).unwrap().image;
    let (max, _, _) = common::differences("canonical t1", &image, &assembled(&expected, "canonical/t1_sagittal.nii.gz", 5, 9));
    assert_eq!(max, 0);
}

#[test]
fn a_single_gray_image_is_itself_and_colour_is_refused() {
    let adjacent = Rendering { adjacent_slices: true, ..Rendering::default() };
    let gray = common::fixtures("formats").join("gray.jpg");
    let image = load_image_frames(&gray, &[DicomFrame::Only], adjacent).unwrap().remove(0).unwrap().image;
    assert_eq!(image, medxfer_data::load_rgb8(&gray).unwrap());
    let colour = common::fixtures("nifti").join("histology_rgb24.nii");
    let three: Window = "40,80+80,200+600,2800".parse().unwrap();
    for (path, rendering) in
        [(colour, adjacent), (common::fixtures("nifti").join("ct_window.nii.gz"), Rendering { window: Some(three), ..adjacent })]
    {
        let error = load_image_frames(&path, &[DicomFrame::First], rendering).unwrap().remove(0).unwrap_err().to_string();
        assert!(error.starts_with(&path.display().to_string()) && error.contains("--adjacent-slices"), "{error}");
    }
}

/// Each slice of make_series.py's folder `prefix` (`scan/`): its 2.5-D image (asked as its only
/// frame, and as its middle one) the generator's, and read alone its own truth; how many.
fn series_truths_match(prefix: &str) -> usize {
    let adjacent = Rendering { adjacent_slices: true, ..Rendering::default() };
    let folder = common::fixtures("series");
    let expected = common::expected(&folder);
    let mut checked = 0;
    for key in expected.keys().filter(|key| key.starts_with(prefix) && key.ends_with("#adjacent")) {
        let file = key.trim_end_matches("#adjacent");
        let path = folder.join(file);
        for frame in [DicomFrame::Only, DicomFrame::Middle] {
            let image = load_image_frames(&path, &[frame], adjacent).unwrap().remove(0).unwrap().image;
            assert_eq!(common::differences(key, &image, &expected[key]).0, 0, "{key}");
        }
        let alone = load_image_frames(&path, &[DicomFrame::Only], Rendering::default()).unwrap().remove(0).unwrap().image;
        assert_eq!(common::differences(file, &alone, &expected[file]).0, 0, "{file}");
        checked += 1;
    }
    checked
}

/// A DICOM series stored a file a slice (one folder of a PACS export): each slice's 2.5-D image
/// is made of the slices either side of it along the normal (names and Instance Numbers in other
/// orders), or by Instance Number where the slices have no position, as the fixture's generator
/// placed them; a slice alone in its series, or without a Series Instance UID, is itself thrice,
/// and a file of several frames of the same series is not one of its slices.
#[test]
fn a_dicom_series_stored_a_file_a_slice_gives_each_slice_the_slices_either_side() {
    use medxfer_data::{SeriesOrder, series_place};
    let folder = common::fixtures("series");
    let expected = common::expected(&folder);
    assert_eq!(series_truths_match("scan/"), 10);
    // Through a window of the user's, each channel its neighbour read alone through it (the
    // neighbours read above, without it, are not those).
    let window = Rendering { window: Some("0,200".parse().unwrap()), ..Rendering::default() };
    let alone =
        |name: &str| load_image_frames(&folder.join("scan").join(name), &[DicomFrame::Only], window).unwrap().remove(0).unwrap().image;
    let windowed = Rendering { adjacent_slices: true, ..window };
    let image = load_image_frames(&folder.join("scan/IM000001"), &[DicomFrame::Only], windowed).unwrap().remove(0).unwrap().image;
    let channel = |image: &image::RgbImage, c: usize| image.pixels().map(|p| p.0[c]).collect::<Vec<u8>>();
    assert_eq!(channel(&image, 0), channel(&alone("IM000004"), 0));
    assert_eq!(channel(&image, 1), channel(&alone("IM000001"), 1));
    assert_eq!(channel(&image, 2), channel(&alone("IM000005"), 2));
    let unwindowed = expected["scan/IM000001#adjacent"].narrow(2, 2, 1).unwrap().flatten_all().unwrap().to_vec1::<u8>().unwrap();
    assert_ne!(channel(&image, 2), unwindowed);
    let place = |name: &str| series_place(&folder.join("scan").join(name)).unwrap();
    let ct = place("IM000004").unwrap();
    assert_eq!((ct.index, ct.len, ct.order), (0, 5, SeriesOrder::Position));
    assert_eq!((ct.before.file_name().unwrap(), ct.after.file_name().unwrap()), ("IM000004".as_ref(), "IM000001".as_ref()));
    let mr = place("mr_a.dcm").unwrap();
    assert_eq!((mr.index, mr.len, mr.order), (2, 3, SeriesOrder::InstanceNumber));
    for none in ["scout.dcm", "no_series.dcm", "IM000006"] {
        assert_eq!(place(none), None, "{none}");
    }
    assert_eq!(series_place(&common::fixtures("formats").join("gray.jpg")).unwrap(), None);
    // Links to the slices (a dataset folder made of links) are the series' slices too.
    let linked = tempfile::tempdir().unwrap();
    for name in ["IM000001", "IM000002", "IM000003"] {
        std::os::unix::fs::symlink(folder.join("scan").join(name), linked.path().join(name)).unwrap();
    }
    let place = series_place(&linked.path().join("IM000003")).unwrap().unwrap();
    assert_eq!((place.index, place.len, place.before.file_name().unwrap()), (1, 3, "IM000001".as_ref()));
    // The same series in another folder is another series there: the same UID, another key.
    assert_eq!(place.series, ct.series);
    assert_ne!(place.key(), ct.key());
    assert_eq!(ct.key(), series_place(&folder.join("scan/IM000002")).unwrap().unwrap().key());
}

/// An enhanced file whose frames each state their Plane Position: each frame's 2.5-D image is made
/// of the frames either side of it along its stack (lowest first), whatever order the file stores
/// them in, as the fixture's generator placed them; frames all at one position (a loop in time)
/// keep the file's order; frames of two b-values at each position, each b-value a stack as the
/// file's Dimension Index tells them apart. Frames of two orientations, or two echoes of each slice
/// that nothing tells apart, are refused, naming the frames and the fix; each frame alone reads.
#[test]
fn an_enhanced_file_s_frames_are_ordered_by_their_positions() {
    use medxfer_data::{FrameOrder, frame_stacks};
    let adjacent = Rendering { adjacent_slices: true, ..Rendering::default() };
    let folder = common::fixtures("series");
    let expected = common::expected(&folder);
    for (file, count) in [("shuffled.dcm", 5), ("cine.dcm", 3), ("dwi.dcm", 6)] {
        let path = folder.join("enhanced").join(file);
        let asked: Vec<DicomFrame> = (1..=count).map(DicomFrame::Number).collect();
        for (k, image) in (1..=count).zip(load_image_frames(&path, &asked, adjacent).unwrap()) {
            let key = format!("enhanced/{file}#{k}#adjacent");
            assert_eq!(common::differences(&key, &image.unwrap().image, &expected[&key]).0, 0, "{key}");
        }
        // One frame asked for alone: its neighbours read for it all the same.
        let image = load_image_frames(&path, &[DicomFrame::Number(2)], adjacent).unwrap().remove(0).unwrap().image;
        let key = format!("enhanced/{file}#2#adjacent");
        assert_eq!(common::differences(&key, &image, &expected[&key]).0, 0, "{key} alone");
    }
    // shuffled.dcm's heights 6, 0, 9, 3, -4.5 (frames 1 to 5): lowest first, 5, 2, 4, 1, 3.
    let stack = frame_stacks(&folder.join("enhanced/shuffled.dcm"), 5).unwrap();
    assert_eq!((stack.stacks.as_slice(), stack.order), ([vec![4, 1, 3, 0, 2]].as_slice(), FrameOrder::Position));
    assert_eq!((stack.beside(4), stack.beside(0), stack.beside(2)), ((4, 1), (3, 2), (0, 2)));
    assert!(!stack.is_stored_order() && stack.apart_by.is_empty());
    // dwi.dcm's frames 1 to 6 at heights 8, 8, 0, 0, 4, 4 and b = 0, 1000 in turn: its Dimension
    // Index's b-value tells two stacks apart, each lowest first.
    let dwi = frame_stacks(&folder.join("enhanced/dwi.dcm"), 6).unwrap();
    assert_eq!((dwi.stacks, dwi.apart_by), (vec![vec![2, 4, 0], vec![3, 5, 1]], vec!["DiffusionBValue".to_string()]));
    let cine = frame_stacks(&folder.join("enhanced/cine.dcm"), 3).unwrap();
    assert_eq!((cine.order, cine.is_stored_order()), (FrameOrder::Stored, true));
    // Without positions (an enhanced CT whose groups state none), as stored too.
    let unplaced = frame_stacks(&common::fixtures("dicom").join("ct_enhanced.dcm"), 3).unwrap();
    assert_eq!((unplaced.order, unplaced.is_stored_order()), (FrameOrder::Stored, true));
    for (file, why) in [
        ("echoes.dcm", "its frames 1 and 2 lie at the same position (0.000 mm"),
        ("echoes.dcm", "its Dimension Index does not tell them apart"),
        ("two_planes.dcm", "its frames 1 and 2 are of two orientations"),
    ] {
        let path = folder.join("enhanced").join(file);
        let error = load_image_frames(&path, &[DicomFrame::First], adjacent).unwrap_err().to_string();
        assert!(error.starts_with(&path.display().to_string()) && error.contains(why), "{file}: {error}");
        assert!(error.contains("dcm2niix") && error.contains("without --adjacent-slices"), "{file}: {error}");
        assert!(load_image_frames(&path, &[DicomFrame::First], Rendering::default()).unwrap()[0].is_ok());
    }
}

/// A series of several stacks that its slices' headers tell apart (make_series.py's dual-echo
/// series, by Echo Numbers; a localizer's three planes, by orientation): each slice's neighbours
/// are its stack's, in the order the generator placed them, its place and length its stack's.
#[test]
fn a_series_of_several_stacks_gives_each_slice_its_stack_s_neighbours() {
    use medxfer_data::{series_place, series_slices};
    let folder = common::fixtures("series");
    assert_eq!(series_truths_match("stacks/"), 9);
    let stacks = folder.join("stacks");
    // Echo 2's slices at heights 10, 0 and 5 are MR0002, MR0005 and MR0003: lowest first.
    let place = series_place(&stacks.join("MR0005")).unwrap().unwrap();
    assert_eq!((place.index, place.len, place.stack.as_deref()), (0, 3, Some("echo 2")));
    let names = |slices: Vec<std::path::PathBuf>| -> Vec<String> {
        slices.iter().map(|path| path.file_name().unwrap().to_string_lossy().into_owned()).collect()
    };
    assert_eq!(names(series_slices(&stacks.join("MR0002")).unwrap().unwrap()), ["MR0005", "MR0003", "MR0002"]);
    assert_ne!(place.key(), series_place(&stacks.join("MR0001")).unwrap().unwrap().key());
    let localizer = series_place(&stacks.join("loc_coronal.dcm")).unwrap().unwrap();
    assert_eq!((localizer.len, localizer.stack.as_deref()), (1, Some("orientation 1.000,0.000,0.000,0.000,0.000,-1.000")));
}

/// A series that has no one order is refused, naming the file, why and the fix: two slices at one
/// position that nothing tells apart, slices with neither positions nor Instance Numbers, a stack
/// (echo 1 of two) with two slices at one position.
#[test]
fn a_series_without_one_order_is_refused() {
    let adjacent = Rendering { adjacent_slices: true, ..Rendering::default() };
    let folder = common::fixtures("series").join("broken");
    for (file, why) in [
        ("repeat1.dcm", "same position (12.500 mm"),
        ("repeat2.dcm", "repeat1.dcm and repeat2.dcm"),
        ("capture2.dcm", "neither by position"),
        ("twice_c.dcm", "its series' stack of echo 1: two slices of its DICOM series, twice_a.dcm and twice_b.dcm"),
    ] {
        let path = folder.join(file);
        let error = load_image_frames(&path, &[DicomFrame::Only], adjacent).unwrap_err().to_string();
        assert!(error.starts_with(&path.display().to_string()) && error.contains(why), "{file}: {error}");
        assert!(error.contains("--adjacent-slices"), "{file}: {error}");
        // Each slice alone still reads.
        assert!(load_image_frames(&path, &[DicomFrame::Only], Rendering::default()).unwrap()[0].is_ok());
    }
}

/// A neighbour rewritten since it was read for an earlier 2.5-D image is read again: the slices
/// kept for their neighbours are known by their file's size and modification time too.
#[test]
fn a_neighbour_rewritten_is_read_again() {
    let adjacent = Rendering { adjacent_slices: true, ..Rendering::default() };
    let scan = common::fixtures("series").join("scan");
    let expected = common::expected(&common::fixtures("series"));
    let copy = tempfile::tempdir().unwrap();
    for name in ["IM000001", "IM000002", "IM000003", "IM000004", "IM000005"] {
        std::fs::copy(scan.join(name), copy.path().join(name)).unwrap();
    }
    // IM000001 is second along the normal: IM000004 before it, IM000005 after.
    let read = || load_image_frames(&copy.path().join("IM000001"), &[DicomFrame::Only], adjacent).unwrap().remove(0).unwrap().image;
    assert_eq!(common::differences("first read", &read(), &expected["scan/IM000001#adjacent"]).0, 0);
    // IM000005's pixels replaced by IM000003's (the same size of file), its header (its place)
    // kept: the blue channel follows.
    let pixels = |name: &str| {
        let bytes = std::fs::read(scan.join(name)).unwrap();
        bytes[bytes.len() - 9 * 12 * 2..].to_vec()
    };
    let mut rewritten = std::fs::read(scan.join("IM000005")).unwrap();
    let at = rewritten.len() - 9 * 12 * 2;
    rewritten[at..].copy_from_slice(&pixels("IM000003"));
    std::fs::write(copy.path().join("IM000005"), &rewritten).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options().write(true).open(copy.path().join("IM000005")).unwrap().set_modified(later).unwrap();
    let image = read();
    let blue = |image: &image::RgbImage| image.pixels().map(|p| p.0[2]).collect::<Vec<u8>>();
    let third = medxfer_data::load_rgb8(&scan.join("IM000003")).unwrap();
    assert_eq!(blue(&image), blue(&third));
}
