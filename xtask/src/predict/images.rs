//! The images `predict` reads: one image, a folder (at any depth) or a CSV's path column (and
//! label column), decoded into the ranking's cache, with the unreadable ones left out and listed
//! where asked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use medxfer_data::{DicomFrame, Entry, FrameSelection, Part, Rendering};
use medxfer_train::SplitData;

use crate::rank::images::LabelColumns;

/// The images to predict: the folder they are under, each one's path under it, and each one's
/// class where a CSV's label column gives it.
pub struct Images {
    pub root: PathBuf,
    pub paths: Vec<String>,
    pub labels: Option<Vec<String>>,
    /// Of a DICOM series predicted from several of its slices (`--slice all`, every:K), its row's
    /// path (the first of its slices kept) and every slice kept, in the series' order.
    pub series: HashMap<String, Vec<String>>,
}

/// `images` with only the files whose DICOM header meets `conditions` (`--dicom-where`), their
/// labels with them; none left is an error.
pub fn keep_where(images: &mut Images, conditions: &[medxfer_data::DicomCondition]) -> Result<()> {
    if conditions.is_empty() {
        return Ok(());
    }
    let kept = crate::rank::dicom_where::kept_where(&images.root, &images.paths, conditions)?;
    let keep = |values: &mut Vec<String>| {
        let mut kept = kept.iter();
        values.retain(|_| kept.next().copied().unwrap_or(false));
    };
    keep(&mut images.paths);
    if let Some(labels) = &mut images.labels {
        keep(labels);
    }
    if images.paths.is_empty() {
        bail!("{}: no image meets --dicom-where (stderr lists the values the files have); loosen the pattern", images.root.display());
    }
    Ok(())
}

