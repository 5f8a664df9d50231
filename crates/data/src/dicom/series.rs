//! A DICOM series stored a file a slice, as CT and MR scanners and PACS exports write it: the
//! single-frame files of one folder that share a Series Instance UID, put in order so that
//! `--adjacent-slices` can give each slice its neighbours (a volume's own frames are in order
//! already).
//!
//! The order is the one dcm2niix and pydicom-based loaders use: the slices' Image Position
//! (Patient) along the normal of their Image Orientation (Patient) (the row direction crossed with
//! the column direction), lowest first, whatever the files' names or Instance Numbers say (some
//! scanners number head to feet, others feet to head). A series without positions on every slice
//! is ordered by Instance Number. A series that cannot be put in one order (slices of two
//! orientations, two slices at one position: several echoes or phases in one series) is split
//! into the stacks its slices' headers tell apart, as dcm2niix splits it ([`STACK_FIELDS`]: a
//! localizer's planes, a dual-echo series' echoes), each ordered alone; where nothing tells them
//! apart it is refused rather than given neighbours that are not.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;

use super::geometry::{SAME, cross, numbers};
use super::{dicom_header, number_of_frames};
use crate::error::{Error, Result};

/// The fix every series that cannot be ordered shares: its files read one at a time.
const ALONE: &str = ", or read each file alone (without --adjacent-slices, and with --slice only, the default)";

/// What orders a series' slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesOrder {
    /// Image Position (Patient) along the slices' normal.
    Position,
    /// Instance Number (a slice without a position).
    InstanceNumber,
}

/// Where a single-frame DICOM file sits in its series: the slices either side of it (the file
/// itself at an end) and its place.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPlace {
    /// Its series' Series Instance UID (which names the series in every export of it).
    pub series: String,
    /// The slice before it (itself where it is the first).
    pub before: PathBuf,
    /// The slice after it (itself where it is the last).
    pub after: PathBuf,
    /// Its place in the series, from 0.
    pub index: usize,
    /// How many slices the series holds in its folder.
    pub len: usize,
    /// What ordered them.
    pub order: SeriesOrder,
    /// Where the series is several stacks (echoes, phases, planes), what tells its stack apart
    /// from the others (`echo 2`); its place and neighbours are within that stack.
    pub stack: Option<String>,
}

impl SeriesPlace {
    /// What names its series (its stack, where it has several) within a run: its folder, Series
    /// Instance UID and stack (a series is placed within one folder, so the same UID in two
    /// folders is two series).
    pub fn key(&self) -> String {
        let folder = self.before.parent().unwrap_or(Path::new("."));
        format!("{}\u{0}{}\u{0}{}", folder.display(), self.series, self.stack.as_deref().unwrap_or_default())
    }
}

/// The header fields that place a slice in its series.
#[derive(Debug, Clone)]
struct SliceHeader {
    series: Option<String>,
    frames: u32,
    position: Option<[f64; 3]>,
    orientation: Option<[f64; 6]>,
    instance: Option<i64>,
    /// The fields that tell a series' stacks apart, [`STACK_FIELDS`]' each.
    stack_fields: [Option<String>; 5],
}

/// The header fields that tell the stacks of a series apart where its slices are not one stack,
/// as dcm2niix splits a series: Image Orientation (Patient) (a localizer's three planes), Echo
/// Numbers, Temporal Position Identifier (phases), Diffusion b-value and Diffusion Gradient
/// Orientation; each as a stack's label names it.
const STACK_FIELDS: [&str; 5] = ["orientation", "echo", "temporal position", "b-value", "gradient"];

/// Where the DICOM file at `path` sits among the single-frame files of its folder with its Series
/// Instance UID; `None` for a file that is not DICOM, holds several frames, has no Series
/// Instance UID, or is the only slice of its series in the folder. A series of several stacks
/// places it within its stack. A series whose slices cannot be put in one order, nor split into
/// stacks that can, is an error naming the file, why and the fix. Files of the folder whose header
/// cannot be read are left out of the order (each is its own error when read).
pub fn series_place(path: &Path) -> Result<Option<SeriesPlace>> {
    let Some(own) = slice_header(path)? else { return Ok(None) };
    if own.frames != 1 || own.series.is_none() {
        return Ok(None);
    }
    let Some(name) = path.file_name() else { return Ok(None) };
    let placements = folder_placements(folder_of(path))?;
    match placements.get(name) {
        None => Ok(None),
        Some(Ok(place)) => Ok(Some(place.clone())),
        Some(Err(problem)) => Err(Error::format(path, problem.clone())),
    }
}

