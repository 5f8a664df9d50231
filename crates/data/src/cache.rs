//! Decode once: a dataset split's images, decoded and resized (shorter side 256 by default),
//! stored as raw RGB8 in one file with a JSON index. Epochs read from it with positional reads
//! (the page cache keeps it in memory, as a memory map would; the workspace forbids `unsafe`,
//! which mapping needs) and never decode a JPEG again.
//!
//! The cache is keyed by the dataset name, the resize, the decoder's revision, the DICOM frame
//! chosen of files of several (where one is) and a checksum of the files it covers (paths, sizes
//! and modification times; of a 2.5-D DICOM slice, its neighbours' too), so a changed dataset or
//! split, another frame, or a decoder that makes
//! other pixels of some file, builds a new one, even when an image is
//! rewritten at the same size (an uncompressed TIFF or BMP). Both files are written
//! through medxfer-durable (a temporary file of this process, renamed when complete), the index
//! last: a killed build leaves no half cache behind, and shards building the same cache at once
//! each write their own.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::decode::{DECODE_REVISION, FAINT_16BIT_BELOW, Rendering, forget_kept_reads, load_image_frames};
use crate::dicom::{DicomFrame, series_place};
use crate::error::{Error, Result};
use crate::split::Entry;
use crate::transform::resize_shorter;
use crate::volume::Orientation;

/// Where one image sits in the data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub offset: u64,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Index {
    key: String,
    short_side: u32,
    paths: Vec<String>,
    slots: Vec<Slot>,
    /// The images whose 16-bit samples came out near black (caches written before kept none).
    #[serde(default)]
    faint: Vec<String>,
}

/// An opened cache: `read(i)` is image i of the entries it was built from, in their order.
#[derive(Debug)]
pub struct ImageCache {
    file: File,
    data_path: PathBuf,
    index: Index,
}

/// How many images are decoded in parallel before being appended in order.
const CHUNK: usize = 256;

/// blake3 over the sorted "path, size, modification time" lines of the files `entries` name (a
/// frame's path with its number): what the cache was made from (reading every byte of a
/// 25,000-image dataset to key it would cost as much as decoding it). With `neighbours` (2.5-D
/// images), a DICOM series' slice's line is followed by its neighbours' (files its image is made
/// of too, which may not be entries: `--slice middle` keeps one slice a series).
fn files_stamp(root: &Path, entries: &[Entry], neighbours: bool) -> Result<String> {
    let line = |name: &str, path: &Path| -> Result<String> {
        let metadata = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let modified = metadata.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        Ok(format!("{name}\t{}\t{modified}\n", metadata.len()))
    };
    let mut lines: Vec<String> = Vec::with_capacity(entries.len());
    for entry in entries {
        let path = root.join(&entry.path);
        let mut own = line(&indexed_path(entry), &path)?;
        // A series that cannot be put in order is the decoding's error, which names it.
        if let Some(place) = neighbours.then(|| series_place(&path).ok().flatten()).flatten() {
            for neighbour in [&place.before, &place.after] {
                let name = neighbour.strip_prefix(root).unwrap_or(neighbour).display().to_string();
                own.push_str(&line(&format!("  beside it: {name}"), neighbour)?);
            }
        }
        lines.push(own);
    }
    lines.sort();
    let mut hasher = blake3::Hasher::new();
    for line in &lines {
        hasher.update(line.as_bytes());
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// How many of a file's frames (each an image) are read together: its header read, and a
/// compressed file parsed, once for them (a 600-frame loop's frames decoded at once would take
/// gigabytes).
pub const FRAMES_PER_READ: usize = 16;

/// `entries` cut into the runs read together: a file's consecutive frames (up to
/// [`FRAMES_PER_READ`]), every other entry alone.
fn frame_reads(entries: &[Entry]) -> Vec<std::ops::Range<usize>> {
    let mut reads: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match reads.last_mut() {
            Some(read)
                if entry.frame.is_some()
                    && entries[read.start].frame.is_some()
                    && entries[read.start].path == entry.path
                    && read.len() < FRAMES_PER_READ =>
            {
                read.end = i + 1;
            }
            _ => reads.push(i..i + 1),
        }
    }
    reads
}

/// The images of `entries` (one entry, or frames of one file) under `root`, decoded (the frame an
/// entry names, else `frame`; rendered as `rendering` says) and resized to a shorter side of
/// `short_side`; whether each came out faint; or the error naming the file, for each.
fn decoded_read(
    root: &Path,
    entries: &[Entry],
    (short_side, frame, rendering): (u32, DicomFrame, Rendering),
) -> Vec<std::result::Result<(RgbImage, bool), String>> {
    let Some(first) = entries.first() else { return Vec::new() };
    let path = root.join(&first.path);
    let frames: Vec<DicomFrame> = entries.iter().map(|entry| entry.frame.map_or(frame, DicomFrame::Number)).collect();
    match load_image_frames(&path, &frames, rendering) {
        Ok(decoded) => decoded
            .into_iter()
            .map(|decoded| {
                let decoded = decoded.map_err(|e| e.to_string())?;
                let image = resize_shorter(&decoded.image, short_side).map_err(|e| Error::format(&path, e.to_string()).to_string())?;
                Ok((image, decoded.faint))
            })
            .collect(),
        Err(error) => vec![Err(error.to_string()); entries.len()],
    }
}

/// How the cache names an entry's image: its path, and `#N` after it for frame N of a file of
/// several (each frame an image), so that a cache of one loop's frames in another order is not
/// read as this one.
fn indexed_path(entry: &Entry) -> std::borrow::Cow<'_, str> {
    match entry.frame {
        Some(frame) => format!("{}#{frame}", entry.path).into(),
        None => entry.path.as_str().into(),
    }
}

