//! medxfer-data: from a dataset folder on disk to the images and labels of a split.
//!
//! - [`catalog`]: datasets/*.toml (layout, label map, task, role) and datasets/tasks.toml.
//! - [`layouts`]: one reader per real on-disk layout (../shared/docs/DATASETS.md), each giving
//!   a [`Scan`]: records after the label map, deliberate drops, and every problem met.
//! - [`decode`]: any of the study's images to RGB8 as Pillow's `convert("RGB")` does.
//! - [`split`] and [`manifest`]: authors / faithful / grouped splits, leakage, manifests.
//! - [`transform`]: the reference's eval and train transforms, as torchvision runs them.
//! - [`cache`] and [`loader`]: decode once into a resized RGB8 cache; batches on a background thread.
//! - [`synth`]: synthetic replicas of every layout, for tests and demos.

pub mod cache;
pub mod catalog;
pub mod check;
pub mod decode;
mod error;
pub mod files;
pub mod layouts;
pub mod loader;
pub mod manifest;
mod record;
pub mod split;
pub mod synth;
pub mod transform;

pub use catalog::{Catalog, DatasetSpec, FaithfulSplit, LayoutKind, Role, TaskSpec};
pub use error::{Error, Result};
pub use record::{Problem, Record, Scan};
