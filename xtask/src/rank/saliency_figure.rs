//! `rank --finetune-top`'s ranking_saliency.png: where each fine-tuned backbone of the shortlist
//! looks, side by side on the same few test images (the first of each class in the test part,
//! then the second of each, ...). Each cell is the overlay `predict --saliency` draws (Grad-CAM
//! for the class the model predicts, over the crop it saw), that class and its probability under
//! it. A model right for the wrong reason (a ruler, a skin marking, a scanner's label, the edge of
//! a slide) shows it here, where a test accuracy cannot.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use medxfer_train::calibration;
use medxfer_train::{RunSettings, SaliencyBatches, SplitData, logits_split};
use medxfer_zoo::Backbone;
use plotters::prelude::*;

use crate::report::figure::{FONT, plot_error, register_font};
use crate::saliency::overlay;

/// Test images drawn per backbone.
pub const SALIENCY_IMAGES: usize = 6;
/// A crop smaller than this is enlarged by a whole factor (each pixel a block), so that a 32 px
/// crop stays visible.
const SMALLEST_CELL: u32 = 128;
const LABEL_WIDTH: u32 = 200;
const TITLE_HEIGHT: u32 = 36;
const HEADER_HEIGHT: u32 = 22;
const CAPTION_HEIGHT: u32 = 22;
const GAP: u32 = 8;

/// Up to `count` images of the part (indices into `labels`): the first of each class in order,
/// then the second of each, and so on, so every class is seen before any twice.
pub fn chosen_images(labels: &[u32], count: usize) -> Vec<usize> {
    let classes = labels.iter().max().map_or(0, |&largest| largest as usize + 1);
    let mut of_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (index, &label) in labels.iter().enumerate() {
        of_class[label as usize].push(index);
    }
    let mut chosen = Vec::with_capacity(count);
    for round in 0.. {
        let before = chosen.len();
        for images in &of_class {
            if chosen.len() == count {
                return chosen;
            }
            chosen.extend(images.get(round));
        }
        if chosen.len() == before {
            break;
        }
    }
    chosen
}

/// One fine-tuned backbone's row: per chosen image, its overlay, the class the model predicts
/// and that class's probability.
pub struct SaliencyRow {
    pub backbone: String,
    pub cells: Vec<(image::RgbImage, u32, f64)>,
    /// The maps' grid before upsampling: 1 x 1 says nothing of where.
    pub grid: (usize, usize),
}

/// `model`'s row on `images` (the chosen test images, in their order).
pub fn row(backbone: &str, model: &Backbone, images: &SplitData, settings: &RunSettings) -> Result<SaliencyRow> {
    let predicted: Vec<(u32, f64)> = logits_split(model, images, settings, &mut |_, _| {})?
        .iter()
        .map(|logits| {
            let (class, p) = calibration::most_probable(&calibration::probabilities(logits, 1.0));
            (class as u32, p)
        })
        .collect();
    let classes: Vec<u32> = predicted.iter().map(|&(class, _)| class).collect();
    let mut overlays: Vec<Option<image::RgbImage>> = vec![None; classes.len()];
    let mut batches = SaliencyBatches::new(model, images, settings, &classes)?;
    let mut grid = (0, 0);
    while let Some(batch) = batches.next_batch()? {
        grid = batch.grid;
        for (position, &index) in batch.indices.iter().enumerate() {
            overlays[index] = Some(overlay(&batch, position, &settings.normalization)?);
        }
    }
    let cells = overlays
        .into_iter()
        .zip(predicted)
        .map(|(overlay, (class, p))| Ok((overlay.context("an image the saliency batches left out")?, class, p)))
        .collect::<Result<_>>()?;
    Ok(SaliencyRow { backbone: backbone.to_string(), cells, grid })
}