impl ImageCache {
    /// Opens the cache of `entries` (images under `root`) in `dir`, building it first if it is
    /// missing or stale. `progress` draws a progress bar while building. A DICOM file of several
    /// frames is refused.
    pub fn open_or_build(dir: &Path, dataset: &str, root: &Path, entries: &[Entry], short_side: u32, progress: bool) -> Result<Self> {
        Self::open_or_build_frame(dir, dataset, root, entries, (short_side, DicomFrame::Only, Rendering::default()), progress)
    }

    /// [`Self::open_or_build`], reading the frame `frame` chooses of each DICOM file of several
    /// (the cache keyed by the choice, where it is not [`DicomFrame::Only`]), or the frame an entry
    /// names (each frame of a loop an image: [`crate::frame_entries`]); images rendered as
    /// `rendering` says (the cache keyed by it: a window, a volume's orientation, 2.5-D).
    pub fn open_or_build_frame(
        dir: &Path,
        dataset: &str,
        root: &Path,
        entries: &[Entry],
        (short_side, frame, rendering): (u32, DicomFrame, Rendering),
        progress: bool,
    ) -> Result<Self> {
        // Once for all, where each image would otherwise fail on its own.
        if !(1..=crate::transform::MAX_SIDE).contains(&short_side) {
            return Err(Error::Config {
                source_name: format!("the image cache of {dataset}"),
                problem: format!("a shorter side of {short_side} px; expected 1 to {} (the study's is 256)", crate::transform::MAX_SIDE),
            });
        }
        let checksum = files_stamp(root, entries, rendering.adjacent_slices)?;
        let frame_key = match frame {
            DicomFrame::Only => String::new(),
            chosen => format!("-f{chosen}"),
        };
        let window_key = rendering.window.map(|window| format!("-w{window}")).unwrap_or_default();
        let orientation_key = match rendering.orientation {
            Orientation::Stored => String::new(),
            other => format!("-o{other}"),
        };
        let volume_key = rendering.volume.map(|volume| format!("-v{volume}")).unwrap_or_default();
        let adjacent_key = if rendering.adjacent_slices { "-adjacent" } else { "" };
        let key = format!(
            "{dataset}-s{short_side}-d{DECODE_REVISION}{frame_key}{window_key}{orientation_key}{volume_key}{adjacent_key}-{}",
            &checksum[..16]
        );
        let (data_path, index_path) = (dir.join(format!("{key}.rgb8")), dir.join(format!("{key}.json")));
        if let Some(cache) = Self::open(&data_path, &index_path, &key, entries)? {
            return Ok(cache);
        }
        let pending = medxfer_durable::PendingFile::new(&data_path)?;
        let partial = pending.path();
        let file = File::create(pending.path()).map_err(|e| Error::io(partial, e))?;
        let mut writer = BufWriter::with_capacity(1 << 22, file);
        let bar = progress.then(|| {
            let bar = indicatif::ProgressBar::new(entries.len() as u64);
            bar.set_message(format!("caching {dataset}"));
            bar
        });
        let mut slots = Vec::with_capacity(entries.len());
        let mut offset = 0u64;
        // Every image is read even after one fails, so that the error lists them all at once
        // (a folder of the user's may hold several); nothing is written after the first.
        let mut problems = Vec::new();
        let mut faint_images = Vec::new();
        for chunk in entries.chunks(CHUNK) {
            let reads: Vec<Vec<std::result::Result<(RgbImage, bool), String>>> =
                frame_reads(chunk).into_par_iter().map(|read| decoded_read(root, &chunk[read], (short_side, frame, rendering))).collect();
            for (entry, image) in chunk.iter().zip(reads.into_iter().flatten()) {
                let image = match image {
                    Ok((image, faint)) if problems.is_empty() => {
                        if faint {
                            faint_images.push(entry.path.clone());
                        }
                        image
                    }
                    Ok(_) => continue,
                    // A file's error, given for each of its frames read: named once.
                    Err(error) if problems.last() == Some(&error) => continue,
                    Err(error) => {
                        problems.push(error);
                        continue;
                    }
                };
                let slot = Slot { offset, width: image.width(), height: image.height() };
                writer.write_all(image.as_raw()).map_err(|e| Error::io(partial, e))?;
                offset += image.as_raw().len() as u64;
                slots.push(slot);
            }
            if let Some(bar) = &bar {
                bar.inc(chunk.len() as u64);
            }
        }
        forget_kept_reads();
        if !problems.is_empty() {
            return Err(Error::Unreadable { total: entries.len(), problems });
        }
        writer.into_inner().map_err(|e| Error::io(partial, e.error()))?;
        pending.commit()?;
        if let Some(first) = faint_images.first() {
            eprintln!(
                "warning: {dataset}: {} of {} images hold 16-bit samples all under {FAINT_16BIT_BELOW} (12-bit data, as DICOM exports store it), e.g. {}: \
                 reduced to their high byte, as Pillow reduces 16-bit RGB, they span 0..15 of 255 and reach the backbones near black; \
                 read them through a window on their stored values (rank's and predict's --window 2048,4096 spans 12-bit data) \
                 or export them to 8 bits with the intensity window you read them with",
                faint_images.len(),
                entries.len(),
                root.join(first).display()
            );
        }
        let paths = entries.iter().map(|e| indexed_path(e).into_owned()).collect();
        let index = Index { key: key.clone(), short_side, paths, slots, faint: faint_images };
        let json = serde_json::to_vec(&index).map_err(|e| Error::format(&index_path, e.to_string()))?;
        medxfer_durable::write_atomic(&index_path, &json)?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        Self::open(&data_path, &index_path, &key, entries)?
            .ok_or_else(|| Error::format(&index_path, "the cache just written does not open"))
    }