/// The slices of the series the DICOM file at `path` is a slice of, in their order; `None` and
/// errors as [`series_place`] has them.
pub fn series_slices(path: &Path) -> Result<Option<Vec<PathBuf>>> {
    let Some(place) = series_place(path)? else { return Ok(None) };
    let folder = folder_of(path);
    let placements = folder_placements(folder)?;
    let mut slices: Vec<(usize, PathBuf)> = placements
        .iter()
        .filter_map(|(name, placed)| {
            placed.as_ref().ok().filter(|p| p.series == place.series && p.stack == place.stack).map(|p| (p.index, folder.join(name)))
        })
        .collect();
    slices.sort();
    Ok(Some(slices.into_iter().map(|(_, path)| path).collect()))
}

/// The folder the file at `path` is in: `.` for a bare file name (`show IM000001` in its folder).
fn folder_of(path: &Path) -> &Path {
    path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The header fields of the DICOM file at `path` that place it; `None` for a file that is not
/// DICOM.
fn slice_header(path: &Path) -> Result<Option<SliceHeader>> {
    let Some((object, _)) = dicom_header(path)? else { return Ok(None) };
    let frames = number_of_frames(&object).map_err(|what| Error::format(path, what))?;
    let orientation = numbers(&object, tags::IMAGE_ORIENTATION_PATIENT);
    Ok(Some(SliceHeader {
        series: text(&object, tags::SERIES_INSTANCE_UID),
        frames,
        position: numbers(&object, tags::IMAGE_POSITION_PATIENT).and_then(|v| v.try_into().ok()),
        instance: object.element_opt(tags::INSTANCE_NUMBER).ok().flatten().and_then(|e| e.to_int::<i64>().ok()),
        stack_fields: [
            orientation.as_deref().map(rounded),
            text(&object, tags::ECHO_NUMBERS),
            text(&object, tags::TEMPORAL_POSITION_IDENTIFIER),
            numbers(&object, tags::DIFFUSION_B_VALUE).map(|values| rounded(&values)),
            numbers(&object, tags::DIFFUSION_GRADIENT_ORIENTATION).map(|values| rounded(&values)),
        ],
        orientation: orientation.and_then(|v| v.try_into().ok()),
    }))
}

/// `values` to 3 decimals, joined by commas: values that differ by less are one stack's.
fn rounded(values: &[f64]) -> String {
    let shown: Vec<String> = values.iter().map(|v| format!("{:.3}", if v.abs() < 5e-4 { 0.0 } else { *v })).collect();
    shown.join(",")
}

/// `tag`'s text, trimmed of DICOM's padding; `None` where absent or blank.
fn text(object: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let element = object.element_opt(tag).ok().flatten()?;
    let value = element.to_str().ok()?;
    let value = value.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!value.is_empty()).then(|| value.to_string())
}

/// Each file of a folder that is a slice of a series of two or more there: its place, or why its
/// series has none.
type Placements = HashMap<OsString, std::result::Result<SeriesPlace, String>>;

/// A folder as placed: its path and modification time (a file added or removed changes it).
type FolderIdentity = (PathBuf, Option<SystemTime>);

/// How many folders' placements are kept (an image cache reads a folder's slices one after
/// another, a few folders at once).
const FOLDERS_KEPT: usize = 64;

/// The folders placed lately, each slot filled by the first run that asks for it.
type FolderSlot = Arc<Mutex<Option<Arc<Placements>>>>;
static PLACED_FOLDERS: Mutex<Vec<(FolderIdentity, FolderSlot)>> = Mutex::new(Vec::new());

