//! Where in each image a fine-tuned model found the evidence for a class, for `predict
//! --saliency DIR` and rank's ranking_saliency.png. Each image's Grad-CAM map (medxfer-train's
//! [`SaliencyBatches`]) drawn over the crop the model saw, as pytorch-grad-cam's `show_cam_on_image` draws it: the map scaled to [0, 1] by its own
//! minimum and maximum, coloured (viridis, where pytorch-grad-cam uses jet: a perceptually even
//! scale that reads in grey and to colour-blind eyes), and mixed half and half with the crop.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use medxfer_data::Normalization;
use medxfer_train::{SaliencyBatch, SaliencyBatches};
use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};

/// The image's share of each overlay pixel (pytorch-grad-cam's `image_weight` default).
const IMAGE_WEIGHT: f32 = 0.5;

/// Writes one PNG per image under `dir`, at the image's path under the images' folder with
/// `.png` appended (`glioma/scan1.jpg` -> `DIR/glioma/scan1.jpg.png`); returns how many.
pub fn write_overlays(
    dir: &Path,
    paths: &[String],
    normalization: &Normalization,
    batches: &mut SaliencyBatches<'_>,
    progress: &dyn Fn(usize),
) -> Result<usize> {
    let files = overlay_files(dir, paths)?;
    let mut written = 0;
    while let Some(batch) = batches.next_batch()? {
        if written == 0 && batch.grid == (1, 1) {
            eprintln!(
                "--saliency: the network's last map is 1 x 1 at this crop, so each map is one value spread evenly and the overlays say nothing of where; a model fine-tuned on larger crops (rank's --resize and --crop) has a grid"
            );
        }
        for (row, &index) in batch.indices.iter().enumerate() {
            let image = overlay(&batch, row, normalization)?;
            let file = &files[index];
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let mut png = Vec::new();
            image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
            medxfer_durable::write_atomic(file, &png)?;
            written += 1;
        }
        progress(written);
    }
    Ok(written)
}

/// Each image's overlay file: its path's own components under `dir` (a CSV's absolute path or
/// `..` cannot lead out of it), `.png` appended; two images that would share one are refused.
fn overlay_files(dir: &Path, paths: &[String]) -> Result<Vec<PathBuf>> {
    let mut seen: HashMap<PathBuf, &str> = HashMap::new();
    paths
        .iter()
        .map(|path| {
            let mut file = dir.to_path_buf();
            let parts: Vec<_> = Path::new(path).components().filter_map(|c| if let Component::Normal(part) = c { Some(part) } else { None }).collect();
            let Some((name, folders)) = parts.split_last() else { bail!("--saliency: the image path {path:?} names no file") };
            file.extend(folders);
            file.push(format!("{}.png", name.to_string_lossy()));
            if let Some(other) = seen.insert(file.clone(), path) {
                bail!("--saliency: {other} and {path} would both be drawn to {}; give the images paths that differ in more than their folders' `..`", file.display());
            }
            Ok(file)
        })
        .collect()
}

/// Image `row` of the batch: its crop, the normalisation undone, mixed with its coloured map.
pub fn overlay(batch: &SaliencyBatch, row: usize, normalization: &Normalization) -> Result<image::RgbImage> {
    let crop = batch.crops.get(row)?.to_vec3::<f32>()?;
    let map = batch.maps.get(row)?.flatten_all()?.to_vec1::<f32>()?;
    let (height, width) = (crop[0].len(), crop[0][0].len());
    let low = map.iter().copied().fold(f32::INFINITY, f32::min);
    let high = map.iter().copied().fold(f32::NEG_INFINITY, f32::max) - low;
    let mut image = image::RgbImage::new(width as u32, height as u32);
    for (x, y, pixel) in image.enumerate_pixels_mut() {
        let (x, y) = (x as usize, y as usize);
        // pytorch-grad-cam's scale_cam_image: (m - min) / (1e-7 + max of that).
        let level = (map[y * width + x] - low) / (1e-7 + high);
        let colour = ViridisRGB.get_color(level.clamp(0.0, 1.0));
        let heat = [colour.0, colour.1, colour.2];
        for channel in 0..3 {
            let seen = crop[channel][y][x] * normalization.std[channel] as f32 + normalization.mean[channel] as f32;
            let mixed = IMAGE_WEIGHT * seen.clamp(0.0, 1.0) + (1.0 - IMAGE_WEIGHT) * f32::from(heat[channel]) / 255.0;
            pixel.0[channel] = (mixed * 255.0).round() as u8;
        }
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Viridis' ends (matplotlib's, as plotters tabulates them) at the map's minimum and maximum,
    /// mixed half and half with the crop's pixel, its normalisation undone and clipped to [0, 1].
    #[test]
    fn overlays_mix_the_crop_as_seen_with_the_scaled_map() {
        let normalization = Normalization { mean: [0.5, 0.25, 0.75], std: [0.25, 0.5, 0.1] };
        // Three pixels: 0 after normalisation (the mean), one above 1 once undone, one below 0.
        let crops =
            candle_core::Tensor::new(&[[[[0f32, 3.0, -9.0]], [[0.0, 3.0, -9.0]], [[0.0, 3.0, -9.0]]]], &candle_core::Device::Cpu).unwrap();
        let maps = candle_core::Tensor::new(&[[[2f32, 6.0, 4.0]]], &candle_core::Device::Cpu).unwrap();
        let batch = SaliencyBatch { indices: vec![0], crops, maps, grid: (1, 3) };
        let image = overlay(&batch, 0, &normalization).unwrap();
        let mix = |seen: f64, heat: u8| (255.0 * (0.5 * seen + 0.5 * f64::from(heat) / 255.0)).round() as u8;
        let low = [68u8, 1, 84];
        assert_eq!(image.get_pixel(0, 0).0, [mix(0.5, low[0]), mix(0.25, low[1]), mix(0.75, low[2])]);
        let high = [254u8, 232, 37];
        let top = image.get_pixel(1, 0).0;
        for channel in 0..3 {
            assert!(top[channel].abs_diff(mix(1.0, high[channel])) <= 1, "{top:?}");
        }
        // The middle of the map's range is viridis' middle, between its fourth and fifth colours.
        let middle = image.get_pixel(2, 0).0;
        let expected = [mix(0.0, 35), mix(0.0, 144), mix(0.0, 140)];
        for channel in 0..3 {
            assert!(middle[channel].abs_diff(expected[channel]) <= 1, "{middle:?} against {expected:?}");
        }
    }

    #[test]
    fn overlay_files_stay_under_the_folder_and_never_share_a_name() {
        let dir = Path::new("/out");
        let files = overlay_files(dir, &["glioma/a.jpg".into(), "/data/b.png".into(), "../c.jpg".into(), "a.jpg".into()]).unwrap();
        assert_eq!(files, [dir.join("glioma/a.jpg.png"), dir.join("data/b.png.png"), dir.join("c.jpg.png"), dir.join("a.jpg.png")]);
        let error = overlay_files(dir, &["x/a.jpg".into(), "../x/a.jpg".into()]).unwrap_err().to_string();
        assert!(error.contains("x/a.jpg and ../x/a.jpg"), "{error}");
    }
}
