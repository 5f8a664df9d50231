#![allow(clippy::unwrap_used)]
//! The medxfer-data binary: synth, check (text and JSON), split, cache.

use std::process::Command;

fn medxfer_data(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_medxfer-data")).args(args).output().unwrap()
}

/// `list` shows every dataset of the catalog with its task, its role as the TOML spells it
/// (Cheng's showed as "alternativeid") and its image count.
#[test]
fn list_shows_each_dataset_as_its_toml_describes_it() {
    let output = medxfer_data(&["list"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let catalog = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets");
    let mut seen = 0;
    for entry in std::fs::read_dir(catalog).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") || path.ends_with("tasks.toml") {
            continue;
        }
        let spec: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let field = |name: &str| spec[name].as_str().unwrap().to_string();
        let images = spec["expected"]["images"].as_integer().unwrap().to_string();
        let words = [field("name"), field("task"), field("role"), images];
        assert!(text.lines().any(|line| line.split_whitespace().take(4).eq(words.iter().map(String::as_str))), "{words:?} not in:\n{text}");
        seen += 1;
    }
    assert_eq!(seen, 7, "the six datasets and Cheng's");
}

#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    // `medxfer-data list | head -3`: it panicked ("failed printing to stdout: Broken pipe").
    let output = medxfer_cli::output_with_stdout_closed(Command::new(env!("CARGO_BIN_EXE_medxfer-data")).arg("list")).unwrap();
    assert_eq!(output.status.code(), Some(i32::from(medxfer_cli::CLOSED_OUTPUT_STATUS)), "{output:?}");
    assert!(output.stderr.is_empty(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn synth_then_check_reports_counts_and_problems_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bach");
    let root = root.to_str().unwrap();
    let output = medxfer_data(&["synth", "bach", "--out", root, "--n", "3"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output = medxfer_data(&["check", "bach", "--root", root, "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // Benign 3 -> 0; InSitu 3 + Invasive 3 -> 1; Normal 3 dropped.
    assert_eq!(report["dataset"], "bach");
    assert_eq!(report["images"], 9);
    assert_eq!(report["per_label"], serde_json::json!({"0": 3, "1": 6}));
    assert_eq!(report["dropped"], 3);
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(report["decoded"], 9);

    // A corrupt image: check (decoding by default) names it and exits non-zero.
    std::fs::write(dir.path().join("bach/ICIAR2018_BACH_Challenge/Photos/Benign/b001.tif"), b"II*\0broken").unwrap();
    let output = medxfer_data(&["check", "bach", "--root", root, "--json"]);
    assert!(!output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1);
    assert!(problems[0].as_str().unwrap().contains("b001.tif"));
}

#[test]
fn check_finds_a_truncated_jpeg_by_default_and_fast_skips_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mri");
    let root = root.to_str().unwrap();
    assert!(medxfer_data(&["synth", "brain-tumor-kaggle", "--out", root, "--n", "2"]).status.success());
    let victim = walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "jpg"))
        .unwrap()
        .into_path();
    let bytes = std::fs::read(&victim).unwrap();
    // A partial download: the first 80 % of the file.
    std::fs::write(&victim, &bytes[..bytes.len() * 4 / 5]).unwrap();
    let output = medxfer_data(&["check", "brain-tumor-kaggle", "--root", root]);
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let name = victim.file_name().unwrap().to_string_lossy();
    assert!(stdout.contains("1 problem(s)") && stdout.contains("image file is truncated") && stdout.contains(&*name), "{stdout}");
    assert!(stdout.contains("image(s) decoded"), "{stdout}");
    let output = medxfer_data(&["check", "brain-tumor-kaggle", "--root", root, "--fast", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((report["decoded"].as_u64(), report["problems"].as_array().map(Vec::len)), (Some(0), Some(0)));
    // A folder holding no image the task uses says it decoded none, not that --fast was given.
    let unknown = dir.path().join("unknown");
    std::fs::create_dir_all(unknown.join("Training/astrocytoma")).unwrap();
    std::fs::copy(&victim, unknown.join("Training/astrocytoma/a.jpg")).unwrap();
    let output = medxfer_data(&["check", "brain-tumor-kaggle", "--root", unknown.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("0 image(s) decoded") && !stdout.contains("--fast"), "{stdout}");
}

#[test]
fn check_counts_exact_duplicates_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mri");
    assert!(medxfer_data(&["synth", "brain-tumor-kaggle", "--out", root.to_str().unwrap(), "--n", "3"]).status.success());
    let output = medxfer_data(&["check", "brain-tumor-kaggle", "--root", root.to_str().unwrap(), "--json", "--duplicates"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // The replica copies one image within Training and one across Training/Testing.
    assert_eq!((report["duplicate_files"].as_u64(), report["duplicate_groups"].as_u64()), (Some(2), Some(2)));
    // Training 4 classes x (3 + 2), Testing 4 x 3, and the two copies.
    assert_eq!(report["images"], 34);
}

#[test]
fn split_writes_a_manifest_and_reports_leakage() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("breakhis");
    let out = dir.path().join("split");
    assert!(medxfer_data(&["synth", "breakhis", "--out", root.to_str().unwrap(), "--n", "6"]).status.success());
    let output =
        medxfer_data(&["split", "breast", "--root", root.to_str().unwrap(), "--source", "grouped", "--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("0 of 7 groups span splits"), "{stdout}");
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(info["images"], 48);
    assert_eq!(info["source"], "grouped");

    let output = medxfer_data(&["split", "breast", "--root", "/no/such/dir", "--out", out.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/no/such/dir"));
    let output =
        medxfer_data(&["split", "breast", "--root", root.to_str().unwrap(), "--source", "authors", "--out", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("--authors-dir"));
    // The authors' folder without --source authors: refused (it was ignored, and the split
    // made was the faithful one).
    let elsewhere = out.with_file_name("elsewhere");
    let output =
        medxfer_data(&["split", "breast", "--root", root.to_str().unwrap(), "--authors-dir", "/tmp", "--out", elsewhere.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("only read with --source authors"), "{stderr}");
    assert!(!elsewhere.exists());

    // The same split again is a no-op; another one over it is refused and leaves it as it was.
    let manifest = std::fs::read(out.join("manifest.csv")).unwrap();
    let split = |args: &[&str]| {
        medxfer_data(&[&["split", "breast", "--root", root.to_str().unwrap(), "--out", out.to_str().unwrap()][..], args].concat())
    };
    assert!(split(&["--source", "grouped"]).status.success());
    for other in [&["--source", "faithful"][..], &["--source", "faithful", "--seed", "1"]] {
        let output = split(other);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success()
                && stderr.contains("holds another split (breakhis grouped split, seed 0)")
                && stderr.contains("another --out"),
            "{other:?}: {stderr}"
        );
        assert_eq!(std::fs::read(out.join("manifest.csv")).unwrap(), manifest);
    }
}

/// `cache` of a split's manifest; a manifest of another dataset, or a --root without the
/// dataset's images, are refused and write nothing (the second wrote an empty cache and said
/// "0 images cached").
#[test]
fn cache_builds_from_a_manifest_and_refuses_another_dataset_s() {
    let dir = tempfile::tempdir().unwrap();
    let (breakhis, bach, split) = (dir.path().join("breakhis"), dir.path().join("bach"), dir.path().join("split"));
    assert!(medxfer_data(&["synth", "breakhis", "--out", breakhis.to_str().unwrap(), "--n", "4"]).status.success());
    assert!(medxfer_data(&["synth", "bach", "--out", bach.to_str().unwrap(), "--n", "3"]).status.success());
    assert!(medxfer_data(&["split", "breast", "--root", breakhis.to_str().unwrap(), "--out", split.to_str().unwrap()]).status.success());
    let manifest = split.join("manifest.csv");
    let images = std::fs::read_to_string(&manifest).unwrap().lines().count() - 1;
    let cache = |dataset: &str, root: &std::path::Path, out: &std::path::Path, manifest: Option<&std::path::Path>| {
        let mut args = vec!["cache", dataset, "--root", root.to_str().unwrap(), "--out", out.to_str().unwrap(), "--short-side", "24"];
        if let Some(manifest) = manifest {
            args.extend(["--manifest", manifest.to_str().unwrap()]);
        }
        medxfer_data(&args)
    };
    let built = dir.path().join("cache");
    let output = cache("breakhis", &breakhis, &built, Some(&manifest));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with(&format!("{images} images cached")));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("not the files it was made from"));
    // One image replaced in place under its name (a resized or recompressed copy of the data): the
    // cache is built from the files as they are, and says the split was made from others.
    let first = std::fs::read_to_string(&manifest).unwrap().lines().nth(1).unwrap().split(',').next().unwrap().to_string();
    let (width, height) = image::image_dimensions(breakhis.join(&first)).unwrap();
    image::RgbImage::from_pixel(width, height, image::Rgb([200, 120, 180])).save(breakhis.join(&first)).unwrap();
    let output = cache("breakhis", &breakhis, &dir.path().join("cache2"), Some(&manifest));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let warning = format!("{}: the split's {images} images are not the files it was made from", breakhis.display());
    assert!(stderr.contains(&warning) && stderr.contains(&split.join("manifest.json").display().to_string()), "{stderr}");

    let refused = dir.path().join("refused");
    let output = cache("bach", &bach, &refused, Some(&manifest));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("this is a manifest of breakhis (task breast), not of bach"), "{stderr}");
    let output = cache("breakhis", &bach, &refused, None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("no images of breakhis found: is --root the folder of breakhis?"), "{stderr}");
    assert!(!refused.exists(), "a refused cache wrote its folder");
}

/// `show` writes a file's image as the decoder makes it (a NIfTI volume's middle slice, pixel for
/// pixel), and a contact sheet of every slice (tiles as large as the slices: each slice unscaled,
/// centred, in order), a volume reoriented, and a DICOM series' slice 2.5-D (its neighbours named);
/// a volume without a chosen slice, or a damaged file, fails naming it.
#[test]
fn show_writes_a_file_as_the_backbones_see_it() {
    use medxfer_data::{DicomFrame, load_image_frame};
    let dir = tempfile::tempdir().unwrap();
    let volume = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nifti/ct_window.nii.gz");
    let (volume_text, out) = (volume.to_str().unwrap(), dir.path().join("middle.png"));
    let output = medxfer_data(&["show", volume_text, "--slice", "middle", "--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("12 x 9 pixels, 4 frame(s)") && stdout.contains("(frame middle)"), "{stdout}");
    assert!(stdout.contains("slices along the third stored axis: axial"), "{stdout}");
    let middle = load_image_frame(&volume, DicomFrame::Middle).unwrap().image;
    assert_eq!(image::open(&out).unwrap().to_rgb8(), middle);

    // Four slices of 12 x 9 in tiles of 12, three a row: 36 x 24, slice k at column k % 3, row
    // k / 3, a line of black above and below it (9 rows centred in 12: 1 above, 2 below).
    let sheet = dir.path().join("sheet.png");
    let output = medxfer_data(&["show", volume_text, "--slice", "all", "--tile", "12", "--columns", "3", "--out", sheet.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("(4 frames, all, as a 36 x 24 sheet)"), "{output:?}");
    let sheet = image::open(&sheet).unwrap().to_rgb8();
    assert_eq!(sheet.dimensions(), (36, 24));
    for k in 0..4u32 {
        let slice = load_image_frame(&volume, DicomFrame::Number(k + 1)).unwrap().image;
        let (x, y) = ((k % 3) * 12, (k / 3) * 12 + 1);
        assert_eq!(image::imageops::crop_imm(&sheet, x, y, 12, 9).to_image(), slice, "slice {}", k + 1);
        assert!((0..12).all(|dx| sheet.get_pixel(x + dx, y - 1).0 == [0, 0, 0]), "slice {}: the line above", k + 1);
    }
    // The sixth tile, which no slice fills: black.
    assert!(image::imageops::crop_imm(&sheet, 24, 12, 12, 12).to_image().pixels().all(|p| p.0 == [0, 0, 0]));
    // Tiles smaller than the slices: each shrunk to 6 x 4 (its aspect kept), the sheet 18 x 12.
    let small = dir.path().join("small.png");
    let output = medxfer_data(&["show", volume_text, "--slice", "all", "--tile", "6", "--columns", "3", "--out", small.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let small = image::open(&small).unwrap().to_rgb8();
    assert_eq!(small.dimensions(), (18, 12));
    // Rows 1..5 of the first tile hold the shrunk slice (not black), row 0 and 5 the margins.
    assert!((0..6).all(|x| small.get_pixel(x, 0).0 == [0, 0, 0] && small.get_pixel(x, 5).0 == [0, 0, 0]));
    assert!((1..5).any(|y| (0..6).any(|x| small.get_pixel(x, y).0 != [0, 0, 0])));

    // A sagittal volume (12 x 9 x 2) reoriented: 9 axial slices of 2 x 12, the middle one as the
    // decoder reads it so, the stored plane said.
    let sagittal = volume.with_file_name("t1_sagittal.nii.gz");
    let canonical = dir.path().join("canonical.png");
    let output = medxfer_data(&[
        "show",
        sagittal.to_str().unwrap(),
        "--slice",
        "middle",
        "--reorient",
        "canonical",
        "--out",
        canonical.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("2 x 12 pixels, 9 frame(s)") && stdout.contains("slices axial, the volume reoriented to RAS+ (stored: sagittal"),
        "{output:?}"
    );
    let rendering = medxfer_data::Rendering { orientation: medxfer_data::Orientation::Canonical, ..Default::default() };
    let middle = medxfer_data::load_image_frames(&sagittal, &[DicomFrame::Middle], rendering).unwrap().remove(0).unwrap().image;
    assert_eq!(image::open(&canonical).unwrap().to_rgb8(), middle);

    // Three windows and 2.5-D said, and refused together, naming the fix.
    let three = ["show", volume_text, "--slice", "middle", "--window", "40,80+80,200+600,2800", "--out", out.to_str().unwrap()];
    let output = medxfer_data(&three);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("one window a channel: red, green, blue 40,80+80,200+600,2800"), "{output:?}");
    let output = medxfer_data(&["show", volume_text, "--slice", "middle", "--adjacent-slices", "--out", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("2.5-D: each frame's red the frame before"), "{output:?}");
    let output = medxfer_data(&[&three[..], &["--adjacent-slices"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("or with one window"), "{stderr}");
    // A slice of a DICOM series: its place and neighbours said, the image its 2.5-D one.
    let slice = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/series/scan/IM000001");
    let output = medxfer_data(&["show", slice.to_str().unwrap(), "--adjacent-slices", "--out", out.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("2.5-D: slice 2 of 5 of its DICOM series in")
            && stdout.contains("(by position along the slices' normal): red IM000004, green itself, blue IM000005")
            && stdout.contains("a sagittal slice (from its Image Orientation (Patient)"),
        "{output:?}"
    );
    let adjacent = medxfer_data::Rendering { adjacent_slices: true, ..Default::default() };
    let slab = medxfer_data::load_image_frames(&slice, &[DicomFrame::Only], adjacent).unwrap().remove(0).unwrap().image;
    assert_eq!(image::open(&out).unwrap().to_rgb8(), slab);
    // Named bare, in its own folder: the same series.
    let output = Command::new(env!("CARGO_BIN_EXE_medxfer-data"))
        .current_dir(slice.parent().unwrap())
        .args(["show", "IM000001", "--adjacent-slices", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("2.5-D: slice 2 of 5 of its DICOM series in . ("), "{output:?}");
    assert_eq!(image::open(&out).unwrap().to_rgb8(), slab);
    // An enhanced file whose frames are stored out of order: its stack's order said, lowest first.
    let shuffled = slice.parent().unwrap().parent().unwrap().join("enhanced/shuffled.dcm");
    let output = medxfer_data(&["show", shuffled.to_str().unwrap(), "--slice", "2", "--adjacent-slices", "--out", out.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("(by the frames' Plane Positions, lowest first: frames 5, 2, 4, 1, 3; the file stores them in another order)")
            && stdout.contains("an axial slice (from its Image Orientation (Patient)"),
        "{output:?}"
    );
    // A slice of a dual-echo series: its place in its echo's stack said.
    let echo = slice.parent().unwrap().parent().unwrap().join("stacks/MR0003");
    let output = medxfer_data(&["show", echo.to_str().unwrap(), "--adjacent-slices", "--out", out.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("slice 2 of 3 of its DICOM series (its stack of echo 2) in")
            && String::from_utf8_lossy(&output.stdout).contains("red MR0005, green itself, blue MR0002"),
        "{output:?}"
    );
    // A diffusion file of two b-values: each b-value's stack said.
    let dwi = shuffled.with_file_name("dwi.dcm");
    let output = medxfer_data(&["show", dwi.to_str().unwrap(), "--slice", "2", "--adjacent-slices", "--out", out.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("lowest first: 2 stacks its Dimension Index tells apart by DiffusionBValue, frames 3, 5, 1 / 4, 6, 2;"),
        "{output:?}"
    );
    // --slice on a series' slice: the series' slices chosen (here every second: its 1st, 3rd and
    // 5th along the normal, IM000004, IM000005 and IM000002), a tile each in order.
    let sheet = dir.path().join("series.png");
    let output = medxfer_data(&["show", slice.to_str().unwrap(), "--slice", "every:2", "--tile", "12", "--out", sheet.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("(3 slices of its DICOM series, every:2, as a 36 x 12 sheet)")
            && stdout.contains("a slice of a DICOM series of 5 files"),
        "{output:?}"
    );
    let sheet = image::open(&sheet).unwrap().to_rgb8();
    for (k, name) in ["IM000004", "IM000005", "IM000002"].into_iter().enumerate() {
        let alone = medxfer_data::load_rgb8(&slice.with_file_name(name)).unwrap();
        // 9 rows centred in a tile of 12: one row of black above.
        let tile = image::imageops::crop_imm(&sheet, 12 * k as u32, 1, 12, 9).to_image();
        assert_eq!(tile, alone, "{name}");
    }
    let one = dir.path().join("one slice.png");
    let output = medxfer_data(&["show", slice.to_str().unwrap(), "--slice", "middle", "--out", one.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("(the series' slice middle: ")
            && String::from_utf8_lossy(&output.stdout).contains("IM000005)"),
        "{output:?}"
    );
    let output = medxfer_data(&["show", slice.to_str().unwrap(), "--slice", "7", "--out", one.to_str().unwrap()]);
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("the DICOM series holds 5 slices"), "{output:?}");

    for (file, expected) in [(volume.clone(), "holds 4 slices"), (dir.path().join("middle.png.missing"), "middle.png.missing")] {
        let output = medxfer_data(&["show", file.to_str().unwrap(), "--out", dir.path().join("x.png").to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{stderr}");
    }
}