/// Every image file under a folder (in name order), or a CSV's path column (and label column).
pub fn image_paths(images: &Path, images_root: Option<&Path>, csv_columns: Option<&str>) -> Result<Images> {
    if images.is_dir() {
        if images_root.is_some() || csv_columns.is_some() {
            bail!("--images-root and --csv-columns read a CSV; --images {} is a folder: leave them out", images.display());
        }
        let mut paths = Vec::new();
        let (files, objects) = crate::rank::images::image_files(images)?;
        crate::rank::images::say_passed_over(images, &objects);
        for file in files {
            let relative = file.strip_prefix(images).unwrap_or(&file);
            let relative = relative.to_str().with_context(|| format!("{}: its name is not valid UTF-8; rename it", file.display()))?;
            paths.push(relative.replace('\\', "/"));
        }
        if paths.is_empty() {
            bail!("{}: no images ({}) in this folder or below it", images.display(), medxfer_data::IMAGE_EXTENSIONS.join(", "));
        }
        return Ok(Images { root: images.to_path_buf(), paths, labels: None, series: HashMap::new() });
    }
    if !images.is_file() {
        bail!("--images {}: no such folder or file", images.display());
    }
    if medxfer_data::is_image_file(images) {
        if images_root.is_some() || csv_columns.is_some() {
            bail!("--images-root and --csv-columns read a CSV; --images {} is an image: leave them out", images.display());
        }
        let name = images
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: its name is not valid UTF-8; rename it", images.display()))?;
        let root = images.parent().map(Path::to_path_buf).unwrap_or_default();
        return Ok(Images { root, paths: vec![name.to_string()], labels: None, series: HashMap::new() });
    }
    let root = match images_root {
        Some(root) if !root.is_dir() => bail!("--images-root {}: no such folder", root.display()),
        Some(root) => root.to_path_buf(),
        None => images.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let (path_name, label_name) = match csv_columns.map(|text| text.split(',').map(str::trim).collect::<Vec<_>>()).as_deref() {
        None => ("path", None),
        Some([path]) if !path.is_empty() => (*path, None),
        Some([path, label]) if !path.is_empty() && !label.split('+').any(str::is_empty) => (*path, Some(*label)),
        Some(_) => bail!(
            "--csv-columns {:?}: expected the path column's name and optionally the label's, as PATH[,LABEL]",
            csv_columns.unwrap_or_default()
        ),
    };
    let mut reader = csv::Reader::from_path(images).with_context(|| format!("cannot read {}", images.display()))?;
    let header = reader.headers().with_context(|| format!("cannot read {}", images.display()))?.clone();
    let column = |name: &str| header.iter().position(|h| h == name);
    let labels = label_name.map(|label| LabelColumns::find(label, column)).transpose();
    let (Some(path_column), Ok(label_columns)) = (column(path_name), labels) else {
        bail!(
            "{}: the header is `{}`; expected a column named {path_name}{} (each image's path, relative to --images-root or the CSV's folder){}",
            images.display(),
            header.iter().collect::<Vec<_>>().join(","),
            label_name.map_or_else(String::new, |label| format!(" and {label}")),
            crate::results::separator_hint(&header)
        );
    };
    let (mut paths, mut labels) = (Vec::new(), Vec::new());
    for (line, record) in reader.records().enumerate() {
        let line = line + 2;
        let record = record.with_context(|| format!("{}: line {line}", images.display()))?;
        let given = record.get(path_column).unwrap_or_default();
        let Some(path) = crate::rank::images::resolve(&root, given.trim()) else {
            bail!(
                "{}: line {line}: {} is not there{}",
                images.display(),
                root.join(given).display(),
                if images_root.is_some() { "" } else { " (relative paths are under the CSV's folder; --images-root names another)" }
            );
        };
        paths.push(path);
        if let Some(label_columns) = &label_columns {
            labels.push(label_columns.of(&record).with_context(|| format!("{}: line {line}", images.display()))?);
        }
    }
    if paths.is_empty() {
        bail!("{}: no rows", images.display());
    }
    Ok(Images { root, paths, labels: label_name.map(|_| labels), series: HashMap::new() })
}

/// The slices of DICOM series stored a file a slice among `images` as `selection` reads them: one
/// chosen (`--slice middle`), each series' slice kept is its row and the others are left out;
/// several (`--slice all`, every:K), each series is one row, named by the first of its slices kept,
/// its probabilities the mean of theirs, as a loop's are of its frames (`images.series` lists
/// them). Said on stderr. A file whose header cannot be read stays, for the decoding to name; the
/// slices of one series given different labels (a CSV's) are refused.
pub fn keep_chosen_slices(images: &mut Images, selection: FrameSelection, reading: medxfer_data::VolumeReading) -> Result<()> {
    use rayon::prelude::*;
    if selection == FrameSelection::default() {
        return Ok(());
    }
    let places: Vec<Place> = images
        .paths
        .par_iter()
        .map(|path| {
            let file = Entry { path: path.clone(), label: 0, group: String::new(), split: Part::Test, frame: None };
            match medxfer_data::frame_entries(&images.root, &[file], selection, reading) {
                Ok(entries) if entries.is_empty() => Place::LeftOut,
                Ok(_) if selection.is_per_frame() => match medxfer_data::series_place(&images.root.join(path)) {
                    Ok(Some(place)) => Place::Slice { series: place.key(), index: place.index },
                    _ => Place::Row,
                },
                _ => Place::Row,
            }
        })
        .collect();
    let series = series_rows(images, &places, selection)?;
    let left_out = places.iter().filter(|place| matches!(place, Place::LeftOut)).count();
    if left_out > 0 {
        eprintln!(
            "--slice {selection}: {left_out} of {} files left out, slices of DICOM series stored a file a slice that --slice does not \
             keep; a row for each slice kept",
            images.paths.len()
        );
    }
    if !series.is_empty() {
        eprintln!(
            "--slice {selection}: {} slices of {} DICOM series predicted, each series a row named by the first of its slices kept \
             (in order along their normal), its probabilities the mean of its slices'",
            series.values().map(Vec::len).sum::<usize>(),
            series.len()
        );
    }
    let rows: Vec<bool> = places
        .iter()
        .enumerate()
        .map(|(row, place)| match place {
            Place::LeftOut => false,
            Place::Row => true,
            Place::Slice { .. } => series.contains_key(&row),
        })
        .collect();
    images.series = series
        .iter()
        .map(|(&first, slices)| (images.paths[first].clone(), slices.iter().map(|&row| images.paths[row].clone()).collect()))
        .collect();
    let keep =
        |values: &[String]| -> Vec<String> { values.iter().zip(&rows).filter(|(_, row)| **row).map(|(value, _)| value.clone()).collect() };
    images.labels = images.labels.as_deref().map(keep);
    images.paths = keep(&images.paths);
    Ok(())
}

/// What `selection` makes of a file to predict.
enum Place {
    /// Not kept (a slice of a series that `selection` leaves out).
    LeftOut,
    /// A row of its own.
    Row,
    /// One of several slices kept of a series (the folder and UID naming it), at `index` in it.
    Slice { series: String, index: usize },
}

/// Each series' first slice kept (its row in `images`) and every one of its slices kept (theirs),
/// in the series' order; slices of one series with different labels refused.
fn series_rows(images: &Images, places: &[Place], selection: FrameSelection) -> Result<HashMap<usize, Vec<usize>>> {
    // In the series' names' order: the same refusal named whatever the run.
    let mut members: std::collections::BTreeMap<&str, Vec<(usize, usize)>> = std::collections::BTreeMap::new();
    for (row, place) in places.iter().enumerate() {
        if let Place::Slice { series, index } = place {
            members.entry(series.as_str()).or_default().push((*index, row));
        }
    }
    let mut series = HashMap::new();
    for mut slices in members.into_values() {
        slices.sort_unstable();
        let first = slices[0].1;
        if let Some(labels) = &images.labels
            && let Some(&(_, other)) = slices.iter().find(|&&(_, row)| labels[row] != labels[first])
        {
            bail!(
                "--slice {selection}: {} and {}, slices of one DICOM series, have different labels ({} and {}): a series is predicted as \
                 one row; predict with --slice only (a row a slice)",
                images.paths[first],
                images.paths[other],
                labels[first],
                labels[other]
            );
        }
        series.insert(first, slices.into_iter().map(|(_, row)| row).collect());
    }
    Ok(series)
}

/// Where `--skip-unreadable` lists the images it left out: beside the predictions,
/// `<name>-unreadable.csv`.
pub fn unreadable_file(predictions: &Path) -> PathBuf {
    let stem = predictions.file_stem().map_or_else(|| "predictions".into(), |s| s.to_string_lossy());
    predictions.with_file_name(format!("{stem}-unreadable.csv"))
}

/// The images as decoded into the ranking's cache: one a file, or one a frame where each frame of
/// a loop is an image (`--dicom-frame all`).
pub struct Cached {
    pub split: SplitData,
    /// Which of the images given were readable, where `--skip-unreadable` left some out.
    pub readable: Option<Vec<bool>>,
    /// Each cached image's file: its index in `Images::paths` (as left after `readable`).
    pub file_of: Vec<usize>,
    /// Each cached image's frame, where it is one of several of its file.
    pub frames: Vec<Option<u32>>,
    /// Each cached image's file (a series' slice, where its row is a series).
    pub paths: Vec<String>,
}

/// The decoded images' cache (shorter side `resize`; of a DICOM file of several frames, the
/// frame or frames `selection` keeps, each an image; grayscale DICOM and NIfTI images through
/// `window` where given). An image that cannot be read stops the run
/// with every such image listed, as rank and the study do, unless `skip` (--skip-unreadable):
/// then the unreadable ones (each image decoded once more to tell which, only on this path;
/// a loop is unreadable where one of its frames kept is) are left out of `images.paths` and
/// listed in `listing` as path,error. A listing of an earlier run's is removed where none is
/// left out, so that it never describes another run.
pub fn cached_images(
    cache_dir: &Path,
    images: &mut Images,
    (resize, selection, rendering): (u32, FrameSelection, Rendering),
    skip: bool,
    listing: &Path,
) -> Result<Cached> {
    let first = cached_files(cache_dir, images, (resize, selection, rendering));
    let cached = match first {
        Err(medxfer_train::Error::Data(unreadable @ medxfer_data::Error::Unreadable { .. })) if skip => Err(unreadable),
        Err(medxfer_train::Error::Data(unreadable @ medxfer_data::Error::Unreadable { .. })) => {
            bail!("{unreadable}\n(or pass --skip-unreadable: the others are predicted, these listed in {})", listing.display())
        }
        other => Ok(other?),
    };
    let cached = match cached {
        Ok(cached) => cached,
        Err(unreadable) => {
            use rayon::prelude::*;
            let errors: Vec<Option<String>> =
                images.paths.par_iter().map(|path| unreadable_row(images, path, (selection, rendering))).collect();
            let rows: Vec<Vec<String>> = images
                .paths
                .iter()
                .zip(&errors)
                .filter_map(|(path, error)| error.as_ref().map(|error| vec![path.clone(), error.clone()]))
                .collect();
            // Every image decodes: what failed was the resize (an image past the limits).
            if rows.is_empty() {
                return Err(unreadable.into());
            }
            if rows.len() == images.paths.len() {
                bail!("none of the {} images could be read (the first: {})", rows.len(), rows[0][1]);
            }
            let readable: Vec<bool> = errors.iter().map(Option::is_none).collect();
            images.paths = images.paths.iter().zip(&readable).filter(|(_, r)| **r).map(|(path, _)| path.clone()).collect();
            crate::results::write_rows(listing, &["path", "error"], &rows)?;
            eprintln!("warning: {} unreadable image(s) left out, listed in {}", rows.len(), listing.display());
            let cached = cached_files(cache_dir, images, (resize, selection, rendering))?;
            return Ok(Cached { readable: Some(readable), ..cached });
        }
    };
    if listing.exists() {
        std::fs::remove_file(listing).with_context(|| format!("cannot remove {} (an earlier run's list)", listing.display()))?;
    }
    Ok(cached)
}

/// `images` decoded into the cache, each file's frames `selection` keeps an image (a series row's
/// slices each one); each image's file and frame.
fn cached_files(
    cache_dir: &Path,
    images: &Images,
    (resize, selection, rendering): (u32, FrameSelection, Rendering),
) -> medxfer_train::Result<Cached> {
    // Labels are not read; the cache wants one per image. The group is the file's index, which
    // its frames keep.
    let files: Vec<Entry> = images
        .paths
        .iter()
        .enumerate()
        .map(|(i, path)| Entry { path: path.clone(), label: 0, group: i.to_string(), split: Part::Test, frame: None })
        .collect();
    let entries: Vec<Entry> = medxfer_data::frame_entries(&images.root, &files, selection, rendering.reading())?
        .into_iter()
        .flat_map(|entry| match images.series.get(&entry.path) {
            Some(slices) => slices.iter().map(|slice| Entry { path: slice.clone(), ..entry.clone() }).collect(),
            None => vec![entry],
        })
        .collect();
    let file_of = entries.iter().map(|e| e.group.parse().unwrap_or(usize::MAX)).collect();
    let frames = entries.iter().map(|e| e.frame).collect();
    let paths = entries.iter().map(|e| e.path.clone()).collect();
    let split = SplitData::cached_frame(cache_dir, PREDICT_CACHE, &images.root, &entries, (resize, selection.per_file(), rendering), true)?;
    Ok(Cached { split, readable: None, file_of, frames, paths })
}

/// The image `shown` names of each row (a file and its frame: a loop's frame, a series' slice), under
/// `root`, decoded into the cache apart for `--saliency` (an earlier run's removed), rendered as
/// predicted.
pub fn saliency_frames(
    cache_dir: &Path,
    root: &Path,
    shown: &[(String, Option<u32>)],
    (resize, rendering): (u32, Rendering),
) -> Result<SplitData> {
    let entries: Vec<Entry> = shown
        .iter()
        .map(|(path, frame)| Entry { path: path.clone(), label: 0, group: path.clone(), split: Part::Test, frame: *frame })
        .collect();
    let split = SplitData::cached_frame(cache_dir, SALIENCY_FRAMES_CACHE, root, &entries, (resize, DicomFrame::Only, rendering), false)?;
    crate::rank::images::prune_caches(cache_dir, SALIENCY_FRAMES_CACHE, split.cache.key());
    Ok(split)
}

/// The name of the frames `predict --saliency` draws on, a loop's each, in the cache folder (not
/// "predict-...": pruning predict's own caches would take it).
const SALIENCY_FRAMES_CACHE: &str = "shown-frames";

/// Why the row `path` of `images` cannot be read as `selection` and `rendering` read it: the
/// first of its series' slices that cannot, where it is a series, else [`unreadable_because`].
fn unreadable_row(images: &Images, path: &str, reading: (FrameSelection, Rendering)) -> Option<String> {
    match images.series.get(path) {
        Some(slices) => slices.iter().find_map(|slice| unreadable_because(&images.root, slice, reading)),
        None => unreadable_because(&images.root, path, reading),
    }
}

/// Why the image `path` under `root` cannot be read as `selection` and `rendering` read it (a
/// loop: where one of the frames kept cannot, read as the cache reads them), or `None` where it
/// can.
fn unreadable_because(root: &Path, path: &str, (selection, rendering): (FrameSelection, Rendering)) -> Option<String> {
    let file = Entry { path: path.to_string(), label: 0, group: String::new(), split: Part::Test, frame: None };
    let frames = match medxfer_data::frame_entries(root, &[file], selection, rendering.reading()) {
        Ok(entries) => entries.iter().map(|entry| entry.frame.map_or(selection.per_file(), DicomFrame::Number)).collect::<Vec<_>>(),
        // The file's own error, not the list of one that frame_entries makes of it.
        Err(medxfer_data::Error::Unreadable { problems, .. }) => return problems.into_iter().next(),
        Err(error) => return Some(error.to_string()),
    };
    let path = root.join(path);
    frames.chunks(medxfer_data::FRAMES_PER_READ).find_map(|frames| match medxfer_data::load_image_frames(&path, frames, rendering) {
        Ok(images) => images.into_iter().find_map(Result::err).map(|e| e.to_string()),
        Err(error) => Some(error.to_string()),
    })
}

/// The name of predict's decoded images in the ranking's cache folder.
const PREDICT_CACHE: &str = "predict";

/// Removes the decoded images of earlier predictions on other images from the ranking's cache,
/// keeping this run's (`kept`, its key): one cache per set of new images would grow with every
/// folder predicted, while the same images predicted again (another --backbone, --calibrated)
/// still reuse theirs.
pub fn prune_prediction_caches(cache_dir: &Path, kept: &str) {
    crate::rank::images::prune_caches(cache_dir, PREDICT_CACHE, kept);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// make_series.py's series: the CT one by position IM000004, IM000001, IM000005, IM000003,
    /// IM000002; the MR one by Instance Number mr_b, mr_c, mr_a.
    fn fresh(labels: impl Fn(&str) -> String) -> Images {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/data/tests/fixtures/series/scan");
        let files = ["IM000001", "IM000002", "IM000003", "IM000004", "IM000005", "mr_a.dcm", "mr_b.dcm", "mr_c.dcm", "scout.dcm"];
        Images {
            root,
            paths: files.iter().map(|f| f.to_string()).collect(),
            labels: Some(files.iter().map(|f| labels(f)).collect()),
            series: HashMap::new(),
        }
    }

    /// `--slice middle` keeps each series' middle slice (IM000005, mr_c.dcm), its label with it, and
    /// files of no series; by default every file is a row.
    #[test]
    fn only_the_slices_chosen_of_each_series_are_predicted() {
        let mut images = fresh(|f| format!("label of {f}"));
        keep_chosen_slices(&mut images, FrameSelection::One(DicomFrame::Middle), medxfer_data::Orientation::Stored.into()).unwrap();
        assert_eq!(images.paths, ["IM000005", "mr_c.dcm", "scout.dcm"]);
        assert_eq!(images.labels.unwrap(), ["label of IM000005", "label of mr_c.dcm", "label of scout.dcm"]);
        assert!(images.series.is_empty());
        let mut images = fresh(|f| format!("label of {f}"));
        keep_chosen_slices(&mut images, FrameSelection::default(), medxfer_data::Orientation::Stored.into()).unwrap();
        assert_eq!(images.paths.len(), 9);
    }

    /// `--slice every:2`: each series one row named by its first slice kept, its slices kept
    /// (1st, 3rd, 5th) listed in order; slices of one series labelled differently are refused.
    #[test]
    fn a_series_predicted_from_several_slices_is_one_row() {
        let series_label = |f: &str| if f.starts_with("mr") { "lesion".to_string() } else { "clear".to_string() };
        let mut images = fresh(series_label);
        keep_chosen_slices(&mut images, FrameSelection::Every(2), medxfer_data::Orientation::Stored.into()).unwrap();
        assert_eq!(images.paths, ["IM000004", "mr_b.dcm", "scout.dcm"]);
        assert_eq!(images.labels.unwrap(), ["clear", "lesion", "clear"]);
        assert_eq!(images.series["IM000004"], ["IM000004", "IM000005", "IM000002"]);
        assert_eq!(images.series["mr_b.dcm"], ["mr_b.dcm", "mr_a.dcm"]);
        assert_eq!(images.series.len(), 2);
        let mut images = fresh(|f| format!("label of {f}"));
        let error =
            keep_chosen_slices(&mut images, FrameSelection::Every(2), medxfer_data::Orientation::Stored.into()).unwrap_err().to_string();
        assert!(error.contains("slices of one DICOM series, have different labels") && error.contains("--slice only"), "{error}");
    }
}
