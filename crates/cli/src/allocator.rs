//! The binaries' allocator setting. They use mimalloc, which by default returns freed memory to
//! the OS after a delay (1 s); a training step frees its activations and gradients at the end and
//! takes them again a moment later, so every step faulted them back in and the kernel zeroed each
//! page anew (`clear_page_erms` was 21% of a resnet18 CPU step under perf). With
//! `MIMALLOC_PURGE_DELAY=-1` freed memory stays with the process: resnet18's step went from 12.1 to
//! 16.8 images/s at the same peak memory. mimalloc reads its options only from the environment (or
//! an unsafe call, which this workspace forbids), so the binary re-executes itself once with it.

/// Re-executes this program with `MIMALLOC_PURGE_DELAY=-1` unless that variable is set already
/// (so a user's own value wins). Call first thing in `main`; returns only when nothing was done
/// or the re-execution failed (then the program goes on with mimalloc's default).
pub fn keep_freed_memory() {
    const VARIABLE: &str = "MIMALLOC_PURGE_DELAY";
    if std::env::var_os(VARIABLE).is_some() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let Ok(program) = std::env::current_exe() else { return };
        let mut arguments = std::env::args_os();
        let mut command = std::process::Command::new(program);
        if let Some(name) = arguments.next() {
            command.arg0(name);
        }
        // exec replaces this process (same pid, same streams) and returns only on failure.
        let error = command.args(arguments).env(VARIABLE, "-1").exec();
        eprintln!("warning: could not re-execute with {VARIABLE}=-1 ({error}); going on with mimalloc's default");
    }
}
