//! Where in each image a fine-tuned model found the evidence for a class, for `predict
//! --saliency DIR` and rank's ranking_saliency.png. Each image's Grad-CAM map (medxfer-train's
//! [`SaliencyBatches`]) drawn over the crop the model saw, as pytorch-grad-cam's
//! `show_cam_on_image` draws it: the map scaled to [0, 1] by its own minimum and maximum,
//! coloured (viridis, where pytorch-grad-cam uses jet: a perceptually even scale that reads in
//! grey and to colour-blind eyes), and mixed half and half with the crop.

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
    let files: Vec<PathBuf> = overlay_names(paths)?.iter().map(|name| dir.join(name)).collect();
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

/// Each image's overlay file under the overlays' folder: its path's own components (a CSV's
/// absolute path or `..` cannot lead out of the folder), `.png` appended; two images that would
/// share one are refused.
fn overlay_names(paths: &[String]) -> Result<Vec<PathBuf>> {
    let mut seen: HashMap<PathBuf, &str> = HashMap::new();
    paths
        .iter()
        .map(|path| {
            let mut file = PathBuf::new();
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

/// One image's line on the review page.
pub struct Reviewed<'a> {
    pub path: &'a str,
    pub predicted: &'a str,
    /// The predicted class's probability (calibrated with --calibrated).
    pub probability: f64,
    /// Its class, where known.
    pub truth: Option<&'a str>,
    /// With --refer-below: whether it is referred.
    pub referred: Option<bool>,
    /// Of a loop predicted from its frames, or a series from its slices, what the map is drawn on
    /// ("frame 3", "slice IM000120").
    pub drawn_on: Option<String>,
}

/// `dir`/index.html: each image's overlay with its path, prediction and probability (its class
/// beside, where known, a wrong prediction marked; the referred marked), the least sure first,
/// so that a person reading from the top sees first what the model is least sure of.
pub fn write_review_page(dir: &Path, heading: &str, images: &[Reviewed<'_>]) -> Result<PathBuf> {
    let paths: Vec<String> = images.iter().map(|image| image.path.to_string()).collect();
    let names = overlay_names(&paths)?;
    let mut order: Vec<usize> = (0..images.len()).collect();
    order.sort_by(|&a, &b| images[a].probability.total_cmp(&images[b].probability));
    let known = images.iter().any(|image| image.truth.is_some());
    let triaged = images.iter().any(|image| image.referred.is_some());
    let mut page = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{0}</title>\n\
         <style>body{{font-family:sans-serif}}td{{padding:4px 10px}}.wrong{{color:#b00}}.refer{{background:#fff3cd}}</style></head><body>\n\
         <h1>{0}</h1>\n<p>{1} images, the least sure first. Each map is Grad-CAM: where in the crop the model saw it found the \
         evidence for the class (yellow most, dark least).</p>\n<table>\n\
         <tr><th>saliency</th><th>image</th><th>predicted</th><th>probability</th>{2}{3}</tr>\n",
        html_text(heading),
        images.len(),
        if known { "<th>class</th>" } else { "" },
        if triaged { "<th>refer</th>" } else { "" },
    );
    for &index in &order {
        let image = &images[index];
        let wrong = image.truth.is_some_and(|truth| truth != image.predicted);
        page.push_str(&format!(
            "<tr{}><td><img src=\"{}\" width=\"160\" loading=\"lazy\"></td><td>{}</td><td{}>{}</td><td>{:.3}</td>{}{}</tr>\n",
            if image.referred == Some(true) { " class=\"refer\"" } else { "" },
            url_path(&names[index]),
            html_text(&image.drawn_on.as_ref().map_or_else(|| image.path.to_string(), |shown| format!("{} ({shown})", image.path))),
            if wrong { " class=\"wrong\"" } else { "" },
            html_text(image.predicted),
            image.probability,
            image.truth.map_or_else(String::new, |truth| format!("<td>{}</td>", html_text(truth))),
            image.referred.map_or_else(String::new, |referred| format!("<td>{}</td>", if referred { "yes" } else { "no" })),
        ));
    }
    page.push_str("</table>\n</body></html>\n");
    let file = dir.join("index.html");
    medxfer_durable::write_atomic(&file, page.as_bytes())?;
    Ok(file)
}

/// Text as HTML shows it literally.
fn html_text(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// A relative file path as a URL path: each component's bytes outside RFC 3986's unreserved set
/// percent-encoded (a space, `#`, `?` or `%` would otherwise end or bend the link).
fn url_path(path: &Path) -> String {
    let components: Vec<String> = path
        .iter()
        .map(|part| {
            part.to_string_lossy()
                .bytes()
                .map(|byte| match byte {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(byte).to_string(),
                    _ => format!("%{byte:02X}"),
                })
                .collect()
        })
        .collect();
    components.join("/")
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
    fn the_review_page_puts_the_least_sure_first_and_links_each_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let reviewed =
            |path, predicted, probability, truth, referred| Reviewed { path, predicted, probability, truth, referred, drawn_on: None };
        let images = [
            reviewed("lesion/a b#1.jpg", "lesion", 0.9, Some("lesion"), Some(false)),
            reviewed("clear/<c>.jpg", "lesion", 0.55, Some("clear"), Some(true)),
            reviewed("clear/d.jpg", "clear", 0.7, Some("clear"), Some(true)),
        ];
        let page = std::fs::read_to_string(write_review_page(dir.path(), "m & n", &images).unwrap()).unwrap();
        assert!(page.contains("<title>m &amp; n</title>"), "{page}");
        let at = |text: &str| page.find(text).unwrap_or_else(|| panic!("{text} not in {page}"));
        assert!(at("clear/&lt;c&gt;.jpg") < at("clear/d.jpg") && at("clear/d.jpg") < at("lesion/a b#1.jpg"));
        assert!(page.contains("src=\"lesion/a%20b%231.jpg.png\"") && page.contains("src=\"clear/%3Cc%3E.jpg.png\""), "{page}");
        // The wrong prediction is marked, and each referred row.
        assert!(page.contains("<tr class=\"refer\"><td><img src=\"clear/%3Cc%3E.jpg.png\""), "{page}");
        assert_eq!(page.matches("class=\"wrong\"").count(), 1);
        assert_eq!(page.matches("<tr class=\"refer\">").count(), 2);
    }

    #[test]
    fn overlay_files_stay_under_the_folder_and_never_share_a_name() {
        let files = overlay_names(&["glioma/a.jpg".into(), "/data/b.png".into(), "../c.jpg".into(), "a.jpg".into()]).unwrap();
        let expected: Vec<PathBuf> = ["glioma/a.jpg.png", "data/b.png.png", "c.jpg.png", "a.jpg.png"].iter().map(PathBuf::from).collect();
        assert_eq!(files, expected);
        let error = overlay_names(&["x/a.jpg".into(), "../x/a.jpg".into()]).unwrap_err().to_string();
        assert!(error.contains("x/a.jpg and ../x/a.jpg"), "{error}");
    }
}
