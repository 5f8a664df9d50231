#![allow(clippy::unwrap_used)]
//! The transforms against torchvision/Pillow outputs (tests/fixtures/make_fixtures.py).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use image::RgbImage;
use medxfer_data::transform;

fn fixtures() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/transforms.safetensors"), &Device::Cpu).unwrap()
}

fn rgb(tensor: &Tensor) -> RgbImage {
    let (height, width, _) = tensor.dims3().unwrap();
    RgbImage::from_raw(width as u32, height as u32, tensor.flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap()
}

/// (max per-sample difference, fraction of differing samples)
fn difference(ours: &RgbImage, theirs: &RgbImage) -> (u8, f64) {
    assert_eq!(ours.dimensions(), theirs.dimensions());
    let diffs: Vec<u8> = ours.as_raw().iter().zip(theirs.as_raw()).map(|(a, b)| a.abs_diff(*b)).collect();
    (diffs.iter().copied().max().unwrap(), diffs.iter().filter(|&&d| d > 0).count() as f64 / diffs.len() as f64)
}

#[test]
fn eval_transform_matches_torchvision_within_one_level() {
    let f = fixtures();
    for name in ["landscape", "portrait", "square_up", "odd_down", "study"] {
        let size = f[&format!("{name}.size")].to_vec1::<i64>().unwrap();
        let ours = transform::eval_rgb8(&rgb(&f[&format!("{name}.input")]), size[0] as u32, size[1] as u32).unwrap();
        let (max, _) = difference(&ours, &rgb(&f[&format!("{name}.eval")]));
        assert!(max <= 1, "{name}: max difference {max}");
    }
}

#[test]
fn train_operations_at_given_parameters_match_torchvision() {
    let f = fixtures();
    let input = rgb(&f["train.input"]);
    assert_eq!(transform::flip_horizontal(&input), rgb(&f["train.hflip"]));
    assert_eq!(transform::flip_vertical(&input), rgb(&f["train.vflip"]));
    for (k, params) in f["train.crop_params"].to_vec2::<i64>().unwrap().iter().enumerate() {
        let ours = transform::resized_crop(&input, params[0], params[1], params[2] as u32, params[3] as u32, params[4] as u32).unwrap();
        let (max, _) = difference(&ours, &rgb(&f[&format!("train.crop{k}")]));
        assert!(max <= 1, "crop {k}: {max}");
    }
    for (k, angle) in f["train.angles"].to_vec1::<f64>().unwrap().iter().enumerate() {
        // PIL's inverse-affine nearest sampling, reproduced exactly.
        let ours = transform::rotate_nearest(&input, *angle);
        let (_, differing) = difference(&ours, &rgb(&f[&format!("train.rotate{k}")]));
        assert_eq!(differing, 0.0, "rotate {angle}: {:.2}% of samples differ", differing * 100.0);
    }
    for (k, hue) in f["train.hues"].to_vec1::<f64>().unwrap().iter().enumerate() {
        // PIL's 8-bit HSV round trip, reproduced exactly.
        let ours = transform::adjust_hue(&input, *hue);
        let (max, _) = difference(&ours, &rgb(&f[&format!("train.hue{k}")]));
        assert_eq!(max, 0, "hue {hue}");
    }
}

#[test]
fn normalized_chw_is_channel_major() {
    let image = RgbImage::from_fn(2, 1, |x, _| image::Rgb([if x == 0 { 255 } else { 0 }, 51, 0]));
    let data = transform::to_normalized_chw(&image, &transform::Normalization { mean: [0.5; 3], std: [0.25; 3] });
    // R: (1 - 0.5) / 0.25 = 2, (0 - 0.5) / 0.25 = -2; G: (0.2 - 0.5) / 0.25 = -1.2; B: -2.
    let expected = [2.0, -2.0, -1.2, -1.2, -2.0, -2.0];
    assert!(data.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "{data:?}");
}

#[test]
fn pils_hsv_conversions_are_reproduced_exactly() {
    let f = fixtures();
    let rows = |name: &str| f[name].to_vec2::<u8>().unwrap();
    for (input, output, convert) in [
        ("hsv.rgb", "hsv.rgb_to_hsv", transform::pil_rgb_to_hsv as fn([u8; 3]) -> [u8; 3]),
        ("hsv.hsv", "hsv.hsv_to_rgb", transform::pil_hsv_to_rgb),
    ] {
        let mismatches: Vec<_> = rows(input)
            .iter()
            .zip(rows(output))
            .map(|(i, o)| ([i[0], i[1], i[2]], [o[0], o[1], o[2]]))
            .filter(|(i, o)| convert(*i) != *o)
            .take(5)
            .collect();
        assert!(mismatches.is_empty(), "{input}: (input, PIL) pairs ours differs on: {mismatches:?}");
    }
}
