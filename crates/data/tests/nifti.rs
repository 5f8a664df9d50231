#![allow(clippy::unwrap_used)]
//! NIfTI-1 volumes decoded slice by slice as nibabel and numpy show them
//! (tests/fixtures/make_nifti.py: scl_slope and scl_inter, the display range or the volume's
//! min-max, np.rot90), and the files that are not one volume of 2-D slices, refused with the file
//! named and the conversion that makes them readable.

mod common;

use std::path::PathBuf;

use medxfer_data::{
    DicomFrame, Orientation, Rendering, Volumes, decode_image, frame_count, is_image_file, load_image_frame, load_image_frames, load_rgb8,
};

fn fixtures() -> PathBuf {
    common::fixtures("nifti")
}

/// Each slice by number, and first, middle (⌊n/2⌋ + 1) and last, exactly as nibabel's reading
/// displays it: gzipped or not, big endian, scaled, windowed by the display range, min-max scaled
/// over the volume, NaN voxels, an extension before the voxels, RGB, a 4-D file of one volume.
#[test]
fn every_nifti_slice_decodes_as_nibabel_shows_it() {
    let expected = common::expected(&fixtures());
    for (name, slices) in [
        ("ct_window.nii.gz", 4),
        ("mr_12bit_big_endian.nii", 3),
        ("pet_float_nan_extension.nii.gz", 3),
        ("histology_rgb24.nii", 2),
        ("mr_4d_one_volume.nii.gz", 3),
        ("ct_lps_axial.nii.gz", 3),
        ("oblique_sform.nii", 3),
    ] {
        let path = fixtures().join(name);
        assert!(is_image_file(&path), "{name}");
        assert_eq!(frame_count(&path, Orientation::Stored).unwrap(), slices, "{name}");
        let chosen = (1..=slices).map(|n| (DicomFrame::Number(n), n)).chain([
            (DicomFrame::First, 1),
            (DicomFrame::Middle, slices / 2 + 1),
            (DicomFrame::Last, slices),
        ]);
        for (frame, number) in chosen {
            let case = format!("{name} slice {frame}");
            let decoded = load_image_frame(&path, frame).unwrap();
            let (max, _, theirs) = common::differences(&case, &decoded.image, &expected[&format!("{name}#{number}")]);
            assert_eq!(max, 0, "{case}");
            let (low, high) = (theirs.iter().min().unwrap(), theirs.iter().max().unwrap());
            // The MR volume's first slice is nearly empty: scaled by the volume's range it stays
            // dark (scaled alone it would span the range).
            if name.starts_with("mr_12bit") && number == 1 {
                assert!(*high < 40, "{case}: the fixture spans {low}..{high}");
            } else {
                assert!(high - low > 150, "{case}: the fixture spans {low}..{high}");
            }
            for other in (1..=slices).filter(|&other| other != number) {
                let (max, _, _) = common::differences(&case, &decoded.image, &expected[&format!("{name}#{other}")]);
                assert!(max > 5, "{case}: slice {other} looks the same");
            }
        }
        // Read together, last first, one beyond the volume: each as read alone, that one an
        // error of its own.
        let asked: Vec<DicomFrame> = (1..=slices + 1).rev().map(DicomFrame::Number).collect();
        let together = load_image_frames(&path, &asked, Rendering::default()).unwrap();
        let error = together[0].as_ref().unwrap_err().to_string();
        assert!(error.starts_with(&path.display().to_string()) && error.contains(&format!("no slice {}", slices + 1)), "{error}");
        for (decoded, &frame) in together.iter().zip(&asked).skip(1) {
            assert_eq!(decoded.as_ref().unwrap().image, load_image_frame(&path, frame).unwrap().image, "{name} {frame} together");
        }
        // From its bytes, as from its file.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(decode_image(&path, &bytes, DicomFrame::Last).unwrap().image, load_image_frame(&path, DicomFrame::Last).unwrap().image);
        // A volume is not one image until a slice is chosen.
        let error = load_rgb8(&path).unwrap_err().to_string();
        assert!(error.contains(&format!("holds {slices} slices")) && error.contains("--slice first|middle|last|N"), "{name}: {error}");
    }
    // A 2-D image is one, whatever is chosen but a number beyond it; its scl_slope of 0 leaves it
    // unscaled (its scl_inter of 5 ignored).
    let path = fixtures().join("xray_2d.nii");
    let image = load_rgb8(&path).unwrap();
    let (max, _, _) = common::differences("xray_2d.nii", &image, &expected["xray_2d.nii"]);
    assert_eq!(max, 0);
    assert_eq!(frame_count(&path, Orientation::Stored).unwrap(), 1);
    for frame in [DicomFrame::First, DicomFrame::Middle, DicomFrame::Last, DicomFrame::Number(1)] {
        assert_eq!(load_image_frame(&path, frame).unwrap().image, image, "{frame}");
    }
    assert!(load_image_frame(&path, DicomFrame::Number(2)).unwrap_err().to_string().contains("no slice 2"));
}

