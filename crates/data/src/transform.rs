//! The reference's transforms (`utils.get_data_transforms`), on RGB8 images, as torchvision
//! runs them on PIL images.
//!
//! - eval: `Resize(256)` (shorter side, bilinear, antialiased like PIL), `CenterCrop(224)`,
//!   `ToTensor`, `Normalize(mean, std)`.
//! - train: `RandomHorizontalFlip`, `RandomVerticalFlip`, `RandomResizedCrop(224, scale
//!   0.75-1, ratio 3/4-4/3, bilinear)`, `RandomRotation(45)` (nearest, black fill),
//!   `ColorJitter(hue=0.2)`, then the same `ToTensor` + `Normalize`.
//!
//! Random parameters are drawn from a ChaCha8 stream seeded by (seed, epoch, sample), so a run
//! is reproducible and independent of thread scheduling; each operation at given parameters
//! matches torchvision (tests/fixtures/make_fixtures.py).

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// `Normalize(mean, std)` after `ToTensor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl Normalization {
    /// ImageNet statistics.
    pub const IMAGENET: Self = Self { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
    /// ViT-S's statistics.
    pub const HALF: Self = Self { mean: [0.5; 3], std: [0.5; 3] };

    /// A backbone's statistics as the study applies them: the reference code typed 0.228 for
    /// ImageNet's first std (faithful); `fix_std` keeps the correct 0.229.
    pub fn study(mean: [f64; 3], std: [f64; 3], fix_std: bool) -> Self {
        let typo = !fix_std && std == Self::IMAGENET.std;
        Self { mean, std: if typo { [0.228, std[1], std[2]] } else { std } }
    }
}

/// torchvision's `Resize(size)` size rule: the shorter side becomes `size`, the longer one
/// scales and truncates.
pub fn shorter_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    if width <= height {
        (size, (u64::from(size) * u64::from(height) / u64::from(width)) as u32)
    } else {
        ((u64::from(size) * u64::from(width) / u64::from(height)) as u32, size)
    }
}

/// Bilinear resampling with PIL's antialiasing (a triangle filter widened by the scale).
pub fn resize(image: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    if image.width() == 0 || image.height() == 0 || width == 0 || height == 0 {
        return Err(Error::Split(format!("cannot resize a {}x{} image to {width}x{height}", image.width(), image.height())));
    }
    let source = Image::from_vec_u8(image.width(), image.height(), image.as_raw().clone(), PixelType::U8x3)
        .map_err(|e| Error::Split(format!("cannot wrap the pixels: {e}")))?;
    let mut resized = Image::new(width, height, PixelType::U8x3);
    Resizer::new()
        .resize(&source, &mut resized, &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)))
        .map_err(|e| Error::Split(format!("cannot resize: {e}")))?;
    RgbImage::from_raw(width, height, resized.into_vec()).ok_or_else(|| Error::Split("resize produced a wrong buffer".into()))
}

/// `Resize(size)`: shorter side to `size`.
pub fn resize_shorter(image: &RgbImage, size: u32) -> Result<RgbImage> {
    let (width, height) = shorter_side_size(image.width(), image.height(), size);
    resize(image, width, height)
}

/// A `width` x `height` window at (left, top); parts outside the image are black, as PIL's
/// `crop` pads.
pub fn crop(image: &RgbImage, left: i64, top: i64, width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let (sx, sy) = (left + i64::from(x), top + i64::from(y));
        if sx >= 0 && sy >= 0 && sx < i64::from(image.width()) && sy < i64::from(image.height()) {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            Rgb([0, 0, 0])
        }
    })
}

/// `CenterCrop(size)`: torchvision rounds the offsets with Python's `round` (half to even:
/// 18.5 -> 18), and pads with black when the image is smaller than the crop.
pub fn center_crop(image: &RgbImage, size: u32) -> RgbImage {
    let offset = |full: u32| ((f64::from(full) - f64::from(size)) / 2.0).round_ties_even() as i64;
    crop(image, offset(image.width()), offset(image.height()), size, size)
}

/// `ToTensor` + `Normalize`: a (3, H, W) f32 buffer in channel-major order.
pub fn to_normalized_chw(image: &RgbImage, normalization: &Normalization) -> Vec<f32> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let mut data = vec![0f32; 3 * width * height];
    for (index, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            let value = f64::from(pixel.0[c]) / 255.0;
            data[c * width * height + index] = ((value - normalization.mean[c]) / normalization.std[c]) as f32;
        }
    }
    data
}

/// The eval transform up to the crop: `Resize(resize)` + `CenterCrop(crop)`, RGB8.
pub fn eval_rgb8(image: &RgbImage, resize_to: u32, crop_to: u32) -> Result<RgbImage> {
    Ok(center_crop(&resize_shorter(image, resize_to)?, crop_to))
}

/// Mirror left-right.
pub fn flip_horizontal(image: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(image)
}

/// Mirror top-bottom.
pub fn flip_vertical(image: &RgbImage) -> RgbImage {
    image::imageops::flip_vertical(image)
}

