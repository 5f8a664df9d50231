//! The practitioner's images: a folder with one subfolder per class (and optionally one
//! subfolder per patient or slide under each), or a CSV of `path,label` (paths relative to the
//! CSV's folder, or absolute), or of the columns [`ImagesReading`] names.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use medxfer_data::Record;

/// How `--images` is read: which columns of a CSV hold what and where its relative paths are,
/// or whether a folder's second level groups its images.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ImagesReading {
    /// With a CSV: its path and label columns, and optionally a group column (a patient or lesion
    /// id), as PATH,LABEL[,GROUP]. A path without an extension is looked for as .jpg, .png ... (an
    /// image id); with a group column, --finetune-top keeps each group in one part of its split
    /// and --bootstrap draws groups. A one-hot CSV (ISIC's ground truth: a column per class
    /// holding 1 or 0) names its class columns joined by '+' as LABEL (image,MEL+NV+BCC+...): each
    /// image is of the one whose cell is 1, and the classes keep that order. Without this option,
    /// columns path and label, and a column named group where there is one.
    #[arg(long, value_name = "PATH,LABEL[,GROUP]", value_parser = parse_columns)]
    pub csv_columns: Option<ColumnNames>,
    /// With a CSV: the folder its relative paths are under (by default the CSV's own).
    #[arg(long, value_name = "DIR")]
    pub images_root: Option<PathBuf>,
    /// With a folder: the subfolder under each class folder is a group (a patient, a slide:
    /// CLASS/<patient>/<image>), one name under two classes one group; --finetune-top keeps each
    /// group in one part of its split and --bootstrap draws groups. LEVEL picks a deeper one
    /// (BreakHis's CLASS/SOB/<type>/<patient>/<magnification>/: 3).
    #[arg(long, value_name = "LEVEL", num_args = 0..=1, default_missing_value = "1", value_parser = clap::value_parser!(u16).range(1..))]
    pub group_by_subfolder: Option<u16>,
    /// Each DICOM file's Patient ID (0010,0020) is its group, read from its header: one patient's
    /// images stay in one part of --finetune-top's split whatever folders they sit in, and
    /// --bootstrap draws patients. Images without one (not DICOM, or the ID blank) are each their
    /// own group. Without any grouping, each DICOM series stored a file a slice is a group.
    #[arg(long, conflicts_with = "group_by_subfolder")]
    pub group_by_dicom_patient: bool,
    /// Of a DICOM file of several frames (an ultrasound or angiography cine loop, an enhanced CT
    /// or MR volume) or a NIfTI volume of several slices (--slice), the frame to read: first,
    /// middle (frame n/2 + 1 of n, rounded down: the middle one of an odd count), last, or N
    /// (counted from 1, as DICOM counts them); its rescale and window as the file gives that
    /// frame. Or `all` (every:K): each frame (every K-th from the first) an image of its own with
    /// the file's class, the file their group (its frames in one part of --finetune-top's split,
    /// drawn together by --bootstrap). By default (only) such a file is refused: which frame shows
    /// the finding is the user's call. A DICOM series stored a file a slice (a folder's files
    /// sharing a Series Instance UID, ordered along their normal) is such a volume, its files its
    /// frames: the slices chosen of each series are kept, the others left out (with only, all of
    /// them). `predict` reads new files' frames as the ranking read these.
    #[arg(long, visible_alias = "slice", value_name = "FRAME", default_value = "only")]
    pub dicom_frame: medxfer_data::FrameSelection,
    /// A display window of your own for grayscale images, CENTER,WIDTH in their rescaled values
    /// (CT in Hounsfield units: brain 40,80, soft tissue 50,350, lung -600,1500), applied as
    /// DICOM's LINEAR window: in place of a DICOM file's window or VOI LUT table and a NIfTI
    /// volume's display range or min-max (MONOCHROME1 still inverted; colour images as they are).
    /// A grayscale PNG, TIFF, BMP or JPEG is windowed on its stored values, in place of its high
    /// byte (12-bit radiographs exported to 16 bits: 2048,4096 spans them). Or three windows
    /// joined by `+` for the red, green and blue channels, each channel what its window shows
    /// (CT's brain, subdural and bone windows: 40,80+80,200+600,2800). `predict` reads new
    /// images through it too.
    #[arg(long, value_name = "CENTER,WIDTH", allow_hyphen_values = true)]
    pub window: Option<medxfer_data::Window>,
    /// A NIfTI volume's axes: stored (slices along the third stored axis, in whatever plane the
    /// volume was acquired), or canonical: nibabel's as_closest_canonical, the axes permuted and
    /// flipped to run towards the patient's right, front and head (RAS+), so every volume's
    /// slices are axial, the front up (a folder of sagittal, coronal and axial acquisitions read
    /// alike). DICOM files are read as stored. `predict` reads new volumes so too.
    #[arg(long, value_name = "ORIENTATION", default_value = "stored")]
    pub reorient: medxfer_data::Orientation,
    /// Of a 4-D NIfTI file (the Medical Segmentation Decathlon's brain tumour and prostate files:
    /// a volume a modality; diffusion's b-values; a time series), the volume read, counted from 1
    /// as nibabel's `get_fdata()[..., N - 1]` (a 3-D file is its own volume 1); or three joined
    /// by `+` for the red, green and blue channels, each channel the gray image of its volume
    /// (1+3+4: FLAIR, T1 with contrast and T2 of a Decathlon brain, as BraTS entries fed ImageNet
    /// backbones). Without it such a file is refused. `predict` reads new files' so.
    #[arg(long, value_name = "N")]
    pub volume: Option<medxfer_data::Volumes>,
    /// 2.5-D images: each frame of a NIfTI volume or a DICOM file of several (the one --slice or
    /// --dicom-frame chooses, or each with all) made of three, the frame before in red, itself in
    /// green and the one after in blue (the first and last repeat themselves at the ends), each
    /// rendered gray as alone (one window): a little of the third dimension for 2-D backbones.
    /// A slice of a DICOM series stored a file a slice has the series' slices either side of it
    /// (in its stack, where the series is several); an enhanced DICOM file's frames are neighbours
    /// by their positions. Other images are read as they are (a colour one refused). `predict`
    /// reads new files so.
    #[arg(long)]
    pub adjacent_slices: bool,
    /// Only the DICOM files whose header meets every condition (the option repeated) are images:
    /// FIELD=PATTERN, or FIELD!=PATTERN for those whose field does not match (or that lack it);
    /// FIELD a keyword of the DICOM dictionary (SeriesDescription, Modality, ImageType,
    /// BodyPartExamined, ProtocolName) or a tag ((0008,103E)), PATTERN matching its whole text in
    /// any case, * any run of characters and ? one (ImageType's values joined by \). A PACS export
    /// holds every series of a study: SeriesDescription=*FLAIR* keeps the FLAIR series,
    /// ImageType!=*LOCALIZER* leaves the localizers out. Files that are not DICOM are left out.
    /// stderr says how many were kept and each field's most common values both ways. `predict`
    /// keeps new images so.
    #[arg(long, value_name = "FIELD=PATTERN")]
    pub dicom_where: Vec<medxfer_data::DicomCondition>,
}