#[test]
fn nifti_files_that_are_not_one_volume_of_images_are_refused_naming_the_file_and_the_fix() {
    for (name, expected) in [
        ("five_d.nii", "a 5-D NIfTI file ([12, 9, 2, 2, 2])"),
        (
            "fmri_series.nii.gz",
            "a 4-D NIfTI file of 3 volumes (modalities, b-values or time points); choose the one to read with --volume N (1 to 3)",
        ),
        ("mr_4d_modalities.nii", "a 4-D NIfTI file of 4 volumes"),
        ("nifti2.nii", "a NIfTI-2 file; medxfer reads NIfTI-1"),
        ("pair_header.nii", "the header of a NIfTI .hdr/.img pair"),
        ("complex.nii", "the NIfTI voxels are Complex64"),
    ] {
        let path = fixtures().join(name);
        for error in [load_image_frame(&path, DicomFrame::First).unwrap_err(), frame_count(&path, Orientation::Stored).unwrap_err()] {
            let error = error.to_string();
            assert!(error.starts_with(&path.display().to_string()) && error.contains(expected), "{name}: {error}");
        }
    }
}

/// Of a 4-D file (a gzipped series of three volumes; four modalities of a sagittal MR volume,
/// scaled, uncompressed), the volume `--volume V` names reads as nibabel shows
/// `get_fdata()[..., V - 1]`, as stored and reoriented, its min-max its own (not the file's, nor
/// the volume's read before); a volume beyond the file is an error naming it; a 3-D file is its
/// own volume 1, and has no other.
#[test]
fn a_4d_files_volume_reads_as_nibabel_shows_it() {
    let expected = common::expected(&fixtures());
    let mut slices_of: std::collections::BTreeMap<(String, String, u32), u32> = std::collections::BTreeMap::new();
    for key in expected.keys() {
        let Some((prefix, rest)) = key.split_once('/').filter(|(prefix, _)| prefix.starts_with("volumes")) else { continue };
        let (name, volume) = rest.split_once('#').unwrap().0.split_once('@').unwrap();
        *slices_of.entry((prefix.to_string(), name.to_string(), volume.parse().unwrap())).or_default() += 1;
    }
    assert_eq!(slices_of.len(), 2 * (3 + 4), "{slices_of:?}");
    for ((prefix, name, volume), &slices) in &slices_of {
        let orientation = if prefix == "volumes" { Orientation::Stored } else { Orientation::Canonical };
        let rendering = Rendering { orientation, volume: Some(Volumes::One(*volume)), ..Rendering::default() };
        let path = fixtures().join(name);
        assert_eq!(frame_count(&path, rendering.reading()).unwrap(), slices, "{name}");
        let asked: Vec<DicomFrame> = (1..=slices).map(DicomFrame::Number).collect();
        let images = load_image_frames(&path, &asked, rendering).unwrap();
        for (number, image) in (1..=slices).zip(images) {
            let case = format!("{prefix} {name} volume {volume} slice {number}");
            let (max, _, _) = common::differences(&case, &image.unwrap().image, &expected[&format!("{prefix}/{name}@{volume}#{number}")]);
            assert_eq!(max, 0, "{case}");
        }
    }
    // 2.5-D within the volume chosen: each channel that volume's slice before, itself, after.
    let path = fixtures().join("mr_4d_modalities.nii");
    let slab = Rendering { volume: Some(Volumes::One(2)), adjacent_slices: true, ..Rendering::default() };
    let image = load_image_frames(&path, &[DicomFrame::Number(2)], slab).unwrap().remove(0).unwrap().image;
    for (channel, slice) in [(0, 1), (1, 2), (2, 3)] {
        let gray = image::RgbImage::from_fn(image.width(), image.height(), |x, y| image::Rgb([image.get_pixel(x, y).0[channel]; 3]));
        let (max, _, _) = common::differences("2.5-D", &gray, &expected[&format!("volumes/mr_4d_modalities.nii@2#{slice}")]);
        assert_eq!(max, 0, "channel {channel}");
    }
    // The volumes differ: the first is not the fourth.
    let path = fixtures().join("mr_4d_modalities.nii");
    let first =
        load_image_frames(&path, &[DicomFrame::Number(2)], Rendering { volume: Some(Volumes::One(1)), ..Rendering::default() }).unwrap();
    let (max, _, _) =
        common::differences("volumes 1 and 4", &first[0].as_ref().unwrap().image, &expected["volumes/mr_4d_modalities.nii@4#2"]);
    assert!(max > 5);
    for (name, volumes) in [("fmri_series.nii.gz", 3), ("mr_4d_modalities.nii", 4)] {
        let path = fixtures().join(name);
        for beyond in [0, volumes + 1] {
            let rendering = Rendering { volume: Some(Volumes::One(beyond)), ..Rendering::default() };
            let error = load_image_frames(&path, &[DicomFrame::First], rendering).unwrap_err().to_string();
            assert!(
                error.starts_with(&path.display().to_string())
                    && error.contains(&format!("holds {volumes} volume(s), so it has no volume {beyond}")),
                "{error}"
            );
        }
    }
    let path = fixtures().join("ct_window.nii.gz");
    let first = Rendering { volume: Some(Volumes::One(1)), ..Rendering::default() };
    let frames = [DicomFrame::Last];
    assert_eq!(
        load_image_frames(&path, &frames, first).unwrap().remove(0).unwrap().image,
        load_image_frame(&path, DicomFrame::Last).unwrap().image
    );
    let error = frame_count(&path, Rendering { volume: Some(Volumes::One(2)), ..Rendering::default() }.reading()).unwrap_err().to_string();
    assert!(error.contains("holds 1 volume(s), so it has no volume 2"), "{error}");
}