/// The placements of `folder`'s series, as kept, else read (then kept): each of its slices'
/// headers read once, however many of them are asked for.
fn folder_placements(folder: &Path) -> Result<Arc<Placements>> {
    let modified = std::fs::metadata(folder).map_err(|e| Error::io(folder, e))?.modified().ok();
    let identity = (folder.to_path_buf(), modified);
    let slot = {
        let mut kept = PLACED_FOLDERS.lock().unwrap_or_else(PoisonError::into_inner);
        match kept.iter().find(|(kept, _)| *kept == identity) {
            Some((_, slot)) => slot.clone(),
            None => {
                if kept.len() >= FOLDERS_KEPT {
                    kept.remove(0);
                }
                let slot = FolderSlot::default();
                kept.push((identity, slot.clone()));
                slot
            }
        }
    };
    let mut placements = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(placements) = placements.as_ref() {
        return Ok(placements.clone());
    }
    // A failed read keeps nothing: the next run tries again and names its own error.
    let read = Arc::new(place_folder(folder)?);
    *placements = Some(read.clone());
    Ok(read)
}

/// Lets go of the folders [`folder_placements`] kept.
pub(crate) fn forget_placed_folders() {
    PLACED_FOLDERS.lock().unwrap_or_else(PoisonError::into_inner).clear();
}

/// Every series of two or more single-frame files in `folder`, each put in order.
fn place_folder(folder: &Path) -> Result<Placements> {
    let mut names = Vec::new();
    for item in std::fs::read_dir(folder).map_err(|e| Error::io(folder, e))? {
        let item = item.map_err(|e| Error::io(folder, e))?;
        // Links followed, as the folder walkers follow them.
        if std::fs::metadata(item.path()).is_ok_and(|m| m.is_file()) && !item.file_name().eq_ignore_ascii_case("DICOMDIR") {
            names.push(item.file_name());
        }
    }
    // One after another: this runs under the folder's lock, and a rayon task waiting on a lock it
    // holds itself (a stolen job asking for the same folder) would never wake.
    let slices: Vec<(OsString, SliceHeader)> = names
        .into_iter()
        .filter_map(|name| match slice_header(&folder.join(&name)) {
            Ok(Some(header)) if header.frames == 1 && header.series.is_some() => Some((name, header)),
            _ => None,
        })
        .collect();
    let mut series: HashMap<String, Vec<(OsString, SliceHeader)>> = HashMap::new();
    for (name, header) in slices {
        series.entry(header.series.clone().unwrap_or_default()).or_default().push((name, header));
    }
    let mut placements = Placements::new();
    for (uid, mut slices) in series.into_iter().filter(|(_, slices)| slices.len() > 1) {
        // Names first: the same order whatever order the folder lists its files in.
        slices.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<OsString> = slices.iter().map(|(name, _)| name.clone()).collect();
        match stacks_of(slices) {
            Ok(stacks) => {
                for (stack, slices, order) in stacks {
                    let name = |index: usize| folder.join(&slices[index].0);
                    let last = slices.len() - 1;
                    for (index, (file, _)) in slices.iter().enumerate() {
                        let place = SeriesPlace {
                            series: uid.clone(),
                            before: name(index.saturating_sub(1)),
                            after: name((index + 1).min(last)),
                            index,
                            len: slices.len(),
                            order,
                            stack: stack.clone(),
                        };
                        placements.insert(file.clone(), Ok(place));
                    }
                }
            }
            Err(problem) => placements.extend(names.into_iter().map(|file| (file, Err(problem.clone())))),
        }
    }
    Ok(placements)
}

/// One stack of a series: what tells it apart from the series' others (`None` where the series is
/// one stack), its slices in order, and what ordered them.
type Stack = (Option<String>, Vec<(OsString, SliceHeader)>, SeriesOrder);

/// One series' `slices` as the stacks they make: one, in order, where they can be put in one;
/// else one for each value of the [`STACK_FIELDS`] that differ among them, each in order. Why
/// not where neither can be (the series' own problem where no field tells stacks apart).
fn stacks_of(mut slices: Vec<(OsString, SliceHeader)>) -> std::result::Result<Vec<Stack>, String> {
    let problem = match put_in_order(&mut slices) {
        Ok(order) => return Ok(vec![(None, slices, order)]),
        Err(problem) => problem,
    };
    let first = slices[0].1.stack_fields.clone();
    let differing: Vec<usize> = (0..STACK_FIELDS.len()).filter(|&f| slices.iter().any(|(_, h)| h.stack_fields[f] != first[f])).collect();
    if differing.is_empty() {
        return Err(problem);
    }
    let mut groups: BTreeMap<Vec<Option<String>>, Vec<(OsString, SliceHeader)>> = BTreeMap::new();
    for slice in slices {
        groups.entry(differing.iter().map(|&f| slice.1.stack_fields[f].clone()).collect()).or_default().push(slice);
    }
    let mut stacks = Vec::with_capacity(groups.len());
    for (values, mut group) in groups {
        let label: Vec<String> = differing
            .iter()
            .zip(&values)
            .map(|(&f, value)| format!("{} {}", STACK_FIELDS[f], value.as_deref().unwrap_or("none")))
            .collect();
        let label = label.join(", ");
        let order = put_in_order(&mut group).map_err(|problem| format!("its series' stack of {label}: {problem}"))?;
        stacks.push((Some(label), group, order));
    }
    Ok(stacks)
}