/// The path, label and optional group columns' names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnNames(Vec<String>);

/// Two or three column names, none empty (nor any of a one-hot label's).
fn parse_columns(text: &str) -> std::result::Result<ColumnNames, String> {
    let names: Vec<String> = text.split(',').map(|name| name.trim().to_string()).collect();
    if !(2..=3).contains(&names.len()) || names.iter().any(String::is_empty) {
        return Err(format!("{text:?}: expected the path and label columns' names and optionally the group's, as PATH,LABEL[,GROUP]"));
    }
    let one_hot: Vec<&str> = names[1].split('+').map(str::trim).collect();
    if one_hot.len() > 1 && one_hot.iter().any(|name| name.is_empty()) {
        return Err(format!("{text:?}: a one-hot label names each class's column, joined by '+' (image,MEL+NV+BCC)"));
    }
    Ok(ColumnNames(names))
}

impl ImagesReading {
    /// For ranking.md: how frames were chosen and images rendered where not as the files give
    /// them (the frame, the window, the orientation, 2.5-D), so that the table says what images
    /// it ranks on; empty where each file was read as it is.
    pub fn reading_note(&self) -> String {
        let mut read = Vec::new();
        if self.dicom_frame != medxfer_data::FrameSelection::default() {
            read.push(format!("frame or slice {} of each file of several (--slice)", self.dicom_frame));
        }
        match self.window {
            Some(window) if !window.is_gray() => read.push(format!("one window a colour channel, red, green and blue {window} (--window)")),
            Some(window) => read.push(format!("the window {window} (--window)")),
            None => {}
        }
        if self.reorient != medxfer_data::Orientation::Stored {
            read.push(format!("NIfTI volumes reoriented {} (RAS+, --reorient)", self.reorient));
        }
        match self.volume {
            Some(medxfer_data::Volumes::Channels([red, green, blue])) => {
                read.push(format!("volumes {red}, {green} and {blue} of each 4-D NIfTI file as red, green and blue (--volume)"));
            }
            Some(volume) => read.push(format!("volume {volume} of each 4-D NIfTI file (--volume)")),
            None => {}
        }
        if self.adjacent_slices {
            read.push("2.5-D, each frame's red the frame before and its blue the one after (--adjacent-slices)".to_string());
        }
        if !self.dicom_where.is_empty() {
            let written: Vec<String> = self.dicom_where.iter().map(ToString::to_string).collect();
            read.push(format!("only the DICOM files whose header meets {} (--dicom-where)", written.join(" and ")));
        }
        if read.is_empty() { String::new() } else { format!("\nImages read with {}.\n", read.join("; ")) }
    }

    /// How the images are rendered: the window and a volume's orientation asked for.
    pub fn rendering(&self) -> medxfer_data::Rendering {
        medxfer_data::Rendering {
            window: self.window,
            orientation: self.reorient,
            volume: self.volume,
            adjacent_slices: self.adjacent_slices,
        }
    }

    fn names(&self) -> (&str, &str, Option<&str>) {
        match self.csv_columns.as_ref().map(|names| names.0.as_slice()) {
            Some([path, label]) => (path, label, None),
            Some([path, label, group]) => (path, label, Some(group)),
            _ => ("path", "label", None),
        }
    }

    fn csv_given(&self) -> bool {
        self.csv_columns.is_some() || self.images_root.is_some()
    }
}

/// Labelled images: records (paths relative to `root`) and the class names in label order.
#[derive(Debug, Clone)]
pub struct LabelledImages {
    pub root: PathBuf,
    pub records: Vec<Record>,
    pub classes: Vec<String>,
    /// What groups the images (a patient, a lesion, a slide), for the reader: a CSV's column
    /// (--csv-columns' third, or one named `group`: a study's split manifest, rank's
    /// finetune_split.csv) or a folder's subfolders (--group-by-subfolder).
    pub grouped_by: Option<String>,
    /// Images without a group (an empty cell: ISIC's metadata leaves lesion_id empty for a part
    /// of its images, as the dataset reader does; an image right in its class folder), each a
    /// group of its own.
    pub ungrouped: usize,
}

impl LabelledImages {
    pub fn read(images: &Path, csv: &ImagesReading) -> Result<Self> {
        let mut found = if images.is_dir() {
            if csv.csv_given() {
                bail!("--csv-columns and --images-root read a CSV; {} is a folder of class subfolders", images.display());
            }
            from_folder(images, csv.group_by_subfolder)?
        } else if images.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
            if csv.group_by_subfolder.is_some() {
                bail!(
                    "--group-by-subfolder groups a folder's images; {} is a CSV, whose groups are a column (--csv-columns PATH,LABEL,GROUP)",
                    images.display()
                );
            }
            from_csv(images, csv)?
        } else {
            bail!("{}: not a folder of class subfolders nor a .csv file of path,label", images.display());
        };
        keep_where(&mut found, &csv.dicom_where)?;
        if csv.group_by_dicom_patient {
            if let Some(grouped_by) = &found.grouped_by {
                bail!("--group-by-dicom-patient: {} is already grouped by {grouped_by}; keep one of the two", images.display());
            }
            group_by_dicom_patient(&mut found)?;
        }
        if found.grouped_by.is_none() {
            group_by_dicom_series(&mut found);
        }
        if found.classes.is_empty() {
            bail!(
                "{}: no class subfolders; put each class's images in a subfolder named after it ({}/<class>/...), or give a CSV of path,label",
                images.display(),
                images.display()
            );
        }
        if found.classes.len() < 2 {
            bail!("{}: {} class(es) found ({:?}); ranking needs at least two", images.display(), found.classes.len(), found.classes);
        }
        Ok(found)
    }

    /// Images per class name.
    pub fn counts(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for record in &self.records {
            *counts.entry(self.classes[record.label as usize].as_str()).or_default() += 1;
        }
        counts
    }
}