/// Three volumes of a 4-D file, one a colour channel (`--volume 4+1+3`): each channel the gray
/// image nibabel shows of its volume (its own min-max), as stored and reoriented. An RGB volume
/// cannot be a channel; the choice is parsed as it prints, and other counts are refused.
#[test]
fn three_volumes_are_the_red_green_and_blue_channels() {
    let expected = common::expected(&fixtures());
    let path = fixtures().join("mr_4d_modalities.nii");
    let volumes: Volumes = "4+1+3".parse().unwrap();
    assert_eq!((volumes, volumes.to_string().as_str()), (Volumes::Channels([4, 1, 3]), "4+1+3"));
    for (prefix, orientation) in [("volumes", Orientation::Stored), ("volumes-canonical", Orientation::Canonical)] {
        let rendering = Rendering { orientation, volume: Some(volumes), ..Rendering::default() };
        let slices = frame_count(&path, rendering.reading()).unwrap();
        let asked: Vec<DicomFrame> = (1..=slices).map(DicomFrame::Number).collect();
        for (number, image) in (1..=slices).zip(load_image_frames(&path, &asked, rendering).unwrap()) {
            let image = image.unwrap().image;
            for (channel, volume) in [(0, 4), (1, 1), (2, 3)] {
                let case = format!("{prefix} slice {number} channel {channel}");
                let gray =
                    image::RgbImage::from_fn(image.width(), image.height(), |x, y| image::Rgb([image.get_pixel(x, y).0[channel]; 3]));
                let (max, _, _) = common::differences(&case, &gray, &expected[&format!("{prefix}/mr_4d_modalities.nii@{volume}#{number}")]);
                assert_eq!(max, 0, "{case}");
            }
        }
    }
    let beyond = Rendering { volume: Some("1+5+2".parse().unwrap()), ..Rendering::default() };
    let error = frame_count(&path, beyond.reading()).unwrap_err().to_string();
    assert!(error.contains("holds 4 volume(s), so it has no volume 5"), "{error}");
    let rgb = fixtures().join("histology_rgb24.nii");
    let channels = Rendering { volume: Some("1+1+1".parse().unwrap()), ..Rendering::default() };
    let error = load_image_frames(&rgb, &[DicomFrame::First], channels).unwrap_err().to_string();
    assert!(error.starts_with(&rgb.display().to_string()) && error.contains("cannot be one channel of three"), "{error}");
    for (text, why) in [("0", "from 1"), ("1+2", "2 volumes"), ("x", "whole number"), ("1+2+3+4", "4 volumes")] {
        let error = text.parse::<Volumes>().unwrap_err();
        assert!(error.contains(why), "{text}: {error}");
    }
}