/// torchvision's `resized_crop` on a PIL image: crop (top, left, height, width), then resize to
/// size x size (bilinear, antialiased).
pub fn resized_crop(image: &RgbImage, top: i64, left: i64, height: u32, width: u32, size: u32) -> Result<RgbImage> {
    resize(&crop(image, left, top, width, height), size, size)
}

/// PIL's `rotate(angle, NEAREST, expand=False, fillcolor=black)`: counter-clockwise by `angle`
/// degrees about the image centre; each output pixel centre maps back through the inverse
/// affine matrix (cos/sin rounded to 15 digits, as PIL does) and takes the nearest pixel.
pub fn rotate_nearest(image: &RgbImage, angle_degrees: f64) -> RgbImage {
    let (width, height) = (image.width(), image.height());
    let round15 = |v: f64| (v * 1e15).round() / 1e15;
    let angle = -(angle_degrees % 360.0).to_radians();
    let (a, b, d, e) = (round15(angle.cos()), round15(angle.sin()), round15(-angle.sin()), round15(angle.cos()));
    let (cx, cy) = (f64::from(width) / 2.0, f64::from(height) / 2.0);
    let c = a * -cx + b * -cy + cx;
    let f = d * -cx + e * -cy + cy;
    RgbImage::from_fn(width, height, |x, y| {
        let (xo, yo) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
        let (xi, yi) = ((a * xo + b * yo + c).floor(), (d * xo + e * yo + f).floor());
        if xi >= 0.0 && yi >= 0.0 && xi < f64::from(width) && yi < f64::from(height) {
            *image.get_pixel(xi as u32, yi as u32)
        } else {
            Rgb([0, 0, 0])
        }
    })
}

/// PIL's 8-bit RGB -> HSV (Convert.c `rgb2hsv_row`, which follows colorsys), with its mix of
/// float and double arithmetic: the hue truncation sits on rounding edges.
fn rgb_to_hsv(pixel: [u8; 3]) -> [u8; 3] {
    let [r, g, b] = pixel;
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    if max == min {
        return [0, 0, max];
    }
    let range = f32::from(max - min);
    let s: f32 = range / f32::from(max);
    let (rc, gc, bc) = (f32::from(max - r) / range, f32::from(max - g) / range, f32::from(max - b) / range);
    let h: f32 = if r == max {
        bc - gc
    } else if g == max {
        (2.0 + f64::from(rc) - f64::from(bc)) as f32
    } else {
        (4.0 + f64::from(gc) - f64::from(rc)) as f32
    };
    let h = ((f64::from(h) / 6.0 + 1.0) % 1.0) as f32;
    let clip = |v: f64| (v as i32).clamp(0, 255) as u8;
    [clip(f64::from(h) * 255.0), clip(f64::from(s) * 255.0), max]
}

/// PIL's 8-bit HSV -> RGB (Convert.c `hsv2rgb`).
fn hsv_to_rgb(pixel: [u8; 3]) -> [u8; 3] {
    let [h, s, v] = pixel;
    if s == 0 {
        return [v; 3];
    }
    let scaled = f64::from(h) * 6.0 / 255.0;
    let i = scaled.floor() as i32;
    let f = f64::from((scaled - f64::from(i)) as f32);
    let fs = f64::from((f64::from(s) / 255.0) as f32);
    let v_f = f64::from(v);
    let clip = |x: f64| (x.round() as i32).clamp(0, 255) as u8;
    let (p, q, t) = (clip(v_f * (1.0 - fs)), clip(v_f * (1.0 - fs * f)), clip(v_f * (1.0 - fs * (1.0 - f))));
    match i % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// torchvision's `adjust_hue` on a PIL image: through PIL's 8-bit HSV, the hue channel shifted
/// by `uint8(hue_factor * 255)` with wrap-around.
pub fn adjust_hue(image: &RgbImage, hue_factor: f64) -> RgbImage {
    // numpy's float -> uint8 cast truncates toward zero, then wraps.
    let shift = (hue_factor * 255.0).trunc() as i64 as u8;
    let mut out = image.clone();
    for pixel in out.pixels_mut() {
        let [h, s, v] = rgb_to_hsv(pixel.0);
        pixel.0 = hsv_to_rgb([h.wrapping_add(shift), s, v]);
    }
    out
}

/// The random parameters of one train-transform draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainDraw {
    pub flip_horizontal: bool,
    pub flip_vertical: bool,
    /// (top, left, height, width) of the crop.
    pub crop: (i64, i64, u32, u32),
    pub angle: f64,
    pub hue: f64,
}

/// The train transform's settings (the reference's values by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainTransform {
    pub size: u32,
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
    pub degrees: f64,
    pub hue: f64,
}

impl Default for TrainTransform {
    fn default() -> Self {
        Self { size: 224, scale: (0.75, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0), degrees: 45.0, hue: 0.2 }
    }
}

