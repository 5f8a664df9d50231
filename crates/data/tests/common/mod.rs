//! What the decoding tests share: a fixture folder's expected images (written by its Python
//! script) and how far a decoded image is from one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::RgbImage;

/// tests/fixtures/`name`.
pub fn fixtures(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The (height, width, 3) u8 images (and other tensors) of `dir`/expected.safetensors.
pub fn expected(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap()
}

/// The largest and the mean absolute difference of `ours` from `theirs`, a (height, width, 3)
/// u8 tensor of the same size (asserted, naming `name`), and `theirs`' samples.
pub fn differences(name: &str, ours: &RgbImage, theirs: &Tensor) -> (u8, f64, Vec<u8>) {
    let (height, width, _) = theirs.dims3().unwrap();
    assert_eq!(ours.dimensions(), (width as u32, height as u32), "{name}");
    let theirs = theirs.flatten_all().and_then(|t| t.to_vec1::<u8>()).unwrap();
    let differences: Vec<u8> = ours.as_raw().iter().zip(&theirs).map(|(a, b)| a.abs_diff(*b)).collect();
    let max = differences.iter().copied().max().unwrap_or(0);
    let mean = differences.iter().map(|&d| f64::from(d)).sum::<f64>() / differences.len() as f64;
    (max, mean, theirs)
}
