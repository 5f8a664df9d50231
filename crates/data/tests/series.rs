#![allow(clippy::unwrap_used)]
//! A DICOM series stored a file a slice read as a volume whose frames are its files: `--slice`
//! keeps of each series the slices it chooses, in the order make_series.py placed them (by
//! position along the normal for the CT series, whatever its names and Instance Numbers say; by
//! Instance Number for the MR one), and the cache reads each kept slice as pydicom displays it.

mod common;

use medxfer_data::{DicomFrame, Entry, FrameSelection, ImageCache, Orientation, Part, Rendering, frame_entries, transform};

/// make_series.py's CT series, lowest along the normal first, and its MR series by Instance
/// Number.
const CT: [&str; 5] = ["IM000004", "IM000001", "IM000005", "IM000003", "IM000002"];
const MR: [&str; 3] = ["mr_b.dcm", "mr_c.dcm", "mr_a.dcm"];

/// An entry a file of series/scan/, in name order (not the series' order).
fn scan_entries(files: &[&str]) -> Vec<Entry> {
    let mut files = files.to_vec();
    files.sort_unstable();
    files.iter().map(|file| Entry { path: format!("scan/{file}"), label: 0, group: "p".into(), split: Part::Train, frame: None }).collect()
}

/// The files (and frames) `selection` keeps of `entries`, in their order.
fn kept(entries: &[Entry], selection: FrameSelection) -> Vec<(String, Option<u32>)> {
    frame_entries(&common::fixtures("series"), entries, selection, Orientation::Stored)
        .unwrap()
        .into_iter()
        .map(|e| (e.path.trim_start_matches("scan/").to_string(), e.frame))
        .collect()
}

#[test]
fn slice_keeps_each_series_chosen_slices_in_the_series_order() {
    let all = [&CT[..], &MR[..], &["IM000006", "scout.dcm", "no_series.dcm"]].concat();
    let entries = scan_entries(&all);
    let names = |files: &[&str]| -> Vec<(String, Option<u32>)> {
        let mut files: Vec<(String, Option<u32>)> = files.iter().map(|f| (f.to_string(), None)).collect();
        files.sort();
        files
    };
    // The default: every slice an image, as before.
    assert_eq!(kept(&entries, FrameSelection::default()), names(&all));
    // The middle slice of each series (⌊n/2⌋ + 1), a two-frame file its own middle frame, a
    // slice alone in its series and one without a series kept.
    let middle = FrameSelection::One(DicomFrame::Middle);
    assert_eq!(kept(&entries, middle), names(&[CT[2], MR[1], "IM000006", "scout.dcm", "no_series.dcm"]));
    assert_eq!(kept(&entries, FrameSelection::One(DicomFrame::First)), names(&[CT[0], MR[0], "IM000006", "scout.dcm", "no_series.dcm"]));
    assert_eq!(kept(&entries, FrameSelection::One(DicomFrame::Last)), names(&[CT[4], MR[2], "IM000006", "scout.dcm", "no_series.dcm"]));
    // Every second slice from the first; the two-frame file's frames 1 (of 2) each an image.
    let mut every = names(&[CT[0], CT[2], CT[4], MR[0], MR[2], "scout.dcm", "no_series.dcm"]);
    every.push(("IM000006".into(), Some(1)));
    every.sort();
    assert_eq!(kept(&entries, FrameSelection::Every(2)), every);
    // A slice by number: the series' fourth slice, named as its file's one frame.
    let ct_entries = scan_entries(&CT);
    assert_eq!(kept(&ct_entries, FrameSelection::One(DicomFrame::Number(4))), [(CT[3].to_string(), Some(1))]);
    // A series with fewer slices: each of its files named, with the fix.
    let error =
        frame_entries(&common::fixtures("series"), &scan_entries(&MR), FrameSelection::One(DicomFrame::Number(4)), Orientation::Stored)
            .unwrap_err()
            .to_string();
    assert!(
        error.contains("3 of 3 image(s)") && error.contains("its DICOM series holds 3 slices") && error.contains("no slice 4"),
        "{error}"
    );
    // A series that cannot be put in order is named, not guessed.
    let broken = vec![Entry { path: "broken/repeat1.dcm".into(), label: 0, group: "p".into(), split: Part::Train, frame: None }];
    let error = frame_entries(&common::fixtures("series"), &broken, middle, Orientation::Stored).unwrap_err().to_string();
    assert!(error.contains("repeat1.dcm") && error.contains("same position"), "{error}");
    // A series of several stacks: each stack's middle slice (a localizer's planes each their own).
    let files = ["MR0001", "MR0002", "MR0003", "MR0004", "MR0005", "MR0006", "loc_axial.dcm", "loc_coronal.dcm", "loc_sagittal.dcm"];
    let entries: Vec<Entry> = files
        .iter()
        .map(|file| Entry { path: format!("stacks/{file}"), label: 0, group: "p".into(), split: Part::Train, frame: None })
        .collect();
    let kept: Vec<String> =
        frame_entries(&common::fixtures("series"), &entries, middle, Orientation::Stored).unwrap().into_iter().map(|e| e.path).collect();
    // Echo 1 at heights 10, 0, 5: MR0004, MR0001, MR0006 (middle MR0006); echo 2: MR0002, MR0005,
    // MR0003 (middle MR0003).
    assert_eq!(kept, ["stacks/MR0003", "stacks/MR0006", "stacks/loc_axial.dcm", "stacks/loc_coronal.dcm", "stacks/loc_sagittal.dcm"]);
}

