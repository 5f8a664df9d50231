#![allow(clippy::unwrap_used)]
//! Damaged and hostile files: every one an error naming the file, never a silently filled image
//! or an allocation the machine cannot make. The truth for truncation is Pillow's verdict on
//! every prefix of each format fixture (tests/fixtures/make_truncations.py).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{ImageFormat, RgbImage};
use medxfer_data::{Entry, ImageCache, MAX_PIXELS, Part, load_rgb8, read_cheng, synth::write_cheng_file, transform};

fn formats() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/formats"))
}

/// What a PNG holds after its last pixel: at most one byte of the deflate stream's padding
/// bits, zlib's Adler-32 (4), the IDAT chunk's CRC (4) and the IEND chunk (12).
const PNG_TAIL: usize = 1 + 4 + 4 + 12;

#[test]
fn every_prefix_of_each_format_is_judged_as_pillow_judges_it() {
    let verdicts: BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(formats().join("truncations.json")).unwrap()).unwrap();
    assert_eq!(verdicts.len(), 8);
    let dir = tempfile::tempdir().unwrap();
    for (name, verdict) in &verdicts {
        let bytes = std::fs::read(formats().join(name)).unwrap();
        assert_eq!(verdict.len(), bytes.len() + 1, "{name}: the fixture is stale");
        let path = dir.path().join(name);
        let mut refused = 0;
        for (cut, pillow) in verdict.chars().enumerate() {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let ours = load_rgb8(&path);
            match (pillow, &ours) {
                ('o', Ok(_)) => {}
                ('x', Err(e)) => {
                    refused += 1;
                    let message = e.to_string();
                    assert!(message.contains(&path.display().to_string()), "{name}[..{cut}]: {message}");
                    if name.ends_with(".jpg") && cut > bytes.len() / 2 {
                        assert!(message.contains("image file is truncated"), "{name}[..{cut}]: {message}");
                    }
                }
                // Stricter than Pillow in one place only: a PNG whose pixel data is whole but
                // whose last chunks (IDAT's CRC, IEND) are cut.
                ('o', Err(_)) if name.ends_with(".png") && cut + PNG_TAIL >= bytes.len() => {}
                _ => panic!("{name} cut to {cut} of {} bytes: Pillow {pillow}, ours {:?}", bytes.len(), ours.map(|i| i.dimensions())),
            }
        }
        assert!(refused > 0, "{name}");
    }
}

/// A valid PNG whose header claims `width` x `height` (the CRC recomputed), as a bomb does.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    RgbImage::new(4, 4).write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Png).unwrap();
    // Signature (8), IHDR length (4), "IHDR" (4), width, height, ..., CRC over type + data.
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// CRC-32 (ISO 3309, PNG's), bit by bit.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn a_pixel_bomb_is_refused_before_anything_is_allocated() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    // 100,000 x 100,000 pixels claimed: 30 GB as RGB8.
    std::fs::write(&path, png_claiming(100_000, 100_000)).unwrap();
    let message = load_rgb8(&path).unwrap_err().to_string();
    assert!(message.contains("bomb.png") && message.contains(&format!("over the limit of {MAX_PIXELS}")), "{message}");
    // Just under the limit by its header is not refused for its size (it fails for its data).
    std::fs::write(&path, png_claiming(13_000, 13_000)).unwrap();
    let message = load_rgb8(&path).unwrap_err().to_string();
    assert!(!message.contains("over the limit"), "{message}");
}