/// A volume cut short anywhere (in the header, the extension, the voxels; gzipped or not) is an
/// error naming the file, never a slice filled with zeros.
#[test]
fn truncated_nifti_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Of the gzipped 4-D series, the last volume (the others skipped).
    let last_volume = Rendering { volume: Some(Volumes::One(3)), ..Rendering::default() };
    for (name, frame, rendering) in [
        ("mr_12bit_big_endian.nii", DicomFrame::Last, Rendering::default()),
        ("pet_float_nan_extension.nii.gz", DicomFrame::Last, Rendering::default()),
        ("fmri_series.nii.gz", DicomFrame::First, last_volume),
    ] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let path = dir.path().join(name);
        for cut in [0, 100, 347, 360, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let error =
                load_image_frames(&path, &[frame], rendering).and_then(|mut images| images.remove(0)).map(|_| ()).unwrap_err().to_string();
            assert!(error.starts_with(&path.display().to_string()), "{name} cut at {cut}: {error}");
            assert!(["truncated", "shorter", "ends before", "damaged"].iter().any(|w| error.contains(w)), "{name} cut at {cut}: {error}");
        }
    }
    // The uncompressed volume cut inside its last slice: refused from its header's sizes before a
    // slice is read (a damaged dimension would otherwise allocate slices the file cannot hold),
    // its slice count too.
    let bytes = std::fs::read(fixtures().join("mr_12bit_big_endian.nii")).unwrap();
    let path = dir.path().join("cut.nii");
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    for error in [load_image_frame(&path, DicomFrame::First).unwrap_err(), frame_count(&path, Orientation::Stored).unwrap_err()] {
        let error = error.to_string();
        assert!(error.contains("12 x 9 x 3 voxels of Uint16 (1000 bytes with the header), more than its 990 byte file holds"), "{error}");
    }
    // Gzipped, the same cut shows only once the data runs out: in the last slice.
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzip, &bytes[..bytes.len() - 10]).unwrap();
    let path = dir.path().join("cut.nii.gz");
    std::fs::write(&path, gzip.finish().unwrap()).unwrap();
    let error = load_image_frame(&path, DicomFrame::First).unwrap_err().to_string();
    assert!(error.contains("the NIfTI voxels end before slice 3 of 3") && error.contains("truncated"), "{error}");
}

