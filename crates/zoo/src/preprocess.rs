//! A backbone's own eval preprocessing for single images (the `classify` command): decode to
//! RGB, resize the shorter side (with the backbone's filter, bilinear or bicubic, antialiased, as
//! PIL), centre-crop, scale to [0, 1] and normalise with the backbone's mean and std. The
//! study's faithful transforms, with the reference's quirks, belong to medxfer-data.

use std::path::Path;

use candle_core::{Device, Tensor};
use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::entry::{INTERPOLATIONS, Preprocessing};
use crate::error::{Error, Result};

/// The image formats `classify` and [`eval_tensor`] decode (the `image` crate's features the
/// workspace builds with), as file extensions; medxfer-data's list, which rank and predict read
/// by, adds DICOM.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "tif", "tiff", "bmp"];

/// Whether `path` names an image by its extension (any case).
pub fn is_image_file(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn image_error(path: &Path, problem: impl Into<String>) -> Error {
    Error::Image { path: path.to_path_buf(), problem: problem.into() }
}

/// The resize filter an entry names, as PIL computes it: PIL's bicubic is the Catmull-Rom
/// spline (a = -0.5), fast_image_resize's `CatmullRom`. Every entry's TOML was read as bilinear
/// (seen: a "lanczos" ran, and the 25 bicubic backbones were resized bilinearly).
fn resize_filter(preprocessing: &Preprocessing) -> std::result::Result<FilterType, String> {
    match preprocessing.interpolation.as_str() {
        "bilinear" => Ok(FilterType::Bilinear),
        "bicubic" => Ok(FilterType::CatmullRom),
        // `Preprocessing::check` refuses it on reading an entry; one built in code reaches here.
        other => Err(format!("interpolation {other:?}: expected one of {INTERPOLATIONS:?} (timm's names)")),
    }
}

/// One image as a normalised (3, crop, crop) tensor.
pub fn eval_tensor(path: &Path, preprocessing: &Preprocessing, device: &Device) -> Result<Tensor> {
    let filter = resize_filter(preprocessing).map_err(|problem| image_error(path, problem))?;
    let decoded = image::open(path)
        .map_err(|e| image_error(path, format!("cannot decode the image ({e}); it may be corrupt or not a JPEG/PNG/TIFF/BMP")))?;
    let rgb = decoded.to_rgb8();
    let (width, height) = rgb.dimensions();
    if width == 0 || height == 0 {
        return Err(image_error(path, "the image is empty"));
    }
    // torchvision's Resize(size): the shorter side becomes `size`, the longer one scales and truncates.
    let size = preprocessing.resize as u32;
    let (new_width, new_height) = if width <= height {
        (size, (size as u64 * height as u64 / width as u64) as u32)
    } else {
        ((size as u64 * width as u64 / height as u64) as u32, size)
    };
    let source = Image::from_vec_u8(width, height, rgb.into_raw(), PixelType::U8x3)
        .map_err(|e| image_error(path, format!("cannot wrap the pixels: {e}")))?;
    let mut resized = Image::new(new_width, new_height, PixelType::U8x3);
    Resizer::new()
        .resize(&source, &mut resized, &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter)))
        .map_err(|e| image_error(path, format!("cannot resize: {e}")))?;
    let crop = preprocessing.crop as u32;
    if crop > new_width || crop > new_height {
        return Err(image_error(path, format!("a {crop} px crop does not fit the {new_width} x {new_height} resized image")));
    }
    // torchvision's CenterCrop rounds the offsets with Python's round: half to even.
    let top = ((new_height - crop) as f64 / 2.0).round_ties_even() as usize;
    let left = ((new_width - crop) as f64 / 2.0).round_ties_even() as usize;
    let pixels = resized.buffer();
    let crop = crop as usize;
    let mut data = vec![0f32; 3 * crop * crop];
    for y in 0..crop {
        for x in 0..crop {
            let offset = ((top + y) * new_width as usize + left + x) * 3;
            for c in 0..3 {
                let value = f64::from(pixels[offset + c]) / 255.0;
                data[(c * crop + y) * crop + x] = ((value - preprocessing.mean[c]) / preprocessing.std[c]) as f32;
            }
        }
    }
    Ok(Tensor::from_vec(data, (3, crop, crop), device)?)
}
