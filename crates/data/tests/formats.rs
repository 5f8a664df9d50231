#![allow(clippy::unwrap_used)]
//! Decoding the formats of the real datasets against Pillow's `convert("RGB")` of the same files
//! (tests/fixtures/make_formats.py), and a Cheng file as MATLAB itself lays it out.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Tensor;
use medxfer_data::{load_rgb8, read_cheng};

fn formats() -> PathBuf {
    common::fixtures("formats")
}

fn expected() -> HashMap<String, Tensor> {
    common::expected(&formats())
}

#[test]
fn every_format_decodes_as_pillow_converts_it() {
    let expected = expected();
    // Lossless formats: identical. JPEG: libjpeg-turbo (Pillow) and zune-jpeg (image) differ in
    // IDCT and in chroma upsampling (the EXIF-rotated file is 4:2:0), so a few levels apart at
    // the most, under one on average. The EXIF-rotated JPEG keeps its stored 24 x 16 pixels,
    // as Pillow's open() and the reference leave it.
    for (name, max_allowed, mean_allowed) in [
        ("lzw.tif", 0, 0.0),
        ("two_pages.tif", 0, 0.0),
        ("rgb16.tif", 0, 0.0),
        ("rgba.png", 0, 0.0),
        ("palette.png", 0, 0.0),
        ("gray.jpg", 2, 0.5),
        ("cmyk.jpg", 2, 0.5),
        ("exif_rotated.jpg", 6, 1.0),
    ] {
        let ours = load_rgb8(&formats().join(name)).unwrap();
        let (max, mean, _) = common::differences(name, &ours, &expected[name]);
        assert!(max <= max_allowed && mean <= mean_allowed, "{name}: max difference {max}, mean {mean:.3}");
    }
}

#[test]
fn a_matlab_written_cheng_file_reads_with_its_superblock_v0() {
    let path = formats().join("cheng_v0.mat");
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"MATLAB 7.3 MAT-file"));
    // Superblock version 0, right after the 512-byte header.
    assert_eq!((&bytes[512..520], bytes[520]), (&b"\x89HDF\r\n\x1a\n"[..], 0));
    let slice = read_cheng(&path, true).unwrap();
    assert_eq!((slice.class, slice.patient.as_str(), slice.height, slice.width), ("pituitary", "TJ-0042", 7, 5));
    let image = expected()["cheng_v0.image"].flatten_all().unwrap().to_vec1::<i16>().unwrap();
    assert_eq!(slice.pixels.unwrap(), image);
}