/// The cache reads each kept slice as pydicom displays it, a slice chosen by number too (its
/// file's one frame, not frame 4 of a file of one).
#[test]
fn the_cache_reads_the_slices_kept() {
    let expected = common::expected(&common::fixtures("series"));
    let dir = tempfile::tempdir().unwrap();
    for (selection, file) in [(FrameSelection::One(DicomFrame::Number(4)), CT[3]), (FrameSelection::One(DicomFrame::Middle), CT[2])] {
        let entries = frame_entries(&common::fixtures("series"), &scan_entries(&CT), selection, Orientation::Stored).unwrap();
        let reading = (16, selection.per_file(), Rendering::default());
        let cache = ImageCache::open_or_build_frame(dir.path(), "series", &common::fixtures("series"), &entries, reading, false).unwrap();
        assert_eq!(cache.len(), 1);
        let truth = &expected[&format!("scan/{file}")];
        // The kept entry read at its own frame, else the selection's, as the cache reads it.
        let frame = entries[0].frame.map_or(selection.per_file(), DicomFrame::Number);
        let path = common::fixtures("series").join(&entries[0].path);
        let decoded = medxfer_data::load_image_frames(&path, &[frame], Rendering::default()).unwrap().remove(0).unwrap();
        assert_eq!(common::differences(file, &decoded.image, truth).0, 0, "{selection}");
        let (height, width, _) = truth.dims3().unwrap();
        let truth = image::RgbImage::from_raw(width as u32, height as u32, truth.flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap();
        assert_eq!(cache.read(0).unwrap(), transform::resize_shorter(&truth, 16).unwrap(), "{selection}");
    }
}

/// A file's Series Instance UID, read from its header: the CT series' slices (and the two-frame
/// file make_series.py gave the same series) share one, the MR series another; a file without one,
/// or not DICOM, has none.
#[test]
fn a_series_uid_is_read_from_the_header() {
    let uid = |name: &str| medxfer_data::dicom_series_uid(&common::fixtures("series").join("scan").join(name)).unwrap();
    let ct = uid(CT[0]).unwrap();
    assert!(ct.starts_with("1.2.826.0.1.3680043.8.498."), "{ct}");
    for name in CT.iter().chain(&["IM000006"]) {
        assert_eq!(uid(name).as_deref(), Some(ct.as_str()), "{name}");
    }
    let mr = uid(MR[0]).unwrap();
    assert_ne!(mr, ct);
    assert!(MR.iter().all(|name| uid(name).as_deref() == Some(mr.as_str())));
    assert_eq!(uid("no_series.dcm"), None);
    assert_eq!(medxfer_data::dicom_series_uid(&common::fixtures("formats").join("gray.jpg")).unwrap(), None);
}

/// A DICOM slice's plane, the patient axis closest to its normal (its Image Orientation (Patient)
/// as make_series.py wrote it): the CT series sagittal (rows along y, columns down z: normal -x),
/// axial and coronal slices, none for a slice without an orientation; an enhanced file's from its
/// Functional Groups.
#[test]
fn a_dicom_slice_s_plane_is_its_normal_s_axis() {
    use medxfer_data::{SlicePlane, slice_plane};
    let plane = |name: &str| slice_plane(&common::fixtures("series").join(name)).unwrap();
    assert_eq!(plane("scan/IM000001"), Some(SlicePlane::Sagittal));
    assert_eq!(plane("stacks/loc_axial.dcm"), Some(SlicePlane::Axial));
    assert_eq!(plane("stacks/loc_coronal.dcm"), Some(SlicePlane::Coronal));
    assert_eq!(plane("stacks/loc_sagittal.dcm"), Some(SlicePlane::Sagittal));
    assert_eq!(plane("scan/mr_a.dcm"), None);
    // The two-frame file, which states no orientation.
    assert_eq!(plane("scan/IM000006"), None);
    // Enhanced files: their stack's orientation from the shared Functional Group, else the first
    // frame's.
    assert_eq!(plane("enhanced/coronal_shared.dcm"), Some(SlicePlane::Coronal));
    assert_eq!(plane("enhanced/sagittal_per_frame.dcm"), Some(SlicePlane::Sagittal));
}

/// A 2.5-D cache of each series' middle slice is keyed by the slices beside it too: a neighbour
/// rewritten since (not itself an entry) builds the cache anew, its image from the new neighbour.
#[test]
fn a_2_5_d_cache_follows_the_neighbours_of_its_slices() {
    let copy = tempfile::tempdir().unwrap();
    std::fs::create_dir(copy.path().join("scan")).unwrap();
    for name in CT {
        std::fs::copy(common::fixtures("series").join("scan").join(name), copy.path().join("scan").join(name)).unwrap();
    }
    let middle = FrameSelection::One(DicomFrame::Middle);
    let entries = frame_entries(copy.path(), &scan_entries(&CT), middle, Orientation::Stored).unwrap();
    assert_eq!(entries.len(), 1);
    let adjacent = Rendering { adjacent_slices: true, ..Rendering::default() };
    let dir = tempfile::tempdir().unwrap();
    let open =
        || ImageCache::open_or_build_frame(dir.path(), "ct", copy.path(), &entries, (9, middle.per_file(), adjacent), false).unwrap();
    let before = open();
    // The slice before the middle one (CT[1]) given the pixels of CT[4], and a later time.
    let rewritten = copy.path().join("scan").join(CT[1]);
    let mut bytes = std::fs::read(&rewritten).unwrap();
    let pixels = std::fs::read(common::fixtures("series").join("scan").join(CT[4])).unwrap();
    let at = bytes.len() - 9 * 12 * 2;
    bytes[at..].copy_from_slice(&pixels[pixels.len() - 9 * 12 * 2..]);
    std::fs::write(&rewritten, &bytes).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options().write(true).open(&rewritten).unwrap().set_modified(later).unwrap();
    let after = open();
    assert_ne!(before.key(), after.key());
    let red = |image: &image::RgbImage| image.pixels().map(|p| p.0[0]).collect::<Vec<u8>>();
    let fourth = transform::resize_shorter(&medxfer_data::load_rgb8(&rewritten).unwrap(), 9).unwrap();
    assert_eq!(red(&after.read(0).unwrap()), red(&fourth));
    assert_ne!(red(&before.read(0).unwrap()), red(&fourth));
}

/// The fields `--dicom-where` asks for, read from a header as make_series.py wrote them: a CT
/// slice's Modality and Image Position (its values joined by `\`), a field it lacks; a file that is
/// not DICOM has none.
#[test]
fn a_condition_s_field_is_read_from_the_header() {
    use medxfer_data::{DicomCondition, dicom_field_texts};
    let conditions: Vec<DicomCondition> =
        ["Modality=CT", "ImagePositionPatient=*", "SeriesDescription!=*"].iter().map(|c| c.parse().unwrap()).collect();
    let texts = dicom_field_texts(&common::fixtures("series").join("scan").join(CT[0]), &conditions).unwrap().unwrap();
    assert_eq!(texts, [Some("CT".to_string()), Some("40.0\\-120.5\\88.25".to_string()), None]);
    assert!(conditions.iter().zip(&texts).all(|(condition, text)| condition.holds(text.as_deref())));
    let mr = dicom_field_texts(&common::fixtures("series").join("scan").join(MR[0]), &conditions[..1]).unwrap().unwrap();
    assert_eq!(mr, [Some("MR".to_string())]);
    assert_eq!(dicom_field_texts(&common::fixtures("formats").join("gray.jpg"), &conditions).unwrap(), None);
}
