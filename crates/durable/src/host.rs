//! This machine's name, which temporary files and claims carry: processes on several nodes may
//! share a folder, and a process id means something only on its own host.

use std::sync::OnceLock;

/// The host name: Linux's `/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `unknown`.
pub(crate) fn host_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "unknown".into())
    })
}

/// Whether process `pid` of this host has ended, as far as can be told: Linux's process table
/// lacks it. Where there is no /proc to read, nothing is known to have ended.
pub(crate) fn process_has_ended(pid: u32) -> bool {
    std::path::Path::new("/proc/self").exists() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The host name with every character but letters, digits, '.' and '_' as '_': a part of a
/// file name that the '-' separating it from the next part cannot be confused with.
pub(crate) fn file_name_host() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| host_name().chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '_' }).collect())
}