/// Each volume's slice plane as nibabel's `aff2axcodes` names its third axis (planes.json): by
/// the sform, by the qform's quaternion alone (a tilted coronal volume), none where neither is
/// set; none for a file that is not NIfTI.
#[test]
fn the_slice_plane_is_read_from_the_header_as_nibabel_reads_it() {
    let planes: std::collections::BTreeMap<String, Option<String>> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("planes.json")).unwrap()).unwrap();
    assert!(planes.len() >= 11 && planes.values().any(Option::is_none), "{planes:?}");
    for plane in ["axial", "coronal", "sagittal"] {
        assert!(planes.values().any(|p| p.as_deref() == Some(plane)), "no {plane} case");
    }
    for (name, expected) in &planes {
        let plane = medxfer_data::slice_plane(&fixtures().join(name)).unwrap();
        assert_eq!(plane.map(|p| p.to_string()), *expected, "{name}");
    }
    let png = common::fixtures("formats").join("gray.jpg");
    assert_eq!(medxfer_data::slice_plane(&png).unwrap(), None);
}

/// `--reorient canonical`: every readable volume's slices exactly as nibabel's
/// `as_closest_canonical` shows them (expected.safetensors' canonical/ images): axes permuted (a
/// sagittal volume, a coronal one by its quaternion), flipped (an LPS axial volume, RGB voxels, a
/// header without orientation read as nibabel reads one), a sheared sform, and volumes already
/// RAS+ as stored.
#[test]
fn reoriented_volumes_read_as_nibabels_closest_canonical() {
    let expected = common::expected(&fixtures());
    let canonical = Rendering { orientation: Orientation::Canonical, ..Rendering::default() };
    let mut slices_of: std::collections::BTreeMap<String, u32> = std::collections::BTreeMap::new();
    for key in expected.keys().filter_map(|key| key.strip_prefix("canonical/")) {
        let (name, _) = key.split_once('#').unwrap();
        *slices_of.entry(name.to_string()).or_default() += 1;
    }
    assert!(slices_of.len() >= 10, "{slices_of:?}");
    let mut reoriented = 0;
    for (name, &slices) in &slices_of {
        let path = fixtures().join(name);
        assert_eq!(frame_count(&path, Orientation::Canonical).unwrap(), slices, "{name}");
        let asked: Vec<DicomFrame> = (1..=slices).map(DicomFrame::Number).collect();
        let images = load_image_frames(&path, &asked, canonical).unwrap();
        for (number, image) in (1..=slices).zip(images) {
            let case = format!("{name} canonical slice {number}");
            let (max, _, _) = common::differences(&case, &image.unwrap().image, &expected[&format!("canonical/{name}#{number}")]);
            assert_eq!(max, 0, "{case}");
        }
        // Chosen by first, middle and last among the slices as read.
        let middle = load_image_frames(&path, &[DicomFrame::Middle], canonical).unwrap().remove(0).unwrap().image;
        assert_eq!(middle, load_image_frames(&path, &[DicomFrame::Number(slices / 2 + 1)], canonical).unwrap().remove(0).unwrap().image);
        let stored_slices = frame_count(&path, Orientation::Stored).unwrap();
        let stored = load_image_frames(&path, &[DicomFrame::First], Rendering::default()).unwrap().remove(0).unwrap().image;
        let first = load_image_frames(&path, &[DicomFrame::First], canonical).unwrap().remove(0).unwrap().image;
        if stored_slices != slices || stored != first {
            reoriented += 1;
        }
    }
    // The sagittal, coronal, LPS, RGB, unoriented and sheared volumes.
    assert!(reoriented >= 6, "only {reoriented} volumes read otherwise reoriented");
}