/// ranking.md's sentence on the figure, naming the backbones whose maps are a single value.
pub fn render(rows: &[SaliencyRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let uniform: Vec<&str> = rows.iter().filter(|row| row.grid == (1, 1)).map(|row| row.backbone.as_str()).collect();
    let mut text = format!(
        "Where each looks: ranking_saliency.png draws each fine-tuned model's Grad-CAM map for the class it predicts over {} test images (the first of each class, then the second, ...); `cargo xtask predict --saliency DIR` draws them for any images.",
        rows[0].cells.len()
    );
    if !uniform.is_empty() {
        text.push_str(&format!(
            " The last map of {} is 1 x 1 at this crop, so their cells are one colour and say nothing of where; larger crops (--resize, --crop) give a grid.",
            uniform.join(", ")
        ));
    }
    text.push('\n');
    text
}

/// `content`, or as much of it as fits `room` pixels with an ellipsis after it.
fn fitted(content: &str, room: u32, width: impl Fn(&str) -> u32) -> String {
    if width(content) <= room {
        return content.to_string();
    }
    let characters: Vec<char> = content.chars().collect();
    (0..characters.len())
        .rev()
        .map(|keep| format!("{}…", characters[..keep].iter().collect::<String>()))
        .find(|candidate| width(candidate) <= room)
        .unwrap_or_default()
}

fn font_width(text: &str, size: u32) -> u32 {
    (FONT, size).into_font().box_size(text).map_or(0, |(w, _)| w)
}

/// The side of a cell for a crop of `crop` pixels: the crop enlarged by the smallest whole
/// factor that reaches [`SMALLEST_CELL`].
pub fn cell_side(crop: u32) -> u32 {
    crop * SMALLEST_CELL.div_ceil(crop.max(1)).max(1)
}

/// Writes `file` (a PNG): a row per backbone, a column per image with its class above it.
/// Without a row to draw, removes an earlier shortlist's, which would be taken for this one's.
pub fn write(file: &Path, rows: &[SaliencyRow], truth: &[u32], class_names: &[String]) -> Result<()> {
    let Some(first) = rows.first().and_then(|row| row.cells.first()) else {
        if file.exists() {
            std::fs::remove_file(file).map_err(|e| anyhow!("cannot remove {} (an earlier shortlist's): {e}", file.display()))?;
        }
        return Ok(());
    };
    register_font();
    let side = cell_side(first.0.width());
    let columns = truth.len() as u32;
    let width = LABEL_WIDTH + columns * (side + GAP);
    let height = TITLE_HEIGHT + HEADER_HEIGHT + rows.len() as u32 * (side + CAPTION_HEIGHT + GAP);
    let mut canvas = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let cell_origin = |row: usize, column: usize| {
        (LABEL_WIDTH + column as u32 * (side + GAP), TITLE_HEIGHT + HEADER_HEIGHT + row as u32 * (side + CAPTION_HEIGHT + GAP))
    };
    for (r, row) in rows.iter().enumerate() {
        for (c, (overlay, _, _)) in row.cells.iter().enumerate() {
            let enlarged = image::imageops::resize(overlay, side, side, image::imageops::FilterType::Nearest);
            let (x, y) = cell_origin(r, c);
            image::imageops::replace(&mut canvas, &enlarged, i64::from(x), i64::from(y));
        }
    }
    {
        let root = BitMapBackend::with_buffer(&mut canvas, (width, height)).into_drawing_area();
        // Each text cut (with an ellipsis) to the width it has, so no label runs into the next.
        let text = |content: &str, at: (u32, u32), size: u32, room: u32| {
            let font = (FONT, size).into_font();
            let fitted = fitted(content, room, |candidate| font.box_size(candidate).map_or(0, |(w, _)| w));
            root.draw(&Text::new(fitted, (at.0 as i32, at.1 as i32), font.color(&BLACK))).map_err(plot_error("the saliency figure"))
        };
        text("Grad-CAM of each fine-tuned model for the class it predicts; each test image's class above it", (GAP, 10), 15, width - GAP)?;
        let name = |class: u32| class_names.get(class as usize).map_or("?", String::as_str);
        for (c, &label) in truth.iter().enumerate() {
            let (x, _) = cell_origin(0, c);
            text(name(label), (x, TITLE_HEIGHT + 2), 13, side)?;
        }
        for (r, row) in rows.iter().enumerate() {
            let (_, y) = cell_origin(r, 0);
            text(&row.backbone, (GAP, y + side / 2), 13, LABEL_WIDTH - 2 * GAP)?;
            for (c, (_, class, p)) in row.cells.iter().enumerate() {
                let (x, y) = cell_origin(r, c);
                let probability = format!(" {p:.2}");
                let room = side.saturating_sub(font_width(&probability, 12));
                text(&format!("{}{probability}", fitted(name(*class), room, |t| font_width(t, 12))), (x, y + side + 4), 12, side)?;
            }
        }
        root.present().map_err(plot_error("the saliency figure"))?;
    }
    let mut png = Vec::new();
    canvas.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    medxfer_durable::write_atomic(file, &png)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_is_chosen_once_before_any_twice() {
        // Classes 0, 1, 2 at these places: 0 at 1, 3, 4; 1 at 0, 5; 2 at 2.
        let labels = [1, 0, 2, 0, 0, 1];
        assert_eq!(chosen_images(&labels, 6), [1, 0, 2, 3, 5, 4]);
        assert_eq!(chosen_images(&labels, 4), [1, 0, 2, 3]);
        assert_eq!(chosen_images(&labels, 9), [1, 0, 2, 3, 5, 4]);
        assert_eq!(chosen_images(&[], 6), Vec::<usize>::new());
    }

    #[test]
    fn small_crops_are_enlarged_by_a_whole_factor() {
        assert_eq!([cell_side(224), cell_side(128), cell_side(64), cell_side(32), cell_side(100)], [224, 128, 128, 128, 200]);
    }

    #[test]
    fn long_labels_are_cut_to_their_room() {
        let width = |text: &str| 10 * text.chars().count() as u32;
        assert_eq!(fitted("glioma", 60, width), "glioma");
        assert_eq!(fitted("meningioma_tumor", 60, width), "menin…");
        assert_eq!(fitted("meningioma", 5, width), "");
    }
}
