#![allow(clippy::unwrap_used)]
//! Thousands of damaged inputs to every parser of the data crate: images of each format the
//! datasets use, DICOM and NIfTI files and Cheng's MATLAB files (bytes mutated), the split
//! manifest, a dataset layout's CSVs and the dataset catalog's TOMLs (text mutated). Each answers
//! with an error or a value, never a panic, and an error names the file.

use std::path::{Path, PathBuf};

use medxfer_data::{
    Catalog, DicomFrame, Entry, Part, Rendering, decode_image, load_image_frames, load_rgb8, read_manifest, scan_dataset, transform,
};
use medxfer_mutate::{Mutator, never_panics};

fn formats() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/formats"))
}

fn assert_none(failures: Vec<String>) {
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `count` mutants of each of `names` under `dir`, decoded as the content of `path` (the frame
/// `frame` chooses of a DICOM file of several): an image (then resized, as the cache does next) or
/// an error naming `path`, never a panic; not every mutant decodes.
fn mutated_files_decode_or_fail(dir: &Path, names: &[&str], path: &Path, (count, first_seed): (u64, u64), frame: DicomFrame) {
    for (i, name) in names.iter().enumerate() {
        let original = std::fs::read(dir.join(name)).unwrap();
        let mut decoded = 0;
        assert_none(never_panics(
            count,
            first_seed + i as u64,
            |m: &mut Mutator| m.bytes(&original),
            |bytes: &Vec<u8>| match decode_image(path, bytes, frame) {
                Ok(decoded_image) => {
                    decoded += 1;
                    let _ = transform::resize_shorter(&decoded_image.image, 36);
                }
                Err(error) => {
                    let error = error.to_string();
                    assert!(error.contains(&path.display().to_string()), "{name}: {error}");
                    // A panic caught in the decoding is dicom-rs's (its RLE decoder), never
                    // medxfer's own frame and display steps: those check what they index.
                    assert!(!error.contains("its decoder failed") || name.contains("rle"), "{name}: {error}");
                }
            },
        ));
        assert!(decoded < count, "{name}: every mutant decoded");
    }
}

/// Damaged reports, segmentations and images are told from images (`holds_no_image`, as rank
/// lists a folder) without a panic.
#[test]
fn mutated_dicom_objects_are_told_from_images_without_a_panic() {
    let dicom = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dicom"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("IM000001");
    for (i, name) in ["no_pixels.dcm", "segmentation.dcm", "ct_enhanced.dcm"].iter().enumerate() {
        let original = std::fs::read(dicom.join(name)).unwrap();
        let mut answers = [0; 2];
        assert_none(never_panics(
            200,
            500 + i as u64,
            |m: &mut Mutator| m.bytes(&original),
            |bytes: &Vec<u8>| {
                std::fs::write(&path, bytes).unwrap();
                answers[usize::from(medxfer_data::holds_no_image(&path))] += 1;
            },
        ));
        // Neither answer fixed: a damaged header is read, not guessed.
        assert!(answers[0] > 0 && answers[1] > 0, "{name}: {answers:?}");
    }
}

#[test]
fn mutated_images_decode_or_fail_naming_the_file() {
    let names = ["lzw.tif", "two_pages.tif", "rgb16.tif", "rgba.png", "palette.png", "gray.jpg", "cmyk.jpg", "exif_rotated.jpg"];
    mutated_files_decode_or_fail(&formats(), &names, Path::new("/data/mutant"), (250, 0), DicomFrame::Only);
}

/// NIfTI volumes, gzipped and not, their last slice read (mutants of the header's dimensions,
/// type, offset and scaling, of the extension, of the voxels and of the gzip stream), and a file's
/// slices read together.
#[test]
fn mutated_nifti_files_decode_or_fail_naming_the_file() {
    let nifti = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nifti"));
    let names = ["mr_12bit_big_endian.nii", "histology_rgb24.nii", "xray_2d.nii", "ct_window.nii.gz", "pet_float_nan_extension.nii.gz"];
    mutated_files_decode_or_fail(&nifti, &names, Path::new("/data/mutant.nii"), (250, 400), DicomFrame::Last);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("volume.nii");
    let original = std::fs::read(nifti.join("mr_12bit_big_endian.nii")).unwrap();
    assert_none(never_panics(
        250,
        500,
        |m: &mut Mutator| m.bytes(&original),
        |bytes: &Vec<u8>| {
            std::fs::write(&path, bytes).unwrap();
            let named = |error: &medxfer_data::Error| assert!(error.to_string().contains("volume.nii"), "{error}");
            match load_image_frames(&path, &[DicomFrame::Last, DicomFrame::First, DicomFrame::Number(9)], Rendering::default()) {
                Ok(images) => {
                    assert_eq!(images.len(), 3);
                    images.iter().filter_map(|image| image.as_ref().err()).for_each(named);
                }
                Err(error) => named(&error),
            }
        },
    ));
}

#[test]
fn mutated_dicom_files_decode_or_fail_naming_the_file() {
    let dicom = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dicom"));
    // About one mutant in three states a length beyond the file: refused before dicom-rs's
    // parser zero-fills it (seconds and up to 4 GiB each before).
    let names = [
        "ct_window.dcm",
        "voi_lut.dcm",
        "rgb_implicit.dcm",
        "rgb_planar.dcm",
        "us_ybr_full_422.dcm",
        "us_ybr_rle.dcm",
        "mr_rle.dcm",
        "mr_j2k.dcm",
        "dermoscopy_ybr_jpeg.dcm",
        "mr_htj2k.dcm",
        "ct_jpegls.dcm",
        "xa_jpegls_near.dcm",
    ];
    mutated_files_decode_or_fail(&dicom, &names, Path::new("/data/mutant.dcm"), (250, 100), DicomFrame::Only);
    // Files of several frames, their last read: the frame's bytes or fragments cut out, an
    // enhanced image's Functional Groups read, from damaged files too.
    let frames = [
        "us_cine.dcm",
        "us_cine_422.dcm",
        "us_cine_rle.dcm",
        "xa_cine_jpeg.dcm",
        "mr_jpegls_frames.dcm",
        "ct_enhanced.dcm",
        "xa_enhanced_lut.dcm",
    ];
    mutated_files_decode_or_fail(&dicom, &frames, Path::new("/data/mutant.dcm"), (250, 200), DicomFrame::Last);
    // Read together from one parse (each frame an image): each frame decodes or is an error
    // naming the file, and so is the file's.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loop.dcm");
    // Enhanced files whose frames state their positions too, read 2.5-D (the frames put in order
    // by their damaged Functional Groups).
    let stacks = dicom.parent().unwrap().join("series/enhanced");
    let files: Vec<PathBuf> = (frames.iter().chain(&["ct_enhanced_rle.dcm", "us_cine_deflate.dcm"]).map(|name| dicom.join(name)))
        .chain(["shuffled.dcm", "cine.dcm", "echoes.dcm", "dwi.dcm"].map(|name| stacks.join(name)))
        .collect();
    for (i, file) in files.iter().enumerate() {
        let name = file.display();
        let rendering = Rendering { adjacent_slices: file.starts_with(&stacks), ..Rendering::default() };
        let original = std::fs::read(file).unwrap();
        assert_none(never_panics(
            150,
            300 + i as u64,
            |m: &mut Mutator| m.bytes(&original),
            |bytes: &Vec<u8>| {
                std::fs::write(&path, bytes).unwrap();
                let named = |error: &medxfer_data::Error| assert!(error.to_string().contains("loop.dcm"), "{name}: {error}");
                match load_image_frames(&path, &[DicomFrame::Last, DicomFrame::First, DicomFrame::Middle], rendering) {
                    Ok(images) => {
                        assert_eq!(images.len(), 3, "{name}");
                        images.iter().filter_map(|image| image.as_ref().err()).for_each(named);
                    }
                    Err(error) => named(&error),
                }
            },
        ));
    }
}

#[test]
fn mutated_cheng_files_read_or_fail_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(formats().join("cheng_v0.mat")).unwrap();
    let path = dir.path().join("7.mat");
    assert_none(never_panics(
        400,
        3,
        |m: &mut Mutator| m.bytes(&original),
        |bytes: &Vec<u8>| {
            std::fs::write(&path, bytes).unwrap();
            if let Err(error) = load_rgb8(&path) {
                assert!(error.to_string().contains("7.mat"), "{error}");
            }
        },
    ));
}

#[test]
fn mutated_manifests_layout_csvs_and_catalogs_parse_or_fail_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::load_default().unwrap();

    // The split manifest.
    let entries: Vec<Entry> = (0..12)
        .map(|i| Entry {
            path: format!("a/{i}.png"),
            label: i % 2,
            group: format!("p{}", i / 3),
            split: [Part::Train, Part::Val, Part::Test][i as usize % 3],
            frame: None,
        })
        .collect();
    let info = medxfer_data::ManifestInfo {
        dataset: "breakhis".into(),
        task: "breast".into(),
        source: medxfer_data::Source::Faithful,
        seed: 0,
        images: entries.len(),
        counts: medxfer_data::split_counts(&entries),
        files_checksum: "0".repeat(64),
        leakage: None,
    };
    let manifest_dir = dir.path().join("manifest");
    medxfer_data::write_manifest(&manifest_dir, &entries, &info).unwrap();
    let manifest = manifest_dir.join(medxfer_data::MANIFEST_CSV);
    let original = std::fs::read_to_string(&manifest).unwrap();
    assert_eq!(read_manifest(&manifest).unwrap(), entries);
    assert_none(never_panics(
        800,
        5,
        |m: &mut Mutator| m.text(&original),
        |text: &String| {
            std::fs::write(&manifest, text).unwrap();
            if let Err(error) = read_manifest(&manifest) {
                assert!(error.to_string().contains("manifest.csv"), "{error}");
            }
        },
    ));

    // ISIC's ground-truth CSV in a replica of its layout.
    let isic = dir.path().join("isic");
    medxfer_data::synth::synthesize(catalog.dataset("isic2019").unwrap(), &isic, 2, 1).unwrap();
    let truth =
        walkdir::WalkDir::new(&isic).into_iter().flatten().find(|e| e.file_name() == medxfer_data::ISIC_GROUND_TRUTH).unwrap().into_path();
    let original = std::fs::read_to_string(&truth).unwrap();
    assert_none(never_panics(
        300,
        7,
        |m: &mut Mutator| m.text(&original),
        |text: &String| {
            std::fs::write(&truth, text).unwrap();
            let _ = scan_dataset(catalog.dataset("isic2019").unwrap(), &isic);
        },
    ));

    // The catalog: one of its TOMLs mutated at a time.
    let catalog_dir = dir.path().join("datasets");
    std::fs::create_dir_all(&catalog_dir).unwrap();
    let sources = Catalog::default_dir();
    let names: Vec<String> = std::fs::read_dir(&sources)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    for name in &names {
        std::fs::copy(sources.join(name), catalog_dir.join(name)).unwrap();
    }
    for (i, name) in names.iter().enumerate() {
        let original = std::fs::read_to_string(sources.join(name)).unwrap();
        assert_none(never_panics(
            60,
            100 + i as u64,
            |m: &mut Mutator| m.text(&original),
            |text: &String| {
                std::fs::write(catalog_dir.join(name), text).unwrap();
                if let Err(error) = Catalog::load(&catalog_dir) {
                    assert!(error.to_string().contains("datasets"), "{name}: {error}");
                }
            },
        ));
        std::fs::write(catalog_dir.join(name), original).unwrap();
    }
}