/// An affine whose axes do not span space (a zero column) cannot be reoriented: the error names
/// the file and the fix; read as stored, the volume is still read.
#[test]
fn a_degenerate_affine_is_refused_for_reorienting() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixtures().join("coronal_qform.nii")).unwrap();
    // sform_code 1, and srow_x..srow_z (bytes 280..328) a first column of zeros.
    bytes[254..256].copy_from_slice(&1i16.to_le_bytes());
    let rows: [[f32; 4]; 3] = [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]];
    for (at, value) in (280..).step_by(4).zip(rows.iter().flatten()) {
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }
    let path = dir.path().join("degenerate.nii");
    std::fs::write(&path, &bytes).unwrap();
    let canonical = Rendering { orientation: Orientation::Canonical, ..Rendering::default() };
    for error in [
        load_image_frames(&path, &[DicomFrame::First], canonical).unwrap_err().to_string(),
        frame_count(&path, Orientation::Canonical).unwrap_err().to_string(),
    ] {
        assert!(
            error.starts_with(&path.display().to_string()) && error.contains("degenerate") && error.contains("--reorient stored"),
            "{error}"
        );
    }
    assert_eq!(medxfer_data::slice_plane(&path).unwrap(), None);
    assert!(load_image_frames(&path, &[DicomFrame::First], Rendering::default()).unwrap().remove(0).is_ok());
}

/// A uint8 volume stored sagittal-wise (its voxel axes towards the front, the head and the right;
/// each voxel `value(i, j, k)`), the voxels spanning 0..=255 so that min-max scaling leaves them
/// as they are: its header field by field (nifti1.h).
fn write_sagittal_u8(path: &std::path::Path, sizes: [u16; 3], value: impl Fn(u16, u16, u16) -> u8) {
    let mut bytes = vec![0u8; 352];
    let mut put = |at: usize, field: &[u8]| bytes[at..at + field.len()].copy_from_slice(field);
    put(0, &348i32.to_le_bytes());
    for (k, dim) in [3, sizes[0], sizes[1], sizes[2], 1, 1, 1, 1].into_iter().enumerate() {
        put(40 + 2 * k, &dim.to_le_bytes());
    }
    put(70, &2i16.to_le_bytes()); // uint8
    put(72, &8i16.to_le_bytes());
    put(108, &352f32.to_le_bytes());
    put(254, &1i16.to_le_bytes()); // sform_code
    for (at, row) in [280, 296, 312].into_iter().zip([[0f32, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]) {
        for (k, v) in row.into_iter().enumerate() {
            put(at + 4 * k, &v.to_le_bytes());
        }
    }
    put(344, b"n+1\0");
    for k in 0..sizes[2] {
        for j in 0..sizes[1] {
            for i in 0..sizes[0] {
                bytes.push(value(i, j, k));
            }
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// A reoriented volume's slices read as the image cache reads them (runs of FRAMES_PER_READ, the
/// volume kept whole between runs): each the axial slice worked out by hand, RAS+ shown as
/// np.rot90 shows it (the right across, the front up). The file overwritten (the same size,
/// other voxels): the kept volume is not read for it.
#[test]
fn a_reoriented_volume_read_in_runs_is_each_slice_worked_out_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sagittal.nii");
    let sizes = [6u16, 40, 5];
    let canonical = Rendering { orientation: Orientation::Canonical, ..Rendering::default() };
    for seed in [0u16, 7] {
        // Voxel (i, j, k): i towards the front, j the head, k the right.
        let value =
            move |i: u16, j: u16, k: u16| if (i, j, k) == (0, 0, 0) { 0 } else { ((i * 41 + j * 5 + k * 83 + seed) % 255 + 1) as u8 };
        write_sagittal_u8(&path, sizes, value);
        assert_eq!(frame_count(&path, Orientation::Canonical).unwrap(), 40);
        let all: Vec<DicomFrame> = (1..=40).map(DicomFrame::Number).collect();
        let mut slices = Vec::new();
        for run in all.chunks(medxfer_data::FRAMES_PER_READ) {
            slices.extend(load_image_frames(&path, run, canonical).unwrap().into_iter().map(|decoded| decoded.unwrap().image));
        }
        for (z, slice) in (0u16..).zip(&slices) {
            // Axial slice z: the right (k) across, the front (i) up.
            assert_eq!(slice.dimensions(), (5, 6), "slice {z}");
            for (column, row, pixel) in slice.enumerate_pixels() {
                let expected = value(6 - 1 - row as u16, z, column as u16);
                assert_eq!(pixel.0, [expected; 3], "seed {seed}, slice {z}, column {column}, row {row}");
            }
        }
    }
}
