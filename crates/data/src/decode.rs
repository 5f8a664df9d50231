//! Any image of the study to RGB8, as the reference's `PIL.Image.open(p).convert("RGB")` does:
//! grayscale replicated, alpha dropped (not composited), 16-bit samples reduced to their high
//! byte (Pillow's unpacking of 48-bit TIFF; `image`'s own `to_rgb8` rounds v/257 instead), no
//! EXIF rotation. Cheng's int16 MRI slices are min-max scaled per image.

use std::path::Path;

use image::{DynamicImage, RgbImage};

use crate::error::{Error, Result};
use crate::layouts::read_cheng;

/// Decodes the image at `path` to RGB8.
pub fn load_rgb8(path: &Path) -> Result<RgbImage> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("mat")) {
        return cheng_rgb8(path);
    }
    let reader = image::ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| Error::io(path, e))?;
    let decoded =
        reader.decode().map_err(|e| Error::format(path, format!("cannot decode the image ({e}); the file may be truncated or corrupt")))?;
    Ok(to_rgb8(decoded))
}

/// RGB8 the way Pillow's `convert("RGB")` makes it.
pub fn to_rgb8(image: DynamicImage) -> RgbImage {
    let high_byte = |v: u16| (v >> 8) as u8;
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgb16(rgb) => {
            let (w, h) = rgb.dimensions();
            RgbImage::from_fn(w, h, |x, y| image::Rgb(rgb.get_pixel(x, y).0.map(high_byte)))
        }
        DynamicImage::ImageRgba16(rgba) => {
            let (w, h) = rgba.dimensions();
            RgbImage::from_fn(w, h, |x, y| {
                let [r, g, b, _] = rgba.get_pixel(x, y).0;
                image::Rgb([r, g, b].map(high_byte))
            })
        }
        DynamicImage::ImageLuma16(gray) => {
            let (w, h) = gray.dimensions();
            RgbImage::from_fn(w, h, |x, y| image::Rgb([high_byte(gray.get_pixel(x, y).0[0]); 3]))
        }
        DynamicImage::ImageLumaA16(gray) => {
            let (w, h) = gray.dimensions();
            RgbImage::from_fn(w, h, |x, y| image::Rgb([high_byte(gray.get_pixel(x, y).0[0]); 3]))
        }
        // 8-bit gray, gray+alpha, RGBA: channel replication / alpha dropped, as Pillow does.
        other => other.to_rgb8(),
    }
}

/// A Cheng slice: int16 intensities min-max scaled to 0..=255 (rounded), gray replicated.
fn cheng_rgb8(path: &Path) -> Result<RgbImage> {
    let slice = read_cheng(path, true)?;
    let pixels = slice.pixels.unwrap_or_default();
    let (min, max) = pixels.iter().fold((i16::MAX, i16::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let range = f64::from(max) - f64::from(min);
    let scale = |v: i16| if range > 0.0 { ((f64::from(v) - f64::from(min)) * 255.0 / range).round() as u8 } else { 0 };
    let (w, h) = (slice.width as u32, slice.height as u32);
    Ok(RgbImage::from_fn(w, h, |x, y| image::Rgb([scale(pixels[y as usize * slice.width + x as usize]); 3])))
}
