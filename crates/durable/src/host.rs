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

/// The host name with every character but letters, digits, '.' and '_' as '_': a part of a
/// file name that the '-' separating it from the next part cannot be confused with.
pub(crate) fn file_name_host() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| host_name().chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '_' }).collect())
}
