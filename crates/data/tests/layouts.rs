#![allow(clippy::unwrap_used)]
//! Every reader against a synthetic replica of its real layout: the images the task uses, per
//! label, the deliberate drops, the groups, and the pitfalls DATASETS.md lists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use medxfer_data::{Catalog, Scan, read_cheng, scan_dataset, synth};

fn catalog() -> Catalog {
    Catalog::load_default().unwrap()
}

fn replica_scan(name: &str, per_class: usize) -> (tempfile::TempDir, synth::Replica, Scan) {
    let catalog = catalog();
    let spec = catalog.dataset(name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let replica = synth::synthesize(spec, dir.path(), per_class, 7).unwrap();
    let scan = scan_dataset(spec, dir.path()).unwrap();
    (dir, replica, scan)
}

fn per_label(scan: &Scan) -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    for record in &scan.records {
        *counts.entry(record.label).or_default() += 1;
    }
    counts
}

#[test]
fn every_reader_recovers_its_replica() {
    for spec in &catalog().datasets {
        let (dir, replica, scan) = replica_scan(&spec.name, 4);
        assert!(scan.problems.is_empty(), "{}: {:?}", spec.name, scan.problems);
        assert_eq!(per_label(&scan), replica.per_label, "{}", spec.name);
        assert_eq!(scan.dropped, replica.dropped, "{}", spec.name);
        for record in &scan.records {
            assert!(dir.path().join(&record.path).is_file(), "{}: {}", spec.name, record.path);
            assert_eq!(spec.label_of(&record.class), Some(record.label));
        }
    }
}

#[test]
fn isic_drops_bcc_and_scc_finds_downsampled_stems_and_groups_by_lesion() {
    let (_dir, replica, scan) = replica_scan("isic2019", 4);
    // 8 ground-truth classes x 4: MEL 4 -> 1; NV, BKL, AK, DF, VASC 20 -> 0; BCC, SCC dropped.
    assert_eq!(replica.per_label, BTreeMap::from([(0, 20), (1, 4)]));
    assert_eq!(scan.dropped, 8);
    assert!(scan.records.iter().any(|r| r.path == "ISIC_2019_Training_Input/ISIC_0000001_downsampled.jpg"));
    assert!(scan.records.iter().all(|r| r.class != "BCC" && r.class != "SCC"));
    // Image 0 has no lesion id: its own group. Images 1 and 2 of MEL share one lesion.
    let group = |stem: &str| scan.records.iter().find(|r| r.path.contains(stem)).unwrap().group.clone();
    assert_eq!(group("ISIC_0000000"), "ISIC_0000000");
    assert_eq!(group("ISIC_0000001_downsampled"), "HAM_MEL_shared");
    assert_eq!(group("ISIC_0000002"), "HAM_MEL_shared");
    assert_eq!(group("ISIC_0000003"), "BCN_0000003");
}

#[test]
fn pad_reads_the_26_columns_and_both_image_folders_and_groups_by_patient() {
    let (_dir, _, scan) = replica_scan("pad-ufes-20", 4);
    let folders: BTreeSet<&str> = scan.records.iter().map(|r| r.path.rsplit_once('/').unwrap().0).collect();
    assert_eq!(folders, BTreeSet::from(["images/imgs_part_1", "images/imgs_part_2"]));
    // ACK, NEV, SEK -> 0; MEL -> 1; BCC and SCC dropped.
    assert_eq!(per_label(&scan), BTreeMap::from([(0, 12), (1, 4)]));
    assert_eq!(scan.dropped, 8);
    // Lesion 1867 belongs to two patients: the group is the patient, not the lesion number.
    let groups_1867: BTreeSet<&str> = scan.records.iter().filter(|r| r.path.contains("_1867_")).map(|r| r.group.as_str()).collect();
    assert_eq!(groups_1867.len(), 2);
}

#[test]
fn breakhis_takes_labels_and_patients_from_file_names_under_a_double_nested_root() {
    let (_dir, _, scan) = replica_scan("breakhis", 4);
    assert!(scan.records.iter().all(|r| r.path.starts_with("BreaKHis_v1/BreaKHis_v1/")));
    // 22549AB and 22549CD are two slides of one patient.
    let groups: BTreeSet<&str> = scan.records.iter().map(|r| r.group.as_str()).collect();
    assert_eq!(groups, BTreeSet::from(["14-22549", "14-29960", "14-21998", "15-3411", "14-13412", "15-1234", "14-9146"]));
    assert_eq!(per_label(&scan), BTreeMap::from([(0, 20), (1, 12)]));
}