impl TrainTransform {
    /// The parameters for sample `index` of `epoch` under `seed`, for an image of this size;
    /// `RandomResizedCrop.get_params`'s ten tries and its central fallback included.
    pub fn draw(&self, seed: u64, epoch: u64, index: u64, width: u32, height: u32) -> TrainDraw {
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let flip_horizontal = rng.random::<f64>() < 0.5;
        let flip_vertical = rng.random::<f64>() < 0.5;
        let crop = self.crop_params(&mut rng, width, height);
        let angle = rng.random_range(-self.degrees..=self.degrees);
        let hue = rng.random_range(-self.hue..=self.hue);
        TrainDraw { flip_horizontal, flip_vertical, crop, angle, hue }
    }

    fn crop_params(&self, rng: &mut ChaCha8Rng, width: u32, height: u32) -> (i64, i64, u32, u32) {
        let (w_full, h_full) = (f64::from(width), f64::from(height));
        let area = w_full * h_full;
        let (log_low, log_high) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * rng.random_range(self.scale.0..=self.scale.1);
            let aspect = rng.random_range(log_low..=log_high).exp();
            let w = (target_area * aspect).sqrt().round();
            let h = (target_area / aspect).sqrt().round();
            if w > 0.0 && h > 0.0 && w <= w_full && h <= h_full {
                let top = rng.random_range(0..=(h_full - h) as i64);
                let left = rng.random_range(0..=(w_full - w) as i64);
                return (top, left, h as u32, w as u32);
            }
        }
        // Fallback: the whole image, its ratio clamped to the allowed range, centred.
        let in_ratio = w_full / h_full;
        let (w, h) = if in_ratio < self.ratio.0 {
            (w_full, (w_full / self.ratio.0).round())
        } else if in_ratio > self.ratio.1 {
            ((h_full * self.ratio.1).round(), h_full)
        } else {
            (w_full, h_full)
        };
        (((h_full - h) / 2.0) as i64, ((w_full - w) / 2.0) as i64, h as u32, w as u32)
    }

    /// Applies one draw: flips, resized crop, rotation, hue, in the reference's order.
    pub fn apply(&self, image: &RgbImage, draw: &TrainDraw) -> Result<RgbImage> {
        let mut out = if draw.flip_horizontal { flip_horizontal(image) } else { image.clone() };
        if draw.flip_vertical {
            out = flip_vertical(&out);
        }
        let (top, left, height, width) = draw.crop;
        let out = resized_crop(&out, top, left, height, width, self.size)?;
        let out = rotate_nearest(&out, draw.angle);
        Ok(adjust_hue(&out, draw.hue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_round_trip_is_pils_colorsys_on_hand_computed_pixels() {
        // Pure colours and grays (hand-computed with colorsys, scaled and truncated to u8).
        assert_eq!(rgb_to_hsv([255, 0, 0]), [0, 255, 255]);
        assert_eq!(rgb_to_hsv([0, 255, 0]), [85, 255, 255]);
        assert_eq!(rgb_to_hsv([0, 0, 255]), [170, 255, 255]);
        assert_eq!(rgb_to_hsv([90, 90, 90]), [0, 0, 90]);
        // (200, 100, 50): h = (bc - gc) / 6 = (1 - 2/3) / 6 = 0.0556 -> 14; s = 150/200 -> 191.
        assert_eq!(rgb_to_hsv([200, 100, 50]), [14, 191, 200]);
        assert_eq!(hsv_to_rgb([0, 255, 255]), [255, 0, 0]);
        assert_eq!(hsv_to_rgb([0, 0, 77]), [77, 77, 77]);
    }

    #[test]
    fn the_study_normalization_keeps_the_typo_unless_fixed() {
        let faithful = Normalization::study(Normalization::IMAGENET.mean, Normalization::IMAGENET.std, false);
        assert_eq!(faithful.std, [0.228, 0.224, 0.225]);
        assert_eq!(Normalization::study(Normalization::IMAGENET.mean, Normalization::IMAGENET.std, true), Normalization::IMAGENET);
        assert_eq!(Normalization::study([0.5; 3], [0.5; 3], false), Normalization::HALF);
    }

    #[test]
    fn draws_are_deterministic_and_within_the_reference_ranges() {
        let transform = TrainTransform::default();
        let a = transform.draw(1, 2, 3, 300, 200);
        assert_eq!(a, transform.draw(1, 2, 3, 300, 200));
        assert_ne!(a, transform.draw(1, 2, 4, 300, 200));
        assert_ne!(a, transform.draw(1, 3, 3, 300, 200));
        let (mut horizontal, n) = (0, 2000);
        for index in 0..n {
            let d = transform.draw(7, 0, index, 300, 200);
            let (top, left, h, w) = d.crop;
            let area = f64::from(h * w) / 60000.0;
            assert!((0.73..=1.0).contains(&area), "area {area}");
            assert!(top >= 0 && left >= 0 && top + i64::from(h) <= 200 && left + i64::from(w) <= 300);
            assert!(d.angle.abs() <= 45.0 && d.hue.abs() <= 0.2);
            horizontal += usize::from(d.flip_horizontal);
        }
        assert!((900..1100).contains(&horizontal), "{horizontal} of {n} flipped");
    }
}