/// Each image's group is its DICOM Patient ID; those without one stay their own.
/// `images` with only the records whose DICOM header meets `conditions` (`--dicom-where`); a class
/// left without any is an error naming it and the conditions.
fn keep_where(images: &mut LabelledImages, conditions: &[medxfer_data::DicomCondition]) -> Result<()> {
    if conditions.is_empty() {
        return Ok(());
    }
    let paths: Vec<String> = images.records.iter().map(|record| record.path.clone()).collect();
    let kept = super::dicom_where::kept_where(&images.root, &paths, conditions)?;
    let mut kept = kept.into_iter();
    images.records.retain(|_| kept.next().unwrap_or(false));
    let counts = images.counts();
    let empty: Vec<&String> = images.classes.iter().filter(|class| !counts.contains_key(class.as_str())).collect();
    if !empty.is_empty() {
        let written: Vec<String> = conditions.iter().map(ToString::to_string).collect();
        bail!(
            "{}: no image of class {} meets --dicom-where {} (stderr lists the values its files have); loosen the pattern",
            images.root.display(),
            empty.iter().map(|class| class.as_str()).collect::<Vec<_>>().join(", "),
            written.join(" --dicom-where ")
        );
    }
    Ok(())
}

fn group_by_dicom_patient(images: &mut LabelledImages) -> Result<()> {
    let mut ungrouped = 0;
    for record in &mut images.records {
        match medxfer_data::dicom_patient_id(&images.root.join(&record.path))? {
            Some(id) => record.group = id,
            None => ungrouped += 1,
        }
    }
    if ungrouped == images.records.len() {
        bail!(
            "{}: --group-by-dicom-patient, but no image is a DICOM file with a Patient ID (anonymised away, or not DICOM): group by folder (--group-by-subfolder) or a CSV's column, or drop the option",
            images.root.display()
        );
    }
    images.grouped_by = Some("the DICOM Patient ID of its files".into());
    images.ungrouped = ungrouped;
    Ok(())
}

/// Where no grouping was given, the files of each DICOM series of several (a series stored a file a
/// slice) are one group, its Series Instance UID, as a loop's frames are their file's: neighbouring
/// slices, nearly the same image, never sit on both sides of --finetune-top's split. Other images
/// stay their own; a header that cannot be read is left to the decoding, which names it.
fn group_by_dicom_series(images: &mut LabelledImages) {
    use rayon::prelude::*;
    let series: Vec<Option<String>> =
        images.records.par_iter().map(|record| medxfer_data::dicom_series_uid(&images.root.join(&record.path)).ok().flatten()).collect();
    let mut files: HashMap<&str, usize> = HashMap::new();
    for uid in series.iter().flatten() {
        *files.entry(uid.as_str()).or_default() += 1;
    }
    let shared: Vec<bool> = series.iter().map(|uid| uid.as_deref().is_some_and(|uid| files[uid] > 1)).collect();
    let slices = shared.iter().filter(|shared| **shared).count();
    if slices == 0 {
        return;
    }
    for ((record, uid), shared) in images.records.iter_mut().zip(series).zip(shared) {
        if let (Some(uid), true) = (uid, shared) {
            record.group = uid;
        }
    }
    images.grouped_by = Some("the DICOM series of its files (Series Instance UID)".into());
    images.ungrouped = images.records.len() - slices;
}

fn record(path: String, class: &str, label: u32) -> Record {
    Record { group: path.clone(), path, class: class.to_string(), label, origin: String::new() }
}

fn from_folder(root: &Path, group_by_subfolder: Option<u16>) -> Result<LabelledImages> {
    let mut classes: Vec<String> = std::fs::read_dir(root)
        .with_context(|| format!("cannot list {}", root.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && !medxfer_data::is_os_bookkeeping(&e.file_name()))
        .map(|e| e.file_name().into_string().map_err(|_| not_utf8(&e.path())))
        .collect::<Result<_>>()?;
    classes.sort();
    // ImageFolder's split layout (DIR/train/<class>/...) read as classes train, val and test:
    // the ranking would score how well each backbone tells the splits apart.
    const SPLIT_NAMES: [&str; 7] = ["train", "training", "val", "valid", "validation", "test", "testing"];
    if classes.len() >= 2 && classes.iter().all(|class| SPLIT_NAMES.contains(&class.to_ascii_lowercase().as_str())) {
        bail!(
            "{}: its folders are {}: the parts of a split, not classes; give the part to rank on (--images {}), whose subfolders are the classes",
            root.display(),
            classes.join(", "),
            root.join(classes.iter().find(|c| c.to_ascii_lowercase().starts_with("train")).unwrap_or(&classes[0])).display()
        );
    }
    let mut records = Vec::new();
    // Each file once, by its real path: a link to a folder or file already listed adds nothing,
    // and one file under two class folders has no label.
    let mut seen: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut passed_over = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        // The file itself before any link to it, then name order.
        let mut candidates = Vec::new();
        let (images, objects) = image_files(&root.join(class))?;
        passed_over.extend(objects);
        for file in images {
            let real = std::fs::canonicalize(&file).with_context(|| format!("cannot resolve {}", file.display()))?;
            let through_link =
                std::fs::canonicalize(file.parent().unwrap_or(root)).ok().map(|p| p.join(file.file_name().unwrap_or_default()))
                    != Some(real.clone());
            let relative = file.strip_prefix(root).unwrap_or(&file).to_str().ok_or_else(|| not_utf8(&file))?.replace('\\', "/");
            candidates.push((through_link, relative, real));
        }
        candidates.sort();
        let mut files = Vec::new();
        for (_, relative, real) in candidates {
            match seen.get(&real) {
                Some(first) if first.split('/').next() == Some(class.as_str()) => continue,
                Some(first) => bail!(
                    "{}: the same file is listed as {first} and as {relative} (a link?), so it has two classes; keep it in one class folder",
                    real.display()
                ),
                None => {
                    seen.insert(real, relative.clone());
                    files.push(relative);
                }
            }
        }
        files.sort();
        if files.is_empty() {
            bail!("{}: no images ({}) in this class folder", root.join(class).display(), medxfer_data::IMAGE_EXTENSIONS.join(", "));
        }
        records.extend(files.into_iter().map(|path| record(path, class, label as u32)));
    }
    say_passed_over(root, &passed_over);
    let mut ungrouped = 0;
    if let Some(level) = group_by_subfolder.map(usize::from) {
        // CLASS/<level 1>/.../<group>/.../<image>: the group by its name alone, so that a slide's
        // tiles under two classes are one slide; an image less deep is its own.
        for record in &mut records {
            let parts: Vec<&str> = record.path.split('/').collect();
            match parts.get(level) {
                Some(group) if level + 1 < parts.len() => record.group = (*group).to_string(),
                _ => ungrouped += 1,
            }
        }
        if ungrouped == records.len() {
            bail!(
                "{}: --group-by-subfolder {level}, but no image is in a subfolder that deep under its class folder (CLASS/<level 1>/.../<image>): \
                 give the level of the patient's folder, or drop the option",
                root.display()
            );
        }
    }
    let grouped_by = group_by_subfolder.map(|level| match level {
        1 => "the subfolders of its class folders".to_string(),
        level => format!("the subfolders {level} levels under its class folders"),
    });
    Ok(LabelledImages { root: root.to_path_buf(), records, classes, grouped_by, ungrouped })
}

