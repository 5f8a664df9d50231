//! What a command does when the reader of its output goes away (`medxfer-zoo list | head -3`,
//! a `tee` that was killed): it stops, quietly, with the status the shell reports for a process
//! that SIGPIPE ended (141), as a C tool would. Rust ignores SIGPIPE, so the next write fails with
//! EPIPE instead, and `println!` turns that failure into a panic ("failed printing to stdout:
//! Broken pipe") with a backtrace hint; setting the signal back to its default needs an unsafe
//! call, which this workspace forbids outside medxfer-kernels. A non-zero status, not ripgrep's 0,
//! because a study whose output pipe closed did stop before its end: a script must not read that
//! as success. Every result is written atomically, so stopping here loses nothing a rerun needs.

use std::io;
use std::process::{Command, Output, Stdio};

/// The exit status of a process that SIGPIPE ended, as the shell reports it (128 + 13).
pub const CLOSED_OUTPUT_STATUS: u8 = 141;

/// Installs a panic hook that ends the process quietly with [`CLOSED_OUTPUT_STATUS`] when a
/// print to stdout or stderr panicked because the pipe behind it was closed; every other panic
/// goes to the hook that was there before. Call first thing in `main`.
pub fn stop_quietly_when_output_closes() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if is_closed_output_panic(message) {
            std::process::exit(i32::from(CLOSED_OUTPUT_STATUS));
        }
        previous(info);
    }));
}

/// EPIPE, the error a write to a closed pipe returns (32 on Linux and macOS; the test checks std
/// reads it as `BrokenPipe` here).
const EPIPE: i32 = 32;

/// Whether `message` is the panic std's `print!`/`eprint!` family raises on a closed pipe:
/// "failed printing to stdout: Broken pipe (os error 32)" (library/std/src/io/stdio.rs).
fn is_closed_output_panic(message: &str) -> bool {
    let failed_print = message.starts_with("failed printing to stdout: ") || message.starts_with("failed printing to stderr: ");
    failed_print && message.ends_with(&format!("(os error {EPIPE})"))
}

/// Runs `command` as its reader would have it after a `| head` that has gone: stdout a pipe
/// whose reading end is already closed, so its first write fails; stderr captured. For the
/// binaries' tests of [`stop_quietly_when_output_closes`].
pub fn output_with_stdout_closed(command: &mut Command) -> io::Result<Output> {
    let (reader, writer) = io::pipe()?;
    drop(reader);
    command.stdout(writer).stderr(Stdio::piped()).output()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_print_panics_on_a_closed_pipe_are_recognised_and_others_are_not() {
        // The message std formats (`panic!("failed printing to {label}: {e}")`) from the error a
        // write to a closed pipe returns.
        let raw = io::Error::from_raw_os_error(EPIPE);
        assert_eq!(raw.kind(), io::ErrorKind::BrokenPipe, "EPIPE is {EPIPE} on this platform");
        assert!(is_closed_output_panic(&format!("failed printing to stdout: {raw}")));
        assert!(is_closed_output_panic(&format!("failed printing to stderr: {raw}")));
        // A full disk or any other panic keeps its default report.
        assert!(!is_closed_output_panic(&format!("failed printing to stdout: {}", io::Error::from_raw_os_error(28))));
        assert!(!is_closed_output_panic(&format!("index out of bounds: {raw}")));
    }
}