#[test]
fn bach_drops_normal_and_reads_16_bit_tiffs() {
    let (dir, _, scan) = replica_scan("bach", 4);
    assert_eq!(per_label(&scan), BTreeMap::from([(0, 4), (1, 8)]));
    assert_eq!(scan.dropped, 4);
    let wide = scan.records.iter().find(|r| r.path.ends_with("b002.tif")).unwrap();
    let decoded = image::open(dir.path().join(&wide.path)).unwrap();
    assert_eq!(decoded.color(), image::ColorType::Rgb16);
    let rgb = medxfer_data::load_rgb8(&dir.path().join(&wide.path)).unwrap();
    // The synthetic 16-bit value is 256 v + 30 (x mod 7): its high byte is v, which Pillow keeps.
    let raw = decoded.to_rgb16();
    for (x, y) in [(0, 0), (6, 3), (31, 23)] {
        assert_eq!(rgb.get_pixel(x, y).0, raw.get_pixel(x, y).0.map(|v| (v >> 8) as u8));
    }
}

#[test]
fn brain_kaggle_keeps_origins_and_groups_exact_duplicates_by_content() {
    let (_dir, _, scan) = replica_scan("brain-tumor-kaggle", 4);
    let origins: BTreeSet<&str> = scan.records.iter().map(|r| r.origin.as_str()).collect();
    assert_eq!(origins, BTreeSet::from(["Testing", "Training"]));
    let group = |path: &str| scan.records.iter().find(|r| r.path == path).unwrap().group.clone();
    assert_eq!(group("Training/glioma_tumor/gg (1).jpg"), group("Training/glioma_tumor/gg (copy).jpg"));
    assert_eq!(group("Training/no_tumor/1.jpg"), group("Testing/no_tumor/1 (dup).jpg"));
    assert_ne!(group("Training/no_tumor/1.jpg"), group("Training/no_tumor/2.jpg"));
    // Names repeat across folders: the relative path is the key.
    assert!(scan.records.iter().filter(|r| r.path.ends_with("/1.jpg")).count() >= 2);
}

#[test]
fn cheng_reads_label_pid_and_the_transposed_int16_image() {
    let dir = tempfile::tempdir().unwrap();
    let (rows, columns) = (5, 3);
    // MATLAB(r, c) = 100 r + c, with a negative minimum.
    let image: Vec<i16> = (0..rows).flat_map(|r| (0..columns).map(move |c| (100 * r + c) as i16 - 50)).collect();
    for chunked in [false, true] {
        let path = dir.path().join(format!("{chunked}.mat"));
        synth::write_cheng_file(&path, &image, rows, columns, 2, "MRN 4212", chunked).unwrap();
        // The MATLAB header sits in the 512-byte userblock; HDF5's signature follows it.
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"MATLAB 7.3 MAT-file"));
        assert_eq!(&bytes[512..520], b"\x89HDF\r\n\x1a\n");
        let slice = read_cheng(&path, true).unwrap();
        assert_eq!((slice.class, slice.patient.as_str(), slice.height, slice.width), ("glioma", "MRN 4212", rows, columns));
        assert_eq!(slice.pixels.as_deref(), Some(image.as_slice()), "chunked {chunked}");
        // Per-image min-max to 0..=255: min -50 -> 0, max 352 -> 255, MATLAB(2, 1) = 151 -> 128.
        let rgb = medxfer_data::load_rgb8(&path).unwrap();
        assert_eq!(rgb.dimensions(), (columns as u32, rows as u32));
        assert_eq!(rgb.get_pixel(0, 0).0, [0; 3]);
        assert_eq!(rgb.get_pixel(2, 4).0, [255; 3]);
        assert_eq!(rgb.get_pixel(1, 2).0, [((201.0f64 * 255.0 / 402.0).round()) as u8; 3]);
    }
}