#[test]
fn a_sliver_is_refused_before_its_resize_is_allocated() {
    // 1 x 100,000: small itself, 256 x 25,600,000 (20 GB) after the study's resize.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    std::fs::create_dir_all(&root).unwrap();
    RgbImage::new(1, 100_000).save(root.join("sliver.png")).unwrap();
    RgbImage::new(40, 30).save(root.join("fine.png")).unwrap();
    let sliver = load_rgb8(&root.join("sliver.png")).unwrap();
    let message = transform::resize_shorter(&sliver, 256).unwrap_err().to_string();
    assert!(message.contains("25600000") && message.contains("over the limit"), "{message}");
    assert_eq!(transform::shorter_side_size(0, 7, 256), (0, 0));
    assert!(transform::resize_shorter(&RgbImage::new(0, 7), 256).is_err());
    // The cache build stops at it, naming it.
    let entries: Vec<Entry> = ["fine.png", "sliver.png"]
        .iter()
        .map(|p| Entry { path: (*p).into(), label: 0, group: (*p).into(), split: Part::Train, frame: None })
        .collect();
    let error = ImageCache::open_or_build(&dir.path().join("cache"), "test", &root, &entries, 256, false).unwrap_err();
    assert!(error.to_string().contains("sliver.png"), "{error}");
    // And leaves nothing half-written behind.
    let left: Vec<_> =
        std::fs::read_dir(dir.path().join("cache")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// A truncated JPEG stops the cache build, naming it; with other unreadable files (an empty one,
/// another truncated one later in the list, in another chunk of the build), one error lists
/// them all, so that a folder is mended in one pass.
#[test]
fn a_truncated_jpeg_stops_the_cache_build_naming_it_and_every_other_unreadable_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    std::fs::create_dir_all(&root).unwrap();
    let bytes = std::fs::read(formats().join("gray.jpg")).unwrap();
    std::fs::write(root.join("whole.jpg"), &bytes).unwrap();
    std::fs::write(root.join("partial.jpg"), &bytes[..bytes.len() * 3 / 4]).unwrap();
    let entry = |p: &str| Entry { path: p.into(), label: 0, group: p.into(), split: Part::Train, frame: None };
    let entries = vec![entry("whole.jpg"), entry("partial.jpg")];
    let error = ImageCache::open_or_build(&dir.path().join("cache"), "test", &root, &entries, 32, false).unwrap_err().to_string();
    assert!(error.contains("partial.jpg") && error.contains("image file is truncated"), "{error}");

    std::fs::write(root.join("empty.jpg"), b"").unwrap();
    std::fs::write(root.join("late.jpg"), &bytes[..bytes.len() / 2]).unwrap();
    let mut entries: Vec<Entry> = (0..300).map(|_| entry("whole.jpg")).collect();
    entries.insert(1, entry("partial.jpg"));
    entries.insert(5, entry("empty.jpg"));
    entries.push(entry("late.jpg"));
    let error = ImageCache::open_or_build(&dir.path().join("cache"), "test", &root, &entries, 32, false).unwrap_err().to_string();
    assert!(error.starts_with("3 of 303 image(s) could not be read; remove or replace them"), "{error}");
    for name in ["partial.jpg", "empty.jpg", "late.jpg"] {
        assert_eq!(error.matches(name).count(), 1, "{name} once in: {error}");
    }
    let left: Vec<_> =
        std::fs::read_dir(dir.path().join("cache")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "a failed build left {left:?}");
}

fn cheng_error(path: &Path) -> String {
    let by_scan = read_cheng(path, false).unwrap_err().to_string();
    let by_decode = load_rgb8(path).unwrap_err().to_string();
    assert_eq!(by_scan, by_decode);
    assert!(by_scan.contains(&path.display().to_string()), "{by_scan}");
    by_scan
}

#[test]
fn an_empty_or_zero_size_cheng_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("1.mat");
    std::fs::write(&empty, b"").unwrap();
    assert!(cheng_error(&empty).contains("empty (0 bytes)"));
    let zero = dir.path().join("2.mat");
    write_cheng_file(&zero, &[], 0, 0, 1, "P1", false).unwrap();
    assert!(cheng_error(&zero).contains("cjdata/image is empty"));
    let no_rows = dir.path().join("3.mat");
    write_cheng_file(&no_rows, &[], 0, 5, 1, "P1", false).unwrap();
    assert!(cheng_error(&no_rows).contains("cjdata/image is empty"));
    // A whole one still reads.
    let whole = dir.path().join("4.mat");
    write_cheng_file(&whole, &[1, 2, 3, 4, 5, 6], 2, 3, 1, "P1", false).unwrap();
    assert_eq!(load_rgb8(&whole).unwrap().dimensions(), (3, 2));
    // Cut short, it does not decode (the HDF5 reader's own message, with the file's name).
    let bytes = std::fs::read(&whole).unwrap();
    for cut in [1, 100, 511, 600, bytes.len() / 2, bytes.len() - 1] {
        let cut_path = dir.path().join("5.mat");
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        match load_rgb8(&cut_path) {
            Err(e) => assert!(e.to_string().contains("5.mat"), "cut to {cut}: {e}"),
            Ok(image) => panic!("cut to {cut} of {}: decoded {:?}", bytes.len(), image.dimensions()),
        }
    }
}
