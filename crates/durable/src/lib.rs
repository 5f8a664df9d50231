//! medxfer-durable: how every file of the workspace is written, so that results survive a
//! `kill -9` and processes that share a results folder (shards, Slurm array tasks on several
//! nodes) never see each other's half-written files.
//!
//! Three rules, each one function or type here:
//!
//! - **A file is complete once it has its final name.** [`write_atomic`] (and
//!   [`write_atomic_with`], [`PendingFile`] for writers that stream or need a path, and
//!   [`create_dir_atomic`] for whole folders) writes to a temporary name unique to this host,
//!   process and call, fsyncs the file, renames it into place and fsyncs the folder. A reader
//!   sees the old file or the new one, never a mixture; after a crash at any instant, at worst
//!   a temporary file is left (hidden, ending in `.partial`), which the next [`PendingFile`] of
//!   the same file on that host removes.
//! - **A log line is one write.** [`append_line`] opens the log for appending, so lines from
//!   concurrent processes do not interleave.
//! - **A unit of work is claimed before it is done.** [`Claim`] is a lock file naming host and
//!   process, created exclusively; it is stale when its process is gone (same host) or it was
//!   not refreshed for a time the caller chooses (another host).
//!
//! ```
//! use std::time::Duration;
//! use medxfer_durable::{Claim, write_atomic};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("outcome.json");
//! write_atomic(&path, b"{\"balanced_accuracy\": 0.81}")?;
//! assert_eq!(std::fs::read(&path)?, b"{\"balanced_accuracy\": 0.81}");
//!
//! let lock = dir.path().join("trial-000.lock");
//! let claim = Claim::take(&lock, Duration::from_secs(6 * 3600))?.expect("nobody holds it");
//! assert!(Claim::take(&lock, Duration::from_secs(6 * 3600))?.is_none(), "a live claim is respected");
//! drop(claim);
//! assert!(!lock.exists());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod claim;
mod error;
mod host;
mod log;
mod write;

pub use claim::Claim;
pub use error::{Error, Result};
pub use log::append_line;
pub use write::{PendingFile, create_dir_atomic, is_leftover, is_same_file, is_within, write_atomic, write_atomic_with};
