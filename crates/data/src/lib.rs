//! medxfer-data: from a dataset folder on disk to the images and labels of a split.
//!
//! - The [`Catalog`] of datasets/*.toml ([`DatasetSpec`]: layout, label map, task, role) and
//!   datasets/tasks.toml ([`TaskSpec`]).
//! - One reader per real on-disk layout (../shared/docs/DATASETS.md): [`scan_dataset`] gives a
//!   [`Scan`] of the records the task uses, deliberate drops, and every problem met;
//!   [`scan_clean`] refuses a folder with problems; [`check_dataset`] reports them all.
//! - [`load_rgb8`]: any of the study's images to RGB8 as Pillow's `convert("RGB")` does.
//!   [`load_image`] also says whether 16-bit samples came out faint (12-bit data).
//!   DICOM files go through the standard's display pipeline (rescale, window or VOI LUT table,
//!   MONOCHROME1 or INVERSE inverted), NIfTI-1 volumes slice by slice (scaled, windowed by
//!   their display range or the volume's); [`is_image_file`] tells the files it reads, DICOM
//!   without extension too. [`frame_count`] and [`frame_entries`]: a file's frames (a loop's, a
//!   volume's slices) each an image. [`load_image_frames`] renders them as a [`Rendering`] says:
//!   a [`Window`] of the user's own (or one a colour channel), a volume reoriented to RAS+
//!   ([`Orientation`]), each frame 2.5-D with its neighbours as red and blue.
//! - Splits from the authors' CSVs, the reference procedure or over groups ([`split_task`],
//!   [`faithful_split`], [`grouped_split`], [`authors_split`]), their [`leakage`], and the
//!   manifest a split is written as ([`write_manifest`], [`read_manifest`]).
//! - [`transform`]: the reference's eval and train transforms, one function per torchvision/PIL
//!   operation ([`Normalization`], [`TrainTransform`]).
//! - [`ImageCache`] and [`batches`]: decode once into a resized RGB8 cache; batches on a
//!   background thread.
//! - `synth` (feature `synth`): synthetic replicas of every layout, for tests and demos.
//!
//! ```
//! use medxfer_data::{Catalog, Source, scan_clean, split_task};
//!
//! let catalog = Catalog::load_default()?;
//! let task = catalog.task("breast")?;
//! let breakhis = catalog.dataset(&task.id)?;
//! assert_eq!(task.classes.len(), 2);
//! // With the images under `root`: the records, then the reference's split of them.
//! # let root = std::path::Path::new("/nonexistent");
//! if root.is_dir() {
//!     let records = scan_clean(breakhis, root)?;
//!     let (entries, leakage) = split_task(&records, breakhis, task, Source::Faithful, None, 0)?;
//!     println!("{} images, {} groups across parts", entries.len(), leakage.groups_across_splits);
//! }
//! # Ok::<(), medxfer_data::Error>(())
//! ```

#![warn(missing_docs)]

mod as_text;
mod cache;
mod catalog;
mod check;
mod decode;
mod dicom;
mod error;
mod files;
mod frames;
mod layouts;
mod limits;
mod loader;
mod manifest;
mod record;
mod split;
#[cfg(feature = "synth")]
pub mod synth;
pub mod transform;
mod volume;

pub use cache::{FRAMES_PER_READ, ImageCache};
pub use catalog::{Catalog, DatasetSpec, Expected, FaithfulSplit, LayoutKind, Lookalike, ReferenceSplit, Role, TaskSpec, Unlisted};
pub use check::{CheckOptions, CheckReport, Duplicates, check_dataset};
pub use decode::{
    DECODE_REVISION, Decoded, FAINT_16BIT_BELOW, IMAGE_EXTENSIONS, Rendering, decode_image, decode_rgb8, is_image_file, load_image,
    load_image_frame, load_image_frames, load_rgb8,
};
pub use dicom::{
    DicomCondition, DicomFrame, FrameOrder, FrameStacks, SeriesOrder, SeriesPlace, Window, dicom_field_texts, dicom_patient_id,
    dicom_series_uid, frame_stacks, holds_no_image, series_place, series_slices,
};
pub use error::{Error, Result};
pub use files::is_os_bookkeeping;
pub use frames::{FrameSelection, frame_count, frame_entries};
pub use layouts::{
    BreakhisName, ChengSlice, ISIC_CLASSES, ISIC_GROUND_TRUTH, ISIC_METADATA, PAD_COLUMNS, PAD_METADATA, parse_breakhis_name, read_cheng,
    scan_clean, scan_dataset,
};
pub use limits::MAX_PIXELS;
pub use loader::{Augment, Batch, Batches, LoaderConfig, Order, batches, epoch_order};
pub use manifest::{
    LeakageInfo, MANIFEST_CSV, MANIFEST_JSON, ManifestInfo, changed_manifest_files, files_checksum, read_manifest, read_manifest_info,
    read_manifest_of, split_counts, write_manifest,
};
pub use record::{Problem, Record, Scan};
pub use split::{
    Entry, Leakage, Part, Source, authors_csvs, authors_split, authors_split_from_csvs, check_classes, faithful_split, grouped_split,
    leakage, ood_entries, split_task,
};
pub use transform::{Normalization, TrainDraw, TrainTransform};
pub use volume::{Orientation, SlicePlane, VolumeReading, Volumes, is_nifti, slice_plane};