/// A file or class folder whose name is not UTF-8 (a Latin-1 name from an old archive): the
/// cached features' lists and ranking.csv are text, where its name would stand for another file
/// (it was read as "No such file or directory", seen).
fn not_utf8(path: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: its name is not valid UTF-8 (shown here with \u{FFFD}), which the rank cache's lists cannot hold; rename it",
        path.display()
    )
}

/// The files under `dir`, links followed, in name order; the OS's bookkeeping skipped (hidden
/// entries, `__MACOSX/`). A link back to
/// a folder above it (a loop) is skipped with a warning instead of being walked again and again.
/// Removes the decoded images named `name` (`<name>-s<resize>-<checksum>.json`/`.rgb8`) from a
/// ranking's cache folder but the set `kept` (its key): each set of images ranked or predicted
/// into the same OUT would otherwise leave its caches for good (about 0.2 MB an image at the
/// study's 256 px). Another process's cache still open stays readable (its file handle outlives
/// the name); a file that cannot be removed is left with a warning.
pub fn prune_caches(cache_dir: &Path, name: &str, kept: &str) {
    let Ok(listing) = std::fs::read_dir(cache_dir) else { return };
    let prefix = format!("{name}-");
    for path in listing.filter_map(|entry| entry.ok().map(|e| e.path())) {
        let (Some(stem), Some(extension)) = (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|e| e.to_str())) else {
            continue;
        };
        // Temporary files of a cache being written start with '.', never with the prefix.
        if stem.starts_with(&prefix)
            && stem != kept
            && matches!(extension, "json" | "rgb8")
            && let Err(error) = std::fs::remove_file(&path)
        {
            eprintln!("warning: cannot remove an earlier image set's cache {}: {error}", path.display());
        }
    }
}

/// The image files under `dir` (at any depth, as [`walk`] lists them), and apart the DICOM objects
/// among them that hold no image to classify (reports, presentation states, key objects,
/// segmentations: an export puts them beside the images).
pub fn image_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    use rayon::prelude::*;
    let files: Vec<PathBuf> = walk(dir)?.into_iter().filter(|file| medxfer_data::is_image_file(file)).collect();
    let no_image: Vec<bool> = files.par_iter().map(|file| medxfer_data::holds_no_image(file)).collect();
    let (objects, images): (Vec<_>, Vec<_>) = files.into_iter().zip(no_image).partition(|(_, no_image)| *no_image);
    Ok((images.into_iter().map(|(file, _)| file).collect(), objects.into_iter().map(|(file, _)| file).collect()))
}

/// Says on stderr how many DICOM objects without an image under `root` were passed over,
/// naming a few.
pub fn say_passed_over(root: &Path, objects: &[PathBuf]) {
    if objects.is_empty() {
        return;
    }
    let named: Vec<String> = objects.iter().take(5).map(|file| file.strip_prefix(root).unwrap_or(file).display().to_string()).collect();
    eprintln!(
        "{}: {} DICOM file(s) hold no image to classify (no Pixel Data: reports, presentation states, key objects; or masks and dose \
         grids: segmentations, RT doses) and are passed over, e.g. {}",
        root.display(),
        objects.len(),
        named.join(", ")
    );
}

pub fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let entries = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !medxfer_data::is_os_bookkeeping(e.file_name()));
    for entry in entries {
        match entry {
            Ok(entry) if entry.file_type().is_file() => files.push(entry.into_path()),
            Ok(_) => {}
            Err(e) if e.loop_ancestor().is_some() => {
                eprintln!(
                    "warning: {}: a link back to {}; not followed",
                    e.path().map_or(String::new(), |p| p.display().to_string()),
                    e.loop_ancestor().map_or(String::new(), |p| p.display().to_string())
                );
            }
            Err(e) => {
                let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| dir.to_path_buf());
                return Err(anyhow::Error::new(e).context(format!("cannot list {}", path.display())));
            }
        }
    }
    Ok(files)
}

/// `path` under `root`; written with Windows' separators (a CSV saved on Windows), with '/';
/// or where it names an image id without an extension (HAM10000's `image_id`, ISIC's
/// `image`), the one image file of that name.
pub fn resolve(root: &Path, path: &str) -> Option<String> {
    if root.join(path).is_file() {
        return Some(path.to_string());
    }
    if path.contains('\\') {
        return resolve(root, &path.replace('\\', "/"));
    }
    if Path::new(path).extension().is_some() {
        return None;
    }
    let found: Vec<String> = medxfer_data::IMAGE_EXTENSIONS
        .iter()
        .flat_map(|extension| [extension.to_string(), extension.to_ascii_uppercase()])
        .map(|extension| format!("{path}.{extension}"))
        .filter(|candidate| root.join(candidate).is_file())
        .collect();
    match found.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// A CSV's label: one column, or a one-hot label's class columns (LABEL as `MEL+NV+BCC`), found
/// in its header. rank and predict read labels through it.
pub struct LabelColumns<'a> {
    /// The columns' names, in the order given (a one-hot label's classes).
    pub names: Vec<&'a str>,
    columns: Vec<usize>,
}

impl<'a> LabelColumns<'a> {
    /// `label`'s columns by `column` (a header lookup), or the names the header lacks.
    pub fn find(label: &'a str, column: impl Fn(&str) -> Option<usize>) -> std::result::Result<Self, Vec<&'a str>> {
        let names: Vec<&str> = label.split('+').map(str::trim).collect();
        match names.iter().map(|name| column(name)).collect::<Option<Vec<usize>>>() {
            Some(columns) => Ok(Self { names, columns }),
            None => Err(names.into_iter().filter(|name| column(name).is_none()).collect()),
        }
    }

    pub fn is_one_hot(&self) -> bool {
        self.columns.len() > 1
    }

    /// A row's class: its label cell, trimmed (a spreadsheet's stray spaces, "mel " beside
    /// "mel", made a class of their own), or of a one-hot row the column whose cell is 1 (as
    /// ISIC writes it, 1.0), every other 0.
    pub fn of(&self, row: &csv::StringRecord) -> Result<String> {
        if let [column] = self.columns.as_slice() {
            return Ok(row.get(*column).unwrap_or("").trim().to_string());
        }
        let mut ones = Vec::new();
        for (&column, &name) in self.columns.iter().zip(&self.names) {
            let cell = row.get(column).unwrap_or("").trim();
            match cell.parse::<f64>() {
                Ok(1.0) => ones.push(name),
                Ok(0.0) => {}
                _ => bail!("{name} holds {cell:?}; a one-hot label's columns hold 1 for the image's class and 0 for the others"),
            }
        }
        match ones.as_slice() {
            [one] => Ok(one.to_string()),
            [] => bail!("no class column ({}) holds 1; give each image its class, or leave the row out", self.names.join(", ")),
            several => bail!("{} each hold 1; a one-hot label gives each image one class", several.join(" and ")),
        }
    }
}

/// Where a CSV's relative paths were looked for, for a path that is not there.
fn where_hint(columns: &ImagesReading) -> &'static str {
    if columns.images_root.is_some() { "" } else { " (relative paths are under the CSV's folder; --images-root names another)" }
}