#[test]
fn nins_keeps_six_folders_and_ignores_the_rest() {
    let (_dir, _, scan) = replica_scan("nins", 4);
    // Normal 4 + the _1 duplicate; glioma + astrocytoma; meningioma + small; pituitary.
    assert_eq!(per_label(&scan), BTreeMap::from([(0, 5), (1, 8), (2, 8), (3, 4)]));
    assert_eq!(scan.dropped, 4);
    assert!(scan.records.iter().all(|r| !r.path.contains("Stroke")));
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn bad_input_is_reported_with_the_file_and_the_fix() {
    let catalog = catalog();
    // A missing root.
    let error = scan_dataset(catalog.dataset("isic2019").unwrap(), Path::new("/no/such/root")).unwrap_err().to_string();
    assert!(error.contains("/no/such/root") && error.contains("--root"), "{error}");

    // A wrong CSV header names the file and the missing column.
    let (dir, _, _) = replica_scan("isic2019", 3);
    let truth = dir.path().join("ISIC_2019_Training_GroundTruth.csv");
    let text = std::fs::read_to_string(&truth).unwrap().replacen("MEL,", "MELANOMA,", 1);
    write(&truth, &text);
    let error = scan_dataset(catalog.dataset("isic2019").unwrap(), dir.path()).unwrap_err().to_string();
    assert!(error.contains("ISIC_2019_Training_GroundTruth.csv") && error.contains("missing column(s) MEL"), "{error}");

    // A listed but absent image, an unknown class folder, a corrupt image: all listed at once.
    let (dir, _, _) = replica_scan("brain-tumor-kaggle", 3);
    std::fs::create_dir_all(dir.path().join("Training/astrocytoma")).unwrap();
    write(&dir.path().join("Training/astrocytoma/a.jpg"), "x");
    let scan = scan_dataset(catalog.dataset("brain-tumor-kaggle").unwrap(), dir.path()).unwrap();
    assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
    assert!(scan.problems[0].problem.contains("\"astrocytoma\" is not in brain-tumor-kaggle.toml"));
    assert!(!scan.problems[0].problem.contains("a class of"), "no other download has astrocytoma: {:?}", scan.problems);
    // A root one level too deep names the folder to give: BACH's Photos/ given itself (its name
    // is part of the layout).
    let (dir, _, _) = replica_scan("bach", 2);
    let photos = walkdir::WalkDir::new(dir.path()).into_iter().flatten().find(|e| e.file_name() == "Photos").unwrap().into_path();
    let error = scan_dataset(catalog.dataset("bach").unwrap(), &photos).unwrap_err().to_string();
    assert!(error.contains(&format!("{} holds Photos: give that folder as --root", photos.parent().unwrap().display())), "{error}");
    // ISIC's image folder given itself: the ground truth is one level up.
    let (dir, _, _) = replica_scan("isic2019", 2);
    let error = scan_dataset(catalog.dataset("isic2019").unwrap(), &dir.path().join("ISIC_2019_Training_Input")).unwrap_err().to_string();
    let expected = format!("{} holds ISIC_2019_Training_GroundTruth.csv: give that folder as --root", dir.path().display());
    assert!(error.contains(&expected), "{error}");
    let error = scan_dataset(catalog.dataset("bach").unwrap(), dir.path()).unwrap_err().to_string();
    assert!(error.contains("is it the right --root?"), "{error}");
    // Kaggle's most downloaded brain MRI set, taken for the paper's: named, with the right one.
    let (dir, _, before) = replica_scan("brain-tumor-kaggle", 2);
    for part in ["Training", "Testing"] {
        for (sartaj, nickparvar) in
            [("glioma_tumor", "glioma"), ("meningioma_tumor", "meningioma"), ("no_tumor", "notumor"), ("pituitary_tumor", "pituitary")]
        {
            std::fs::rename(dir.path().join(part).join(sartaj), dir.path().join(part).join(nickparvar)).unwrap();
        }
    }
    let error = medxfer_data::scan_clean(catalog.dataset("brain-tumor-kaggle").unwrap(), dir.path()).unwrap_err().to_string();
    let expected = "a class of Brain Tumor MRI Dataset, Masoud Nickparvar (Kaggle, 7,023 images), not of Brain Tumor Classification (MRI), Sartaj Bhuvaji (Kaggle): the study's is at https://www.kaggle.com/datasets/sartajbhuvaji/brain-tumor-classification-mri";
    assert!(error.contains(expected) && error.contains(&format!("{} problem(s) in all", before.records.len())), "{error}");

    let (dir, _, before) = replica_scan("pad-ufes-20", 3);
    let melanoma = before.records.iter().find(|r| r.label == 1).unwrap();
    std::fs::remove_file(dir.path().join(&melanoma.path)).unwrap();
    let scan = scan_dataset(catalog.dataset("pad-ufes-20").unwrap(), dir.path()).unwrap();
    let name = melanoma.path.rsplit('/').next().unwrap();
    assert_eq!(scan.problems.len(), 1, "{:?}", scan.problems);
    assert!(scan.problems[0].path.ends_with("metadata.csv"));
    assert!(scan.problems[0].problem.contains(name) && scan.problems[0].problem.contains("listed but absent"), "{:?}", scan.problems);

    let corrupt = dir.path().join("images/imgs_part_2/broken.png");
    write(&corrupt, "\u{89}PNG not really");
    let error = medxfer_data::load_rgb8(&corrupt).unwrap_err().to_string();
    assert!(error.contains("broken.png") && error.contains("truncated or corrupt"), "{error}");

    // A Cheng file that is not HDF5.
    let fake = dir.path().join("1.mat");
    write(&fake, "MATLAB 5.0 MAT-file");
    let error = read_cheng(&fake, false).unwrap_err().to_string();
    assert!(error.contains("1.mat") && error.contains("MATLAB v7.3"), "{error}");
}

/// An image whose name is not UTF-8 (a Latin-1 name from an old archive) is a problem naming the
/// fix: its path in a manifest (text) would name another file. Kaggle's reader reported it as
/// "cannot read: No such file or directory" (seen); BreakHis's as a name not of its pattern.
#[test]
fn an_image_whose_name_is_not_utf8_is_a_problem_with_the_fix() {
    use std::os::unix::ffi::OsStrExt;
    let catalog = catalog();
    for (dataset, folder, copied) in [("brain-tumor-kaggle", "Training/glioma_tumor", "gg (1).jpg"), ("breakhis", "", "")] {
        let (dir, _, before) = replica_scan(dataset, 3);
        let (folder, copied) = if dataset == "breakhis" {
            let first = Path::new(&before.records[0].path);
            (first.parent().unwrap().to_path_buf(), first.file_name().unwrap().to_str().unwrap().to_string())
        } else {
            (Path::new(folder).to_path_buf(), copied.to_string())
        };
        // The copied file's name with one byte made Latin-1's e-acute (0xE9): not UTF-8.
        let mut name = copied.as_bytes().to_vec();
        name.insert(name.iter().rposition(|&b| b == b'.').unwrap(), 0xE9);
        let odd = folder.join(std::ffi::OsStr::from_bytes(&name));
        std::fs::copy(dir.path().join(&folder).join(&copied), dir.path().join(&odd)).unwrap();
        let scan = scan_dataset(catalog.dataset(dataset).unwrap(), dir.path()).unwrap();
        assert_eq!(scan.records, before.records, "{dataset}: the others are read as before");
        assert_eq!(scan.problems.len(), 1, "{dataset}: {:?}", scan.problems);
        assert_eq!(scan.problems[0].path, Path::new(&odd.to_string_lossy().into_owned()), "{dataset}");
        assert!(
            scan.problems[0].problem.contains("not valid UTF-8") && scan.problems[0].problem.contains("rename it"),
            "{dataset}: {:?}",
            scan.problems
        );
    }
}

/// A dataset unzipped from an archive made on a Mac holds `__MACOSX/` and AppleDouble `._NAME`
/// files beside the images (and `.DS_Store`): none is the dataset's. BreakHis's check failed on
/// them, "not a BreakHis image name" (seen).
#[test]
fn a_mac_archive_s_bookkeeping_is_not_read_as_images() {
    let catalog = catalog();
    for dataset in ["breakhis", "brain-tumor-kaggle", "isic2019"] {
        let (dir, _, before) = replica_scan(dataset, 3);
        for record in before.records.iter().take(3) {
            let path = Path::new(&record.path);
            let apple_double = format!("._{}", path.file_name().unwrap().to_str().unwrap());
            for folder in [dir.path().to_path_buf(), dir.path().join("__MACOSX")] {
                let parent = folder.join(path.parent().unwrap());
                std::fs::create_dir_all(&parent).unwrap();
                std::fs::write(parent.join(&apple_double), b"\x00\x05\x16\x07 AppleDouble").unwrap();
                std::fs::write(parent.join(".DS_Store"), b"\x00\x00\x00\x01Bud1").unwrap();
            }
        }
        let scan = scan_dataset(catalog.dataset(dataset).unwrap(), dir.path()).unwrap();
        assert_eq!(scan.records, before.records, "{dataset}");
        assert!(scan.problems.is_empty(), "{dataset}: {:?}", scan.problems);
    }
}