/// Sorts one series' `slices` (named by file) into their order along the normal, else by
/// Instance Number, saying which; why neither can order them where neither can.
fn put_in_order(slices: &mut [(OsString, SliceHeader)]) -> std::result::Result<SeriesOrder, String> {
    if let [(_, alone)] = slices {
        return Ok(if alone.position.is_some() { SeriesOrder::Position } else { SeriesOrder::InstanceNumber });
    }
    let shown = |name: &OsString| name.to_string_lossy().into_owned();
    let placed: Option<Vec<([f64; 3], [f64; 6])>> = slices.iter().map(|(_, h)| h.position.zip(h.orientation)).collect();
    if let Some(placed) = placed {
        let (_, first) = placed[0];
        if let Some(other) = placed.iter().position(|(_, o)| o.iter().zip(&first).any(|(a, b)| (a - b).abs() > SAME)) {
            return Err(format!(
                "its DICOM series holds slices of more than one orientation (Image Orientation (Patient) {first:?} in {}, {:?} in \
                 {}), so they are not one stack; move each stack to a folder of its own{ALONE}",
                shown(&slices[0].0),
                placed[other].1,
                shown(&slices[other].0)
            ));
        }
        let normal = cross([first[0], first[1], first[2]], [first[3], first[4], first[5]]);
        let along = |(position, _): &([f64; 3], [f64; 6])| position.iter().zip(&normal).map(|(p, n)| p * n).sum::<f64>();
        let mut keyed: Vec<(f64, usize)> = placed.iter().map(along).zip(0..).collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        if let Some(pair) = keyed.windows(2).find(|pair| pair[1].0 - pair[0].0 <= SAME) {
            return Err(format!(
                "two slices of its DICOM series, {} and {}, lie at the same position ({:.3} mm along the slices' normal): several \
                 echoes, phases or acquisitions in one series; move each to a folder of its own{ALONE}",
                shown(&slices[pair[0].1].0),
                shown(&slices[pair[1].1].0),
                pair[0].0
            ));
        }
        reorder(slices, keyed.iter().map(|&(_, at)| at));
        return Ok(SeriesOrder::Position);
    }
    let numbered: Option<Vec<i64>> = slices.iter().map(|(_, h)| h.instance).collect();
    let Some(numbers) = numbered else {
        return Err(format!(
            "its DICOM series' slices can be put in order neither by position (Image Position and Orientation (Patient) on \
             every slice) nor by Instance Number (on every slice); convert the series to one volume (dcm2niix){ALONE}"
        ));
    };
    let mut keyed: Vec<(i64, usize)> = numbers.into_iter().zip(0..).collect();
    keyed.sort_unstable();
    if let Some(pair) = keyed.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(format!(
            "two slices of its DICOM series, {} and {}, have no position and the same Instance Number ({}); convert the series \
             to one volume (dcm2niix){ALONE}",
            shown(&slices[pair[0].1].0),
            shown(&slices[pair[1].1].0),
            pair[0].0
        ));
    }
    reorder(slices, keyed.iter().map(|&(_, at)| at));
    Ok(SeriesOrder::InstanceNumber)
}

/// `slices` rearranged so that the i-th is the one `order`'s i-th index names.
fn reorder(slices: &mut [(OsString, SliceHeader)], order: impl Iterator<Item = usize>) {
    let taken: Vec<(OsString, SliceHeader)> = order.map(|at| slices[at].clone()).collect();
    for (slot, slice) in slices.iter_mut().zip(taken) {
        *slot = slice;
    }
}