    /// The cache at these paths if it exists, matches `key` and covers `entries` in order.
    fn open(data_path: &Path, index_path: &Path, key: &str, entries: &[Entry]) -> Result<Option<Self>> {
        let (Ok(json), Ok(file)) = (std::fs::read(index_path), File::open(data_path)) else { return Ok(None) };
        let Ok(index) = serde_json::from_slice::<Index>(&json) else { return Ok(None) };
        let expected_len: u64 = index.slots.iter().map(|s| u64::from(s.width) * u64::from(s.height) * 3).sum();
        let actual_len = file.metadata().map_err(|e| Error::io(data_path, e))?.len();
        let same_entries = index.paths.len() == entries.len() && index.paths.iter().zip(entries).all(|(p, e)| *p == indexed_path(e));
        if index.key != key || !same_entries || expected_len != actual_len {
            return Ok(None);
        }
        Ok(Some(Self { file, data_path: data_path.to_path_buf(), index }))
    }

    /// What the cache was made from: the dataset's name, the resize, the decoder's revision, the
    /// DICOM frame chosen (where one is) and a checksum of the files' paths, sizes and modification
    /// times (an image edited in place changes it).
    pub fn key(&self) -> &str {
        &self.index.key
    }

    /// Images in the cache.
    pub fn len(&self) -> usize {
        self.index.slots.len()
    }

    /// Whether the cache holds no image.
    pub fn is_empty(&self) -> bool {
        self.index.slots.is_empty()
    }

    /// The resize the cache was built with.
    pub fn short_side(&self) -> u32 {
        self.index.short_side
    }

    /// The images (their paths under the dataset's folder) whose 16-bit samples were all under
    /// [`FAINT_16BIT_BELOW`]: near black once reduced to 8 bits.
    pub fn faint_images(&self) -> &[String] {
        &self.index.faint
    }

    /// Image `i` (in the order of the entries the cache was built from).
    pub fn read(&self, i: usize) -> Result<RgbImage> {
        let slot =
            self.index.slots.get(i).ok_or_else(|| Error::format(&self.data_path, format!("no image {i} in a cache of {}", self.len())))?;
        let mut pixels = vec![0u8; slot.width as usize * slot.height as usize * 3];
        self.file.read_exact_at(&mut pixels, slot.offset).map_err(|e| Error::io(&self.data_path, e))?;
        RgbImage::from_raw(slot.width, slot.height, pixels)
            .ok_or_else(|| Error::format(&self.data_path, "a cached image has the wrong size"))
    }
}
