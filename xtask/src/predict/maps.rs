//! predict's saliency maps (`--saliency`): each row's map drawn on the image that most shows what
//! it is drawn for (a loop's frame, a series' slice, where a row pooled several), the overlays
//! and the review page.

use std::path::Path;

use anyhow::Result;
use medxfer_data::Rendering;
use medxfer_train::calibration;
use medxfer_train::{RunSettings, SaliencyBatches};

use super::images::{Cached, Images, saliency_frames};
use crate::rank::card::ModelCard;
use crate::saliency::Reviewed;

/// The model predict ran and how it read the images.
pub(super) struct Reader<'a> {
    pub card: &'a ModelCard,
    pub model: &'a medxfer_zoo::Backbone,
    pub settings: &'a RunSettings,
    pub rendering: Rendering,
    /// Where the images' caches are.
    pub cache_dir: &'a Path,
    pub images: &'a Images,
    pub cached: &'a Cached,
}

/// What predict made of each row (a file, or a series).
pub(super) struct Rows<'a> {
    pub predicted: &'a [u32],
    pub probabilities: &'a [Vec<f64>],
    /// Each row's class, where known.
    pub truth: Option<&'a [u32]>,
    /// Whether each row was referred, where `--refer-below` was given.
    pub referred: Option<&'a [bool]>,
    /// Where rows pooled several images (a loop's frames, a series' slices): each image's logits,
    /// and the temperature they were pooled at.
    pub pooled: Option<(&'a [Vec<f32>], f64)>,
}

/// Writes under `dir` each row's saliency map (the evidence for `class` where given, else for
/// its prediction) and the review page headed `heading`; how many overlays were written.
pub(super) fn write_maps(dir: &Path, heading: &str, reader: &Reader<'_>, rows: &Rows<'_>, class: Option<u32>) -> Result<usize> {
    let (card, cached, paths) = (reader.card, reader.cached, &reader.images.paths);
    let classes = class.map_or_else(|| rows.predicted.to_vec(), |class| vec![class; rows.predicted.len()]);
    // A loop's map on its frame most telling of the class drawn, a series' on its slice.
    let shown: Option<Vec<(String, Option<u32>)>> = rows.pooled.map(|(logits, temperature)| {
        let telling = telling_images(logits, &cached.file_of, &classes, temperature);
        let shown = |(row, image): (usize, Option<usize>)| {
            image.map_or_else(|| (paths[row].clone(), None), |image| (cached.paths[image].clone(), cached.frames[image]))
        };
        telling.into_iter().enumerate().map(shown).collect()
    });
    let reading = (card.resize, reader.rendering);
    let shown_split = shown.as_ref().map(|shown| saliency_frames(reader.cache_dir, &reader.images.root, shown, reading)).transpose()?;
    let bar = crate::features::image_bar(paths.len(), format!("{}: saliency", card.backbone));
    let mut batches = SaliencyBatches::new(reader.model, shown_split.as_ref().unwrap_or(&cached.split), reader.settings, &classes)?;
    let normalization = &reader.settings.normalization;
    let written = crate::saliency::write_overlays(dir, paths, normalization, &mut batches, &|done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let reviewed: Vec<Reviewed<'_>> = (0..paths.len())
        .map(|i| Reviewed {
            path: &paths[i],
            predicted: &card.classes[rows.predicted[i] as usize],
            probability: rows.probabilities[i][rows.predicted[i] as usize],
            truth: rows.truth.map(|truth| card.classes[truth[i] as usize].as_str()),
            referred: rows.referred.map(|referred| referred[i]),
            drawn_on: shown.as_ref().and_then(|shown| drawn_on(&paths[i], &shown[i])),
        })
        .collect();
    crate::saliency::write_review_page(dir, heading, &reviewed)?;
    Ok(written)
}

/// For each file, the image of its images (`logits`; `file_of` names each one's file) that gives
/// the largest probability of `classes`' class for it, at `temperature`: the frame of a loop, or
/// slice of a series, that most shows what the map is drawn for (the first of equals).
fn telling_images(logits: &[Vec<f32>], file_of: &[usize], classes: &[u32], temperature: f64) -> Vec<Option<usize>> {
    let mut best: Vec<Option<(usize, f64)>> = vec![None; classes.len()];
    for (image, (row, &file)) in logits.iter().zip(file_of).enumerate() {
        let p = calibration::probabilities(row, temperature)[classes[file] as usize];
        if best[file].is_none_or(|(_, top)| p > top) {
            best[file] = Some((image, p));
        }
    }
    best.into_iter().map(|found| found.map(|(image, _)| image)).collect()
}

/// What the map of the row `path` is drawn on, where not the file itself: its `shown` image's
/// frame, or the series' slice.
fn drawn_on(path: &str, (shown, frame): &(String, Option<u32>)) -> Option<String> {
    if shown != path {
        let name = Path::new(shown).file_name().map_or_else(|| shown.clone(), |name| name.to_string_lossy().into_owned());
        return Some(format!("slice {name}"));
    }
    frame.map(|frame| format!("frame {frame}"))
}
