//! medxfer-cli: the start and the end every binary of the workspace shares (`medxfer-zoo`,
//! `medxfer-data`, `medxfer-train`, `cargo xtask`, the kernels' benches). Libraries never depend
//! on it: how a process manages its memory and reports its errors is the binary's business.
//!
//! ```no_run
//! use std::process::ExitCode;
//!
//! // Each binary declares mimalloc its allocator (`#[global_allocator]`), then:
//! fn main() -> ExitCode {
//!     medxfer_cli::keep_freed_memory();
//!     medxfer_cli::stop_quietly_when_output_closes();
//!     medxfer_cli::exit_code(run())
//! }
//! # fn run() -> anyhow::Result<()> { Ok(()) }
//! ```

#![warn(missing_docs)]

mod allocator;
mod closed_output;

use std::process::ExitCode;

pub use allocator::keep_freed_memory;
pub use closed_output::{CLOSED_OUTPUT_STATUS, output_with_stdout_closed, stop_quietly_when_output_closes};

/// Success, or the error with its chain of causes on stderr (`error: what: why: ...`) and a
/// failing exit code.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
