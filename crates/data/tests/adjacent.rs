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