fn from_csv(csv_path: &Path, columns: &ImagesReading) -> Result<LabelledImages> {
    let root = match &columns.images_root {
        Some(root) if !root.is_dir() => bail!("--images-root {}: no such folder", root.display()),
        Some(root) => root.clone(),
        None => csv_path.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let mut reader = csv::Reader::from_path(csv_path).with_context(|| format!("cannot read {}", csv_path.display()))?;
    let header_record = reader.headers()?.clone();
    let header: Vec<String> = header_record.iter().map(str::to_string).collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    let (path_name, label_name, group_name) = columns.names();
    // A manifest's own group column (path,label,group,split) is read as such unasked.
    let group_name = group_name.or_else(|| (columns.csv_columns.is_none() && column("group").is_some()).then_some("group"));
    let group_column = match group_name {
        Some(name) => Some(column(name).with_context(|| {
            format!("{}: no column {name:?} (--csv-columns' group) in the header `{}`", csv_path.display(), header.join(","))
        })?),
        None => None,
    };
    let labels = LabelColumns::find(label_name, column);
    let (Some(path_column), Ok(labels)) = (column(path_name), &labels) else {
        // Of a one-hot label's many columns, which are missing.
        let missing: Vec<&str> =
            column(path_name).is_none().then_some(path_name).into_iter().chain(labels.err().unwrap_or_default()).collect();
        bail!(
            "{}: the header is `{}`; expected columns {path_name} and {label_name}{}{}{}",
            csv_path.display(),
            header.join(","),
            if label_name.contains('+') { format!(" ({} missing)", missing.join(", ")) } else { String::new() },
            if columns.csv_columns.is_none() { " (or name yours with --csv-columns PATH,LABEL)" } else { "" },
            crate::results::separator_hint(&header_record)
        );
    };
    let mut rows = Vec::new();
    // Each file once: listed twice it would be counted twice, and could land in train and test.
    let mut lines: BTreeMap<PathBuf, usize> = BTreeMap::new();
    let mut ungrouped = 0;
    for (line, row) in reader.records().enumerate() {
        let line = line + 2;
        let row = row.with_context(|| format!("{}: line {line}", csv_path.display()))?;
        let path = row.get(path_column).unwrap_or("");
        let label = labels.of(&row).with_context(|| format!("{}: line {line}", csv_path.display()))?;
        if path.trim().is_empty() || label.is_empty() {
            bail!("{}: line {line}: empty path or label", csv_path.display());
        }
        let Some(path) = resolve(&root, path).or_else(|| resolve(&root, path.trim())) else {
            bail!("{}: line {line}: {} does not exist{}", csv_path.display(), root.join(path).display(), where_hint(columns));
        };
        let real = std::fs::canonicalize(root.join(&path)).with_context(|| format!("cannot resolve {}", root.join(&path).display()))?;
        if let Some(first) = lines.insert(real, line) {
            bail!("{}: line {line}: {path} is listed already on line {first}; list each image once", csv_path.display());
        }
        let group = match group_column.map(|column| row.get(column).unwrap_or("").trim()) {
            Some("") => {
                ungrouped += 1;
                path.clone()
            }
            Some(group) => group.to_string(),
            None => path.clone(),
        };
        rows.push((path, label, group));
    }
    // Integer labels in numeric order when every label is one; names (or a mix) sorted as text.
    // (A comparison that mixed the two would not be an order: 9 < 10 < "1a" < 9.) One-hot
    // classes in the columns' order, those no image has left out (ISIC 2019's UNK), said.
    let mut classes: Vec<String> = rows.iter().map(|(_, l, _)| l.clone()).collect();
    if labels.is_one_hot() {
        let (present, absent): (Vec<&str>, Vec<&str>) = labels.names.iter().partition(|name| classes.iter().any(|c| c == *name));
        if !absent.is_empty() {
            eprintln!("{}: no image is of {}; left out of the classes", csv_path.display(), absent.join(", "));
        }
        classes = present.into_iter().map(str::to_string).collect();
    } else if classes.iter().all(|l| l.parse::<i64>().is_ok()) {
        classes.sort_by_key(|l| l.parse::<i64>().unwrap_or_default());
        classes.dedup();
    } else {
        classes.sort();
        classes.dedup();
    }
    let records = rows
        .into_iter()
        .map(|(path, label, group)| {
            let index = classes.iter().position(|c| *c == label).unwrap_or(0);
            Record { group, ..record(path, &label, index as u32) }
        })
        .collect();
    let grouped_by = group_name.map(|name| format!("its {name:?} column"));
    Ok(LabelledImages { root, records, classes, grouped_by, ungrouped })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn png(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::new(4, 4).save(path).unwrap();
    }

    #[test]
    fn the_reading_note_says_each_choice_that_is_not_the_files_own() {
        assert_eq!(ImagesReading::default().reading_note(), "");
        let reading =
            ImagesReading { window: Some("40,80+80,200+600,2800".parse().unwrap()), adjacent_slices: true, ..ImagesReading::default() };
        assert_eq!(
            reading.reading_note(),
            "\nImages read with one window a colour channel, red, green and blue 40,80+80,200+600,2800 (--window); 2.5-D, each \
             frame's red the frame before and its blue the one after (--adjacent-slices).\n"
        );
        let one = ImagesReading { window: Some("-600,1500".parse().unwrap()), ..ImagesReading::default() };
        assert_eq!(one.reading_note(), "\nImages read with the window -600,1500 (--window).\n");
    }

    /// ISIC's one-hot ground truth (image ids without extension, a column per class holding 1.0
    /// or 0.0, UNK held by none): each image is of its column holding 1, the classes in the
    /// columns' order, UNK left out; a row with two classes, none, or another value is refused
    /// naming the line, and so is a class column the header lacks.
    #[test]
    fn a_one_hot_csv_gives_each_image_the_class_whose_column_holds_one() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000003"] {
            png(&dir.path().join(format!("{name}.png")));
        }
        let csv = dir.path().join("ISIC_2019_Training_GroundTruth.csv");
        let header = "image,MEL,NV,BCC,UNK\n";
        let rows =
            "ISIC_0000000,0.0,1.0,0.0,0.0\nISIC_0000001,1.0,0.0,0.0,0.0\nISIC_0000002,0.0,0.0,1.0,0.0\nISIC_0000003,0.0,1.0,0.0,0.0\n";
        std::fs::write(&csv, format!("{header}{rows}")).unwrap();
        let columns = ImagesReading { csv_columns: Some(parse_columns("image,NV+MEL+BCC+UNK").unwrap()), ..ImagesReading::default() };
        let images = LabelledImages::read(&csv, &columns).unwrap();
        assert_eq!(images.classes, ["NV", "MEL", "BCC"]);
        let read: Vec<(&str, &str, u32)> = images.records.iter().map(|r| (r.path.as_str(), r.class.as_str(), r.label)).collect();
        assert_eq!(
            read,
            [("ISIC_0000000.png", "NV", 0), ("ISIC_0000001.png", "MEL", 1), ("ISIC_0000002.png", "BCC", 2), ("ISIC_0000003.png", "NV", 0)]
        );
        for (bad_row, said) in [
            ("ISIC_0000002,1.0,0.0,1.0,0.0", "line 4: MEL and BCC each hold 1"),
            ("ISIC_0000002,0.0,0.0,0.0,0.0", "line 4: no class column (NV, MEL, BCC, UNK) holds 1"),
            ("ISIC_0000002,0.0,0.5,0.5,0.0", "line 4: NV holds \"0.5\""),
        ] {
            let edited = rows.replace("ISIC_0000002,0.0,0.0,1.0,0.0", bad_row);
            std::fs::write(&csv, format!("{header}{edited}")).unwrap();
            let error = format!("{:#}", LabelledImages::read(&csv, &columns).unwrap_err());
            assert!(error.contains(said), "{error}");
        }
        std::fs::write(&csv, format!("{header}{rows}")).unwrap();
        let columns = ImagesReading { csv_columns: Some(parse_columns("image,MEL+NV+SCC").unwrap()), ..ImagesReading::default() };
        let error = LabelledImages::read(&csv, &columns).unwrap_err().to_string();
        assert!(error.contains("the header is `image,MEL,NV,BCC,UNK`; expected columns image and MEL+NV+SCC (SCC missing)"), "{error}");
        assert!(parse_columns("image,MEL+").is_err() && parse_columns("image,MEL+NV").is_ok());
    }

    /// A group column is read as given, or unasked when named `group`; an empty cell (ISIC's
    /// images without a lesion_id) makes the image a group of its own, counted.
    #[test]
    fn groups_are_read_and_an_image_without_one_is_its_own() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c", "d"] {
            png(&dir.path().join(format!("{name}.png")));
        }
        let csv = dir.path().join("metadata.csv");
        std::fs::write(&csv, "image,dx,lesion_id\na.png,mel,L1\nb.png,mel,L1\nc.png,nv,\nd.png,nv, \n").unwrap();
        let columns = ImagesReading { csv_columns: Some(parse_columns("image,dx,lesion_id").unwrap()), ..ImagesReading::default() };
        let images = LabelledImages::read(&csv, &columns).unwrap();
        let groups: Vec<&str> = images.records.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(groups, ["L1", "L1", "c.png", "d.png"]);
        assert_eq!((images.grouped_by.as_deref(), images.ungrouped), (Some("its \"lesion_id\" column"), 2));
        // Named `group`, it is taken without --csv-columns; a CSV without one has none.
        std::fs::write(&csv, "path,label,group,split\na.png,0,p1,train\nb.png,0,p1,train\nc.png,1,p2,train\n").unwrap();
        let images = LabelledImages::read(&csv, &ImagesReading::default()).unwrap();
        assert_eq!(images.records.iter().map(|r| r.group.as_str()).collect::<Vec<_>>(), ["p1", "p1", "p2"]);
        assert_eq!((images.grouped_by.as_deref(), images.ungrouped), (Some("its \"group\" column"), 0));
        std::fs::write(&csv, "path,label\na.png,0\nc.png,1\n").unwrap();
        let images = LabelledImages::read(&csv, &ImagesReading::default()).unwrap();
        assert_eq!((images.grouped_by, images.records[0].group.as_str()), (None, "a.png"));
    }

    /// --group-by-dicom-patient: each DICOM file's Patient ID is its group, across classes and
    /// folders; a PNG or a DICOM file without an ID is its own group, counted; a folder without
    /// any ID, or a CSV already grouped, is refused.
    #[test]
    fn dicom_files_are_grouped_by_their_patient_id() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("scans");
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/data/tests/fixtures/dicom");
        // The fixture's patient, and another by its ID's bytes replaced (the same length).
        let tj42 = std::fs::read(fixtures.join("ct_window.dcm")).unwrap();
        let at = tj42.windows(7).position(|w| w == b"TJ-0042").unwrap();
        let mut tj43 = tj42.clone();
        tj43[at..at + 7].copy_from_slice(b"TJ-0043");
        let anonymous = std::fs::read(fixtures.join("mr_12bit_minmax.dcm")).unwrap();
        for (file, bytes) in
            [("tumour/series 1/IM000001", &tj42), ("tumour/x.dcm", &tj43), ("normal/study/1.2.840.5", &tj42), ("normal/y.dcm", &anonymous)]
        {
            std::fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
            std::fs::write(root.join(file), bytes).unwrap();
        }
        png(&root.join("normal/z.png"));
        let by_patient = ImagesReading { group_by_dicom_patient: true, ..ImagesReading::default() };
        let images = LabelledImages::read(&root, &by_patient).unwrap();
        let groups: Vec<(&str, &str)> = images.records.iter().map(|r| (r.path.as_str(), r.group.as_str())).collect();
        assert_eq!(
            groups,
            [
                ("normal/study/1.2.840.5", "TJ-0042"),
                ("normal/y.dcm", "normal/y.dcm"),
                ("normal/z.png", "normal/z.png"),
                ("tumour/series 1/IM000001", "TJ-0042"),
                ("tumour/x.dcm", "TJ-0043"),
            ]
        );
        assert_eq!((images.grouped_by.as_deref(), images.ungrouped), (Some("the DICOM Patient ID of its files"), 2));
        for file in ["tumour/series 1/IM000001", "tumour/x.dcm", "normal/study/1.2.840.5"] {
            std::fs::remove_file(root.join(file)).unwrap();
        }
        png(&root.join("tumour/w.png"));
        let error = LabelledImages::read(&root, &by_patient).unwrap_err().to_string();
        assert!(error.contains("no image is a DICOM file with a Patient ID"), "{error}");
        let csv = dir.path().join("split.csv");
        std::fs::write(
            &csv,
            "path,label,group
scans/normal/y.dcm,0,p1
scans/tumour/w.png,1,p2
",
        )
        .unwrap();
        let error = LabelledImages::read(&csv, &by_patient).unwrap_err().to_string();
        assert!(error.contains("already grouped by its \"group\" column"), "{error}");
    }

    /// --group-by-subfolder: the folder under each class folder is the group, by its name (a
    /// slide's tiles under two classes one slide); an image right in its class folder is its own
    /// group, counted; with no subfolder at all, or with a CSV, the option is refused.
    #[test]
    fn a_folder_s_subfolders_group_its_images() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tiles");
        for file in ["tumor/slide1/a.png", "tumor/slide1/b.png", "tumor/slide2/x/c.png", "normal/slide1/d.png", "normal/e.png"] {
            png(&root.join(file));
        }
        let by_subfolder = ImagesReading { group_by_subfolder: Some(1), ..ImagesReading::default() };
        let images = LabelledImages::read(&root, &by_subfolder).unwrap();
        let groups: Vec<(&str, &str)> = images.records.iter().map(|r| (r.path.as_str(), r.group.as_str())).collect();
        assert_eq!(
            groups,
            [
                ("normal/e.png", "normal/e.png"),
                ("normal/slide1/d.png", "slide1"),
                ("tumor/slide1/a.png", "slide1"),
                ("tumor/slide1/b.png", "slide1"),
                ("tumor/slide2/x/c.png", "slide2")
            ]
        );
        assert_eq!((images.grouped_by.as_deref(), images.ungrouped), (Some("the subfolders of its class folders"), 1));
        // Without the option, each image is its own group.
        let images = LabelledImages::read(&root, &ImagesReading::default()).unwrap();
        assert!(images.records.iter().all(|r| r.group == r.path) && images.grouped_by.is_none());
        let flat = dir.path().join("flat");
        for file in ["tumor/a.png", "normal/b.png"] {
            png(&flat.join(file));
        }
        let error = LabelledImages::read(&flat, &by_subfolder).unwrap_err().to_string();
        assert!(
            error.contains("--group-by-subfolder 1, but no image is in a subfolder that deep") && error.contains("drop the option"),
            "{error}"
        );
        // A deeper level: BreakHis's CLASS/SOB/<type>/<patient>/<magnification>/<image>.
        let breakhis = dir.path().join("breakhis");
        for file in ["benign/SOB/adenosis/P1/100X/a.png", "benign/SOB/adenosis/P1/40X/b.png", "malignant/SOB/ductal/P2/40X/c.png"] {
            png(&breakhis.join(file));
        }
        let images = LabelledImages::read(&breakhis, &ImagesReading { group_by_subfolder: Some(3), ..ImagesReading::default() }).unwrap();
        assert_eq!(images.records.iter().map(|r| r.group.as_str()).collect::<Vec<_>>(), ["P1", "P1", "P2"]);
        assert_eq!(images.grouped_by.as_deref(), Some("the subfolders 3 levels under its class folders"));
        let error =
            LabelledImages::read(&breakhis, &ImagesReading { group_by_subfolder: Some(5), ..ImagesReading::default() }).unwrap_err();
        assert!(error.to_string().contains("--group-by-subfolder 5, but no image"), "{error}");
        let csv = dir.path().join("list.csv");
        std::fs::write(&csv, "path,label\nflat/tumor/a.png,1\nflat/normal/b.png,0\n").unwrap();
        let error = LabelledImages::read(&csv, &by_subfolder).unwrap_err().to_string();
        assert!(error.contains("is a CSV, whose groups are a column (--csv-columns PATH,LABEL,GROUP)"), "{error}");
    }

    /// A file or class folder whose name is not UTF-8 is refused naming it and the fix; the file
    /// was listed under a name that opened nothing ("No such file or directory", seen).
    #[test]
    fn a_name_that_is_not_utf8_is_refused_with_the_fix() {
        use std::os::unix::ffi::OsStrExt;
        let latin1 = |name: &[u8]| std::ffi::OsStr::from_bytes(name).to_os_string();
        let (file, class) = (Path::new("benign").join(latin1(b"caf\xe9.png")), PathBuf::from(latin1(b"b\xe9nin")));
        // (the image added, the name the error gives)
        for (odd, named) in [(file.clone(), file), (class.join("a.png"), class)] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("images");
            for file in [Path::new("benign/a.png"), Path::new("malignant/c.png"), &odd] {
                png(&root.join(file));
            }
            let error = format!("{:#}", LabelledImages::read(&root, &ImagesReading::default()).unwrap_err());
            assert!(error.contains(&root.join(named).display().to_string()), "{error}");
            assert!(error.contains("not valid UTF-8") && error.contains("rename it"), "{error}");
        }
    }

    /// A PACS export's reports and presentation states (DICOM objects without Pixel Data, named
    /// .dcm or without extension) beside the images are passed over, not read as images.
    #[test]
    fn a_dicom_object_without_an_image_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        for file in ["benign/a.png", "malignant/c.png"] {
            png(&root.join(file));
        }
        let report = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/data/tests/fixtures/dicom/no_pixels.dcm");
        for file in ["benign/report.dcm", "malignant/IM000009"] {
            std::fs::copy(&report, root.join(file)).unwrap();
        }
        let images = LabelledImages::read(&root, &ImagesReading::default()).unwrap();
        let paths: Vec<&str> = images.records.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["benign/a.png", "malignant/c.png"]);
        let (images, objects) = image_files(&root).unwrap();
        assert_eq!((images.len(), objects), (2, vec![root.join("benign/report.dcm"), root.join("malignant/IM000009")]));
    }

    /// A folder unzipped from a Mac's archive: its `__MACOSX/` is no class (it was one, of
    /// undecodable AppleDouble files), nor are the `._NAME` files beside the images.
    #[test]
    fn a_mac_archive_s_bookkeeping_is_no_class_and_no_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        for file in ["benign/a.png", "malignant/c.png"] {
            png(&root.join(file));
        }
        for file in ["__MACOSX/benign/._a.png", "benign/._a.png", "malignant/.DS_Store"] {
            std::fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
            std::fs::write(root.join(file), b"\x00\x05\x16\x07").unwrap();
        }
        let images = LabelledImages::read(&root, &ImagesReading::default()).unwrap();
        assert_eq!(images.classes, ["benign", "malignant"]);
        let paths: Vec<&str> = images.records.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["benign/a.png", "malignant/c.png"]);
    }

    #[test]
    fn a_folder_and_a_csv_give_the_same_labels_and_bad_input_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        for file in ["benign/a.png", "benign/sub/b.PNG", "malignant/c.png", "malignant/notes.txt", ".hidden/d.png"] {
            if file.ends_with(".txt") {
                std::fs::write(root.join(file), "x").unwrap();
            } else {
                png(&root.join(file));
            }
        }
        let folder = LabelledImages::read(&root, &ImagesReading::default()).unwrap();
        assert_eq!(folder.classes, ["benign", "malignant"]);
        // A split's layout is not taken for classes.
        let split = dir.path().join("split");
        for file in ["train/benign/a.png", "train/malignant/b.png", "Val/benign/c.png", "Val/malignant/d.png"] {
            png(&split.join(file));
        }
        let error = LabelledImages::read(&split, &ImagesReading::default()).unwrap_err().to_string();
        assert!(error.contains("its folders are Val, train: the parts of a split, not classes"), "{error}");
        assert!(error.contains(&format!("--images {}", split.join("train").display())), "{error}");
        assert_eq!(LabelledImages::read(&split.join("train"), &ImagesReading::default()).unwrap().classes, ["benign", "malignant"]);
        let paths: Vec<(&str, u32)> = folder.records.iter().map(|r| (r.path.as_str(), r.label)).collect();
        assert_eq!(paths, [("benign/a.png", 0), ("benign/sub/b.PNG", 0), ("malignant/c.png", 1)]);

        let csv = root.join("labels.csv");
        std::fs::write(&csv, "path,label,site\nmalignant/c.png,10,x\nbenign/a.png,2,y\n").unwrap();
        let listed = LabelledImages::read(&csv, &ImagesReading::default()).unwrap();
        assert_eq!(listed.classes, ["2", "10"], "integer labels in numeric order");
        assert_eq!(listed.records[0].label, 1);

        std::fs::write(&csv, "file,class\na.png,0\n").unwrap();
        assert!(
            format!("{:#}", LabelledImages::read(&csv, &ImagesReading::default()).unwrap_err()).contains("expected columns path and label")
        );
        std::fs::write(&csv, "path,label\nbenign/missing.png,0\nmalignant/c.png,1\n").unwrap();
        assert!(
            format!("{:#}", LabelledImages::read(&csv, &ImagesReading::default()).unwrap_err()).contains("line 2: ")
                && format!("{:#}", LabelledImages::read(&csv, &ImagesReading::default()).unwrap_err())
                    .contains("missing.png does not exist")
        );
        // A spreadsheet's stray spaces around a label or a path are not part of them.
        std::fs::write(&csv, "path,label\nbenign/a.png,benign \n malignant/c.png ,malignant\nbenign/sub/b.PNG, benign\n").unwrap();
        let spaced = LabelledImages::read(&csv, &ImagesReading::default()).unwrap();
        assert_eq!(spaced.classes, ["benign", "malignant"]);
        assert_eq!(spaced.records[1].path, "malignant/c.png");
        // Saved on Windows: its separators are read as '/' (the file was "does not exist").
        std::fs::write(&csv, "path,label\r\nbenign\\sub\\b.PNG,0\r\nmalignant\\c.png,1\r\n").unwrap();
        let windows = LabelledImages::read(&csv, &ImagesReading::default()).unwrap();
        assert_eq!(windows.records.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), ["benign/sub/b.PNG", "malignant/c.png"]);
        // One image listed twice (here once through `./`) would be counted twice.
        std::fs::write(&csv, "path,label\nbenign/a.png,0\nmalignant/c.png,1\n./benign/a.png,0\n").unwrap();
        let message = format!("{:#}", LabelledImages::read(&csv, &ImagesReading::default()).unwrap_err());
        assert!(message.contains("line 4: ./benign/a.png is listed already on line 2"), "{message}");
        // Labels that are not all integers sort as text: 9, 10 and 1a compared as numbers where
        // they can be would go round in a circle (9 < 10 < 1a < 9).
        std::fs::write(&csv, "path,label\nbenign/a.png,9\nmalignant/c.png,10\nbenign/sub/b.PNG,1a\n").unwrap();
        assert_eq!(LabelledImages::read(&csv, &ImagesReading::default()).unwrap().classes, ["10", "1a", "9"]);
        std::fs::remove_dir_all(root.join("malignant")).unwrap();
        assert!(
            format!("{:#}", LabelledImages::read(&root, &ImagesReading::default()).unwrap_err()).contains("ranking needs at least two")
        );
        // Images straight in the folder: the layout is said ("0 class(es) found ([])" was).
        let flat = dir.path().join("flat");
        png(&flat.join("a.png"));
        let message = format!("{:#}", LabelledImages::read(&flat, &ImagesReading::default()).unwrap_err());
        assert!(message.contains("no class subfolders; put each class's images in a subfolder named after it"), "{message}");
    }

    #[test]
    fn mutated_label_csvs_read_or_fail_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        for file in ["benign/a.png", "benign/b.png", "malignant/c.png"] {
            png(&root.join(file));
        }
        let csv = root.join("labels.csv");
        let original = "path,label,site\nbenign/a.png,0,x\nbenign/b.png,0,y\nmalignant/c.png,1,z\n";
        let failures = medxfer_mutate::never_panics(
            800,
            4,
            |m: &mut medxfer_mutate::Mutator| m.text(original),
            |text: &String| {
                std::fs::write(&csv, text).unwrap();
                if let Err(error) = LabelledImages::read(&csv, &ImagesReading::default()) {
                    assert!(format!("{error:#}").contains("labels.csv"), "{error:#}");
                }
            },
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_loop_is_not_followed_and_each_file_is_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        for file in ["benign/a.png", "benign/b.png", "malignant/c.png", "malignant/d.png"] {
            png(&root.join(file));
        }
        // `ln -s . loop` inside a class folder, a second link to the same folder, and a link to
        // one file already listed.
        std::os::unix::fs::symlink(".", root.join("benign/loop")).unwrap();
        std::os::unix::fs::symlink(root.join("benign"), root.join("benign/again")).unwrap();
        std::os::unix::fs::symlink(root.join("malignant/c.png"), root.join("malignant/c-link.png")).unwrap();
        let found = LabelledImages::read(&root, &ImagesReading::default()).unwrap();
        let paths: Vec<(&str, u32)> = found.records.iter().map(|r| (r.path.as_str(), r.label)).collect();
        assert_eq!(paths, [("benign/a.png", 0), ("benign/b.png", 0), ("malignant/c.png", 1), ("malignant/d.png", 1)]);
        // A class folder that links into another class: one file with two labels.
        std::os::unix::fs::symlink(root.join("benign/a.png"), root.join("malignant/a.png")).unwrap();
        let message = format!("{:#}", LabelledImages::read(&root, &ImagesReading::default()).unwrap_err());
        assert!(message.contains("benign/a.png") && message.contains("malignant/a.png") && message.contains("two classes"), "{message}");
        // A class folder that is itself a link is walked.
        std::fs::remove_file(root.join("malignant/a.png")).unwrap();
        std::fs::rename(root.join("malignant"), dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), root.join("malignant")).unwrap();
        assert_eq!(LabelledImages::read(&root, &ImagesReading::default()).unwrap().records.len(), 4);
    }
}
