#![allow(clippy::unwrap_used)]
//! A display window of the user's own (`--window CENTER,WIDTH`) over grayscale DICOM and NIfTI
//! images, as pydicom's windowing applies it (tests/fixtures/make_windows.py): in place of the
//! file's window, VOI LUT table, display range or min-max; MONOCHROME1 still inverted; colour
//! untouched. Three windows joined by `+`: each channel the gray image its window gives. And
//! over 8- and 16-bit grayscale PNG and TIFF (12-bit data as radiographs are exported), on their
//! stored values, in place of their high byte.

mod common;

use medxfer_data::{DicomFrame, Rendering, Window, load_image_frame, load_image_frames};

#[test]
fn a_window_of_ones_own_replaces_the_files_as_pydicom_applies_it() {
    let expected = common::expected(&common::fixtures("windows"));
    assert_eq!(expected.len(), 23);
    for (key, truth) in &expected {
        let (file, rest) = key.split_once('@').unwrap();
        let (window, frame) = match rest.split_once('#') {
            Some((window, slice)) => (window, DicomFrame::Number(slice.parse().unwrap())),
            None => (rest, DicomFrame::Only),
        };
        let window: Window = window.parse().unwrap();
        let path = common::fixtures("").join(file);
        let ours = load_image_frames(&path, &[frame], Rendering { window: Some(window), ..Rendering::default() })
            .unwrap()
            .remove(0)
            .unwrap()
            .image;
        let (max, _, _) = common::differences(key, &ours, truth);
        assert_eq!(max, 0, "{key}");
        // The file's own display differs, but for colour, which a window leaves as it is.
        let own = load_image_frame(&path, frame).unwrap().image;
        let is_colour = file.starts_with("dicom/rgb") || file.starts_with("windows/rgb");
        assert_eq!(own == ours, is_colour, "{key}");
        // Three windows, one a channel: the channels differ.
        let colour = ours.pixels().any(|p| p.0[0] != p.0[1] || p.0[1] != p.0[2]);
        assert_eq!(colour, window.to_string().contains('+') || is_colour, "{key}");
        // Several frames asked of a one-frame image: the one image for each.
        if file.starts_with("windows/") {
            let twice = load_image_frames(
                &path,
                &[DicomFrame::First, DicomFrame::Last],
                Rendering { window: Some(window), ..Rendering::default() },
            )
            .unwrap();
            assert_eq!(twice.len(), 2, "{key}");
            assert!(twice.into_iter().all(|image| image.unwrap().image == ours), "{key}");
        }
    }
}
