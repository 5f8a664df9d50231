//! `medxfer-data`: list the datasets and tasks, check a dataset folder, write a split, write a
//! synthetic replica, show one file as the backbones see it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use medxfer_data::{
    Catalog, CheckOptions, DicomFrame, FRAMES_PER_READ, FrameSelection, ManifestInfo, Orientation, Rendering, Role, Source, Window,
    changed_manifest_files, files_checksum, frame_count, load_image_frames, ood_entries, read_manifest, read_manifest_info,
    read_manifest_of, scan_clean, scan_dataset, split_counts, split_task, write_manifest,
};

#[derive(Parser)]
#[command(name = "medxfer-data", about = "The study's medical datasets: check, split, synthesize.")]
struct Cli {
    /// The dataset catalog directory (default: the workspace's datasets/, or MEDXFER_DATASETS).
    #[arg(long, global = true)]
    datasets: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The known datasets and tasks.
    List,
    /// Reads a dataset folder: counts per task label against the known totals, and every
    /// problem (missing, corrupt or truncated, unknown class) at once; every image is decoded.
    Check {
        dataset: String,
        #[arg(long)]
        root: PathBuf,
        /// Skip decoding the images (finds layout problems only; corrupt files go unnoticed).
        #[arg(long)]
        fast: bool,
        /// Decode every image: the default, kept for older scripts.
        #[arg(long, hide = true, conflicts_with = "fast")]
        decode: bool,
        /// Also hash every file and count exact duplicates (reported, not problems: the real
        /// Kaggle MRI set has 237).
        #[arg(long)]
        duplicates: bool,
        #[arg(long)]
        json: bool,
    },
    /// Splits a task's ID dataset into train/val/test and writes manifest.csv + manifest.json.
    Split {
        task: String,
        /// The ID dataset's root (the OOD set is not needed for the split).
        #[arg(long)]
        root: PathBuf,
        #[arg(long, value_enum, default_value = "faithful")]
        source: Source,
        /// The folder of the authors' split CSVs (file names containing train, val and test).
        #[arg(long)]
        authors_dir: Option<PathBuf>,
        /// Use this dataset instead of the task's ID set (an alternative such as cheng).
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Decodes and resizes a dataset's images once into the image cache (all cores, progress
    /// bar); later runs with the same files reuse it.
    Cache {
        dataset: String,
        #[arg(long)]
        root: PathBuf,
        /// A manifest.csv from `split`: cache its images in its order (default: every image the
        /// task uses, in path order).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// The cache folder.
        #[arg(long)]
        out: PathBuf,
        /// Shorter side of the cached images (256 for the 224 crops of the study).
        #[arg(long, default_value_t = 256)]
        short_side: u32,
    },
    /// Decodes one image file as rank, predict and the study decode it, before the resize (a
    /// DICOM file through its display pipeline, a NIfTI volume's slice, any other image as
    /// Pillow's convert("RGB")), writes it as PNG and says what it is. With several frames kept
    /// (all, every:K), a contact sheet of them in order.
    Show {
        file: PathBuf,
        /// Of a DICOM file of several frames or a NIfTI volume of several slices, the frame (first,
        /// middle, last, N), or all / every:K for a contact sheet of the frames kept. Of a slice of
        /// a DICOM series stored a file a slice, the series' slices so chosen, as rank reads them.
        #[arg(long, visible_alias = "slice", value_name = "FRAME", default_value = "only")]
        dicom_frame: FrameSelection,
        /// A display window of your own for grayscale images, CENTER,WIDTH in their rescaled values
        /// (CT brain 40,80; a 12-bit radiograph's stored values 2048,4096): in place of the file's
        /// window or display range, or of a PNG's or TIFF's high byte.
        /// Three joined by + (40,80+80,200+600,2800): one for each of the red, green and blue
        /// channels.
        #[arg(long, value_name = "CENTER,WIDTH", allow_hyphen_values = true)]
        window: Option<Window>,
        /// A NIfTI volume's axes: stored, or canonical (nibabel's as_closest_canonical: permuted
        /// and flipped to RAS+, the slices axial whatever plane the volume was acquired in).
        #[arg(long, value_name = "ORIENTATION", default_value = "stored")]
        reorient: Orientation,
        /// Of a 4-D NIfTI file (one volume a modality, b-value or time point), the volume read,
        /// counted from 1, or three joined by + (1+3+4) for the red, green and blue channels; such
        /// a file is refused without it.
        #[arg(long, value_name = "N")]
        volume: Option<medxfer_data::Volumes>,
        /// Each frame 2.5-D: the frame before in red, itself in green, the one after in blue.
        #[arg(long)]
        adjacent_slices: bool,
        /// The PNG written.
        #[arg(long)]
        out: PathBuf,
        /// A contact sheet's tile: each frame shrunk (never enlarged) to fit TILE x TILE pixels.
        #[arg(long, default_value_t = 160)]
        tile: u32,
        /// A contact sheet's frames a row.
        #[arg(long, default_value_t = 8)]
        columns: u32,
    },
    /// Writes a small synthetic replica of a dataset's real layout (a build with
    /// `--features synth`).
    Synth {
        dataset: String,
        #[arg(long)]
        out: PathBuf,
        /// Images per class (at least 3).
        #[arg(long, default_value_t = 4)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    medxfer_cli::stop_quietly_when_output_closes();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => medxfer_cli::exit_code(Err(error)),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let catalog = Catalog::load(&cli.datasets.unwrap_or_else(Catalog::default_dir))?;
    match cli.command {
        Command::List => {
            println!("{:<20} {:<8} {:<15} {:>7}  title", "dataset", "task", "role", "images");
            for d in &catalog.datasets {
                println!("{:<20} {:<8} {:<15} {:>7}  {}", d.name, d.task, d.role.as_str(), d.expected.images, d.title);
            }
            println!();
            for t in &catalog.tasks {
                println!(
                    "task {:<8} classes {:?}; ID {}, OOD {}{}",
                    t.name,
                    t.classes,
                    t.id,
                    t.ood,
                    if t.alternatives.is_empty() { String::new() } else { format!(", alternatives {}", t.alternatives.join(", ")) }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { dataset, root, fast, decode: _, duplicates, json } => {
            check(&catalog, &dataset, &root, CheckOptions { decode: !fast, duplicates }, json)
        }
        Command::Split { task, root, source, authors_dir, dataset, seed, out } => {
            let request = SplitRequest {
                task: &task,
                root: &root,
                source,
                authors_dir: authors_dir.as_deref(),
                dataset: dataset.as_deref(),
                seed,
                out: &out,
            };
            split(&catalog, &request)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache { dataset, root, manifest, out, short_side } => {
            let spec = catalog.dataset(&dataset)?;
            let entries = match &manifest {
                Some(path) => read_manifest_of(path, &spec.name)?,
                None => ood_entries(&scan_dataset(spec, &root)?.records),
            };
            if let Some(changed) =
                manifest.as_deref().and_then(Path::parent).map(|dir| changed_manifest_files(dir, &root)).transpose()?.flatten()
            {
                eprintln!("warning: {changed}");
            }
            // An empty cache was written and called a success (--root of another dataset).
            if entries.is_empty() {
                bail!("{}: no images of {} found: is --root the folder of {}?", root.display(), spec.name, spec.name);
            }
            let start = std::time::Instant::now();
            let cache = medxfer_data::ImageCache::open_or_build(&out, &spec.name, &root, &entries, short_side, true)?;
            println!("{} images cached in {} ({:.1} s)", cache.len(), out.display(), start.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        Command::Synth { dataset, out, n, seed } => synth(&catalog, &dataset, &out, n, seed),
        Command::Show { file, dicom_frame, window, reorient, volume, adjacent_slices, out, tile, columns } => {
            let rendering = Rendering { window, orientation: reorient, volume, adjacent_slices };
            show(&file, (dicom_frame, rendering), &out, (tile, columns))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `show`: the frames `selection` keeps of `file` (rendered as `rendering` says), written to
/// `out` (one image, or a contact sheet of `tile`-pixel tiles, `columns` a row), and a line
/// saying what they are.
fn show(file: &Path, (selection, rendering): (FrameSelection, Rendering), out: &Path, (tile, columns): (u32, u32)) -> Result<()> {
    if tile == 0 || columns == 0 {
        bail!("--tile and --columns take a whole number from 1");
    }
    let count = frame_count(file, rendering.reading())?;
    // A slice of a DICOM series with frames chosen: the series' slices chosen, as rank reads them.
    let series = if count == 1 && selection != FrameSelection::default() { medxfer_data::series_slices(file)? } else { None };
    let (reads, unit) = match &series {
        Some(slices) => (chosen_slices(slices, selection)?, "slices of its DICOM series"),
        None => {
            let frames: Vec<DicomFrame> = match selection {
                FrameSelection::One(frame) => vec![frame],
                FrameSelection::Every(step) => (1..=count).step_by(usize::try_from(step)?).map(DicomFrame::Number).collect(),
            };
            (frames.chunks(FRAMES_PER_READ).map(|run| (file.to_path_buf(), run.to_vec())).collect(), "frames")
        }
    };
    let mut images = Vec::new();
    for (path, run) in &reads {
        for decoded in load_image_frames(path, run, rendering)? {
            images.push(decoded?);
        }
    }
    let faint = images.iter().filter(|decoded| decoded.faint).count();
    let (width, height) = images[0].image.dimensions();
    let written = match images.as_slice() {
        [one] => {
            one.image.save(out).map_err(|e| anyhow::anyhow!("{}: cannot write the image ({e})", out.display()))?;
            match (&series, reads[0].1[0]) {
                (Some(_), _) => format!(" (the series' slice {selection}: {})", reads[0].0.display()),
                (None, frame) if count > 1 => format!(" (frame {frame})"),
                (None, _) => String::new(),
            }
        }
        _ => {
            let sheet = contact_sheet(images.iter().map(|decoded| &decoded.image), tile, columns);
            sheet.save(out).map_err(|e| anyhow::anyhow!("{}: cannot write the contact sheet ({e})", out.display()))?;
            format!(" ({} {unit}, {selection}, as a {} x {} sheet)", images.len(), sheet.width(), sheet.height())
        }
    };
    println!("{}: {width} x {height} pixels, {count} frame(s); wrote {}{written}", file.display(), out.display());
    if let Some(slices) = &series {
        let stack = medxfer_data::series_place(file)?
            .and_then(|place| place.stack)
            .map(|stack| format!(" (its stack of {stack})"))
            .unwrap_or_default();
        println!(
            "a slice of a DICOM series of {} files{stack} in {} (in order along the slices' normal, else by Instance Number): --slice \
             reads the series as rank does",
            slices.len(),
            folder_shown(file)
        );
    }
    if faint > 0 {
        println!(
            "note: 16-bit samples all under 4096 (12-bit data), reduced to their high byte: near black (--window 2048,4096 reads \
             their stored values)"
        );
    }
    match rendering.window {
        Some(window) if !window.is_gray() => println!("grayscale images through one window a channel: red, green, blue {window}"),
        Some(window) => println!("grayscale images through the window {window}"),
        None => {}
    }
    match rendering.volume.filter(|_| medxfer_data::is_nifti(file)) {
        Some(medxfer_data::Volumes::Channels([red, green, blue])) => {
            println!("volumes {red}, {green} and {blue} of the file's 4-D series as red, green and blue (--volume)");
        }
        Some(volume) => println!("volume {volume} of the file's 4-D series (--volume)"),
        None => {}
    }
    if rendering.adjacent_slices {
        say_adjacent(file, count)?;
    }
    match (medxfer_data::slice_plane(file)?, rendering.orientation) {
        (Some(plane), orientation) if !medxfer_data::is_nifti(file) => {
            let note = if orientation == Orientation::Canonical { "; --reorient reads NIfTI volumes only" } else { "" };
            let article = if plane == medxfer_data::SlicePlane::Axial { "an" } else { "a" };
            println!("{article} {plane} slice (from its Image Orientation (Patient){note})");
        }
        (Some(plane), Orientation::Stored) => println!("slices along the third stored axis: {plane} (from the header's orientation)"),
        (Some(plane), Orientation::Canonical) => {
            println!("slices axial, the volume reoriented to RAS+ (stored: {plane} slices, from the header's orientation)");
        }
        _ => {}
    }
    Ok(())
}

/// The folder `file` is in, as said: `.` for a bare file name.
fn folder_shown(file: &Path) -> String {
    file.parent().filter(|folder| !folder.as_os_str().is_empty()).unwrap_or(Path::new(".")).display().to_string()
}

/// The reads that give the slices `selection` keeps of a series' `slices` (in order): a file each,
/// its one frame.
fn chosen_slices(slices: &[PathBuf], selection: FrameSelection) -> Result<Vec<(PathBuf, Vec<DicomFrame>)>> {
    let len = u32::try_from(slices.len())?;
    let indices: Vec<u32> = match selection {
        FrameSelection::One(frame) => {
            vec![frame.index(len).map_err(|_| anyhow::anyhow!("--slice {frame}: the DICOM series holds {len} slices (counted from 1)"))?]
        }
        FrameSelection::Every(step) => (0..len).step_by(usize::try_from(step)?).collect(),
    };
    Ok(indices.into_iter().map(|index| (slices[index as usize].clone(), vec![DicomFrame::Only])).collect())
}

/// Says what a 2.5-D image of `file` (of `count` frames) is made of: its frames, or, a slice of
/// a DICOM series stored a file a slice, the series' slices either side of it.
fn say_adjacent(file: &Path, count: u32) -> Result<()> {
    /// How many of a stack's frames are named, in its order.
    const STACK_SHOWN: usize = 12;
    /// How many stacks are listed.
    const STACKS_SHOWN: usize = 4;
    let place = if count == 1 { medxfer_data::series_place(file)? } else { None };
    let Some(place) = place else {
        let stacks = if medxfer_data::is_nifti(file) { None } else { Some(medxfer_data::frame_stacks(file, count)?) };
        match stacks.filter(|stacks| !stacks.is_stored_order()) {
            Some(stacks) => {
                let listed = |frames: &Vec<u32>| {
                    let shown: Vec<String> = frames.iter().take(STACK_SHOWN).map(|frame| (frame + 1).to_string()).collect();
                    format!("{}{}", shown.join(", "), if frames.len() > STACK_SHOWN { ", ..." } else { "" })
                };
                let listed: Vec<String> = stacks.stacks.iter().take(STACKS_SHOWN).map(listed).collect();
                let more = if stacks.stacks.len() > STACKS_SHOWN { " / ..." } else { "" };
                let apart = match stacks.stacks.len() {
                    1 => String::new(),
                    n => format!("{n} stacks its Dimension Index tells apart by {}, ", stacks.apart_by.join(", ")),
                };
                println!(
                    "2.5-D: each frame's red the frame before it along its stack, its green itself, its blue the frame after (by the \
                     frames' Plane Positions, lowest first: {apart}frames {}{more}; the file stores them in another order)",
                    listed.join(" / ")
                );
            }
            None => println!("2.5-D: each frame's red the frame before, its green itself, its blue the frame after"),
        }
        return Ok(());
    };
    let name = |path: &Path| path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let order = match place.order {
        medxfer_data::SeriesOrder::Position => "by position along the slices' normal",
        medxfer_data::SeriesOrder::InstanceNumber => "by Instance Number, the slices having no position",
    };
    let stack = place.stack.as_ref().map(|stack| format!(" (its stack of {stack})")).unwrap_or_default();
    println!(
        "2.5-D: slice {} of {} of its DICOM series{stack} in {} ({order}): red {}, green itself, blue {}",
        place.index + 1,
        place.len,
        folder_shown(file),
        name(&place.before),
        name(&place.after)
    );
    Ok(())
}

/// `images` in rows of `columns`, each shrunk to fit `tile` x `tile` (its aspect kept, never
/// enlarged) and centred in its tile, on black.
fn contact_sheet<'a>(images: impl ExactSizeIterator<Item = &'a image::RgbImage>, tile: u32, columns: u32) -> image::RgbImage {
    let count = images.len() as u32;
    let (across, rows) = (columns.min(count), count.div_ceil(columns));
    let mut sheet = image::RgbImage::new(across * tile, rows * tile);
    for (at, image) in (0u32..).zip(images) {
        let (width, height) = image.dimensions();
        let shrunk;
        let shown = if width > tile || height > tile {
            let fit = |side: u32| (u64::from(side) * u64::from(tile) / u64::from(width.max(height))).max(1) as u32;
            shrunk = image::imageops::thumbnail(image, fit(width), fit(height));
            &shrunk
        } else {
            image
        };
        let (x, y) = ((at % columns) * tile + (tile - shown.width()) / 2, (at / columns) * tile + (tile - shown.height()) / 2);
        image::imageops::replace(&mut sheet, shown, i64::from(x), i64::from(y));
    }
    sheet
}

fn check(catalog: &Catalog, dataset: &str, root: &Path, options: CheckOptions, json: bool) -> Result<ExitCode> {
    let spec = catalog.dataset(dataset)?;
    let report = medxfer_data::check_dataset(spec, root, options)?;
    if json {
        let problems: Vec<String> = report.problems.iter().map(|p| format!("{}: {}", p.path.display(), p.problem)).collect();
        let mut value = serde_json::json!({"dataset": spec.name, "images": report.images, "per_label": report.per_label, "dropped": report.dropped, "decoded": report.decoded, "problems": problems});
        if let Some(duplicates) = report.duplicates {
            value["duplicate_files"] = duplicates.files.into();
            value["duplicate_groups"] = duplicates.groups.into();
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{} under {}: {} images used, {} of dropped classes", spec.name, root.display(), report.images, report.dropped);
        println!("{:<6} {:>8} {:>10}", "label", "found", "expected");
        for (label, expected) in &spec.expected.per_label {
            println!("{label:<6} {:>8} {expected:>10}", report.per_label.get(label).copied().unwrap_or(0));
        }
        println!("{:<6} {:>8} {:>10}", "all", report.images, spec.expected.images);
        // `--fast` alone skips decoding; a folder without any image the task uses has none to decode.
        if options.decode {
            println!("{} image(s) decoded", report.decoded);
        } else {
            println!("images not decoded (--fast): corrupt or truncated files are not looked for");
        }
        if let Some(duplicates) = report.duplicates {
            println!("exact duplicates: {} file(s) repeat another, in {} group(s)", duplicates.files, duplicates.groups);
        }
        if report.problems.is_empty() {
            println!("no problems");
        } else {
            println!("{} problem(s):", report.problems.len());
            for problem in &report.problems {
                println!("  {}: {}", problem.path.display(), problem.problem);
            }
        }
    }
    Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What `split` is asked for.
struct SplitRequest<'a> {
    task: &'a str,
    root: &'a Path,
    source: Source,
    authors_dir: Option<&'a Path>,
    dataset: Option<&'a str>,
    seed: u64,
    out: &'a Path,
}

fn split(catalog: &Catalog, request: &SplitRequest<'_>) -> Result<()> {
    let task = catalog.task(request.task)?;
    let spec = catalog.dataset(request.dataset.unwrap_or(&task.id))?;
    if spec.task != task.name || spec.role == Role::Ood {
        bail!("{} is not an in-distribution dataset of task {}", spec.name, task.name);
    }
    match (request.source, request.authors_dir) {
        (Source::Authors, None) => bail!("--source authors needs --authors-dir, the folder of the authors' split CSVs"),
        // Left out, the authors' split would silently not be the one made.
        (source, Some(dir)) if source != Source::Authors => bail!(
            "--authors-dir {} is only read with --source authors (this split is --source {}); add --source authors to split as the authors did",
            dir.display(),
            source.as_str()
        ),
        _ => {}
    }
    let records = scan_clean(spec, request.root)?;
    let (entries, leakage) = split_task(&records, spec, task, request.source, request.authors_dir, request.seed)?;
    let info = ManifestInfo {
        dataset: spec.name.clone(),
        task: task.name.clone(),
        source: request.source,
        seed: request.seed,
        images: entries.len(),
        counts: split_counts(&entries),
        files_checksum: files_checksum(request.root, &entries)?,
        leakage: Some(leakage.clone().into()),
    };
    // A split already there is what every run made from it trained on: another one written
    // over it would change their images under them.
    let existing = request.out.join(medxfer_data::MANIFEST_CSV);
    if existing.exists() && read_manifest(&existing)? != entries {
        let made = read_manifest_info(request.out)
            .map_or(String::new(), |before| format!(" ({} {} split, seed {})", before.dataset, before.source.as_str(), before.seed));
        bail!(
            "{} holds another split{made}; writing this one ({} {}, seed {}) over it would change the images of every run made from it: give another --out, or remove that folder first",
            existing.display(),
            spec.name,
            request.source.as_str(),
            request.seed
        );
    }
    let (csv_path, _) = write_manifest(request.out, &entries, &info)?;
    println!("{}: {} images, {:?}", csv_path.display(), entries.len(), info.counts);
    println!(
        "leakage by {}: {} of {} groups span splits; {} val and {} test images share a group with train",
        spec.group_key,
        leakage.groups_across_splits,
        leakage.groups,
        leakage.val_images_sharing_a_train_group,
        leakage.test_images_sharing_a_train_group
    );
    Ok(())
}

#[cfg(feature = "synth")]
fn synth(catalog: &Catalog, dataset: &str, out: &Path, n: usize, seed: u64) -> Result<ExitCode> {
    let spec = catalog.dataset(dataset)?;
    let replica = medxfer_data::synth::synthesize(spec, out, n, seed)?;
    println!(
        "wrote a {} replica to {}: {:?} images per task label, {} of dropped classes",
        spec.name,
        out.display(),
        replica.per_label,
        replica.dropped
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "synth"))]
fn synth(_: &Catalog, _: &str, _: &Path, _: usize, _: u64) -> Result<ExitCode> {
    bail!("this medxfer-data was built without synthetic replicas; run it as `cargo run -p medxfer-data --features synth -- synth ...`")
}
