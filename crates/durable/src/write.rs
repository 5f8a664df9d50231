//! Atomic writes: the bytes go to a temporary file beside the target whose name is unique to
//! this host, process and call (shards on several nodes may share the folder over NFS, and two
//! threads of one process may write the same file); the file is fsynced, renamed onto the
//! target (atomic within a file system) and the folder fsynced, so the new name survives a
//! power cut too.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::host::{file_name_host, process_has_ended};

/// Calls of this process so far: the last part of a temporary name.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// `.NAME.HOST-PID-CALL.partial` beside `target`: hidden from listings that look for the
/// final names, and recognisably left over when a process was killed mid-write.
fn temporary_path(target: &Path) -> PathBuf {
    let name = target.file_name().map_or_else(|| "unnamed".into(), |n| n.to_string_lossy());
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    target.with_file_name(format!(".{name}.{}-{}-{call}.partial", file_name_host(), std::process::id()))
}

/// Whether a file name is a temporary file of this crate (one a killed writer left behind):
/// not a result, whatever its target's name. Folders that judge "holds results" skip these.
pub fn is_leftover(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') && name.ends_with(".partial")
}

/// Removes the temporary files of `target` whose writers, on this host, have ended: a cache
/// build killed and started again left a hidden `.partial` of the whole cache (gigabytes for
/// ISIC at 256 px) per kill, and a training run one checkpoint per kill. Another host's are
/// kept: whether their writer lives cannot be told from here. Best effort: a file that cannot be
/// listed or removed is left as it was.
fn remove_files_of_ended_writers(target: &Path) {
    let (Some(folder), Some(name)) = (target.parent(), target.file_name()) else { return };
    let folder = if folder.as_os_str().is_empty() { Path::new(".") } else { folder };
    let prefix = format!(".{}.{}-", name.to_string_lossy(), file_name_host());
    let Ok(entries) = std::fs::read_dir(folder) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        // `.NAME.HOST-PID-CALL.partial`, as `temporary_path` names them.
        let Some(pid_and_call) = file.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(".partial")) else { continue };
        let Some(Ok(pid)) = pid_and_call.split_once('-').map(|(pid, _)| pid.parse::<u32>()) else { continue };
        if pid != std::process::id() && process_has_ended(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Creates the folder `path` will live in.
fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => {
            std::fs::create_dir_all(parent).map_err(|e| Error::new(parent, "create the folder", e))
        }
        _ => Ok(()),
    }
}

/// fsync of a folder, so that a rename inside it is on disk. File systems that cannot sync a
/// folder (some network file systems answer EINVAL) are taken as they are.
fn sync_folder(path: &Path) -> Result<()> {
    let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) else { return Ok(()) };
    if cfg!(unix) {
        match File::open(folder).and_then(|f| f.sync_all()) {
            Err(e) if !matches!(e.kind(), std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported) => {
                return Err(Error::new(folder, "sync the folder", e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A file being written under a temporary name, for writers that want a path of their own
/// (`safetensors::serialize_to_file`, an image encoder): write [`PendingFile::path`], then
/// [`PendingFile::commit`]. Dropped without a commit, the temporary file is removed.
#[derive(Debug)]
pub struct PendingFile {
    temporary: PathBuf,
    target: PathBuf,
    done: bool,
}

impl PendingFile {
    /// A temporary name for `target` (whose folder is created if missing). The temporary files
    /// of `target` that killed writers of this host left are removed first.
    pub fn new(target: &Path) -> Result<Self> {
        create_parent(target)?;
        remove_files_of_ended_writers(target);
        Ok(Self { temporary: temporary_path(target), target: target.to_path_buf(), done: false })
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.temporary
    }

    /// fsyncs what was written to [`PendingFile::path`] and moves it onto the target.
    pub fn commit(self) -> Result<()> {
        File::open(&self.temporary).and_then(|f| f.sync_all()).map_err(|e| Error::new(&self.temporary, "sync", e))?;
        self.rename_into_place()
    }

    /// Renames the (synced) temporary file onto the target and syncs the folder.
    fn rename_into_place(mut self) -> Result<()> {
        std::fs::rename(&self.temporary, &self.target).map_err(|e| Error::new(&self.target, "move the new file into place", e))?;
        self.done = true;
        sync_folder(&self.target)
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Writes `bytes` to `path` atomically (creating its folder if missing).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |writer| writer.write_all(bytes))
}

/// Writes `path` atomically from a writer (buffered), for contents too large to hold in memory
/// at once: `write` fills it; an error there leaves the old file untouched.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> Result<()> {
    let pending = PendingFile::new(path)?;
    let file = File::create(pending.path()).map_err(|e| Error::new(pending.path(), "create", e))?;
    let mut writer = BufWriter::new(file);
    write(&mut writer).map_err(|e| Error::new(pending.path(), "write", e))?;
    let file = writer.into_inner().map_err(|e| Error::new(pending.path(), "write", e.into_error()))?;
    file.sync_all().map_err(|e| Error::new(pending.path(), "sync", e))?;
    drop(file);
    pending.rename_into_place()
}

/// Makes the folder `target` with `fill` unless it exists: filled under a temporary name of
/// this process, then renamed into place, so a concurrent process never sees it half-written.
/// When another process finishes first, its folder stays and this one's is removed. Returns
/// whether this call made it.
pub fn create_dir_atomic<E: From<Error>>(target: &Path, fill: impl FnOnce(&Path) -> Result<(), E>) -> Result<bool, E> {
    if target.exists() {
        return Ok(false);
    }
    create_parent(target)?;
    let temporary = temporary_path(target);
    std::fs::create_dir_all(&temporary).map_err(|e| Error::new(&temporary, "create the folder", e))?;
    let remove = |temporary: &Path| std::fs::remove_dir_all(temporary).map_err(|e| Error::new(temporary, "remove the folder", e));
    if let Err(error) = fill(&temporary) {
        let _ = remove(&temporary);
        return Err(error);
    }
    match std::fs::rename(&temporary, target) {
        Ok(()) => {
            sync_folder(target)?;
            Ok(true)
        }
        // Another process made it first (renaming onto its non-empty folder fails).
        Err(_) if target.is_dir() => {
            remove(&temporary)?;
            Ok(false)
        }
        Err(e) => {
            let _ = remove(&temporary);
            Err(Error::new(target, "move the new folder into place", e).into())
        }
    }
}

/// Whether `a` and `b` name one existing file, through links, `..` and relative forms: a
/// command whose output is one of its inputs (`--out` the model's own checkpoint) would replace
/// that input, so callers refuse it before the work.
pub fn is_same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Whether `path` is `folder` or lies under it, through links, `..` and relative forms, where
/// `path` need not exist yet (an output folder usually does not): its `.` and `..` are taken
/// lexically, then links resolved as far as it exists. An output written inside an input folder
/// would be read as input next time (a figure as an image of one more class), so callers refuse
/// it before the work.
pub fn is_within(path: &Path, folder: &Path) -> bool {
    let resolve = |path: &Path| -> Option<PathBuf> {
        let mut lexical = PathBuf::new();
        for part in std::path::absolute(path).ok()?.components() {
            match part {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => _ = lexical.pop(),
                other => lexical.push(other),
            }
        }
        let mut existing = lexical.as_path();
        while !existing.exists()
            && let Some(parent) = existing.parent()
        {
            existing = parent;
        }
        let rest = lexical.strip_prefix(existing).unwrap_or(Path::new(""));
        Some(std::fs::canonicalize(existing).unwrap_or_else(|_| existing.to_path_buf()).join(rest))
    };
    match (resolve(path), resolve(folder)) {
        (Some(path), Some(folder)) => path.starts_with(folder),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_is_recognised_through_other_spellings_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("best.safetensors");
        std::fs::write(&file, b"model").unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        let dotted = dir.path().join("sub/../best.safetensors");
        let link = dir.path().join("link.safetensors");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(is_same_file(&file, &dotted) && is_same_file(&link, &file));
        let other = dir.path().join("features.safetensors");
        std::fs::write(&other, b"model").unwrap();
        assert!(!is_same_file(&file, &other), "equal content is not the same file");
        assert!(!is_same_file(&file, &dir.path().join("missing.safetensors")), "an output not written yet is no input");
    }

    /// A killed writer's temporary file (the process is gone) goes when the file is written
    /// again; a live writer's, another host's and another file's stay.
    #[test]
    fn a_new_write_removes_what_ended_writers_of_this_host_left() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("breakhis-s256.rgb8");
        let mut ended = std::process::Command::new("true").spawn().unwrap();
        let ended_pid = ended.id();
        ended.wait().unwrap();
        let mut live = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let host = file_name_host();
        // A call number this process's own writes never reach: this test's PendingFile takes a
        // name of this process's too (with call 0, it took the stand-in's, seen once).
        let name = |host: &str, pid: u32| dir.path().join(format!(".breakhis-s256.rgb8.{host}-{pid}-{}.partial", u64::MAX));
        let left = [
            (name(host, ended_pid), false),
            (name(host, live.id()), true),
            (name(host, std::process::id()), true),
            (name("another_node", ended_pid), true),
            (dir.path().join(format!(".bach-s256.rgb8.{host}-{ended_pid}-{}.partial", u64::MAX)), true),
        ];
        for (path, _) in &left {
            std::fs::write(path, b"half a cache").unwrap();
        }
        let pending = PendingFile::new(&target).unwrap();
        std::fs::write(pending.path(), b"the cache").unwrap();
        pending.commit().unwrap();
        live.kill().unwrap();
        live.wait().unwrap();
        for (path, kept) in left {
            assert_eq!(path.exists(), kept, "{}", path.display());
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"the cache");
    }

    #[test]
    fn a_path_under_a_folder_is_recognised_through_other_spellings_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir_all(images.join("benign")).unwrap();
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&images, &link).unwrap();
        for inside in [
            images.clone(),
            images.join("results"),
            images.join("benign/../results/deeper"),
            link.join("results"),
            dir.path().join("elsewhere/../images/new"),
        ] {
            assert!(is_within(&inside, &images), "{}", inside.display());
            assert!(is_within(&inside, &link), "{} under the link", inside.display());
        }
        for outside in [dir.path().join("images-results"), dir.path().join("images/../results"), dir.path().to_path_buf()] {
            assert!(!is_within(&outside, &images), "{}", outside.display());
        }
    }

    #[test]
    fn temporary_names_are_hidden_unique_and_beside_the_target() {
        let target = Path::new("/results/runs/search.json");
        let (a, b) = (temporary_path(target), temporary_path(target));
        assert_ne!(a, b);
        assert_eq!(a.parent(), target.parent());
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".search.json.") && name.ends_with(".partial"), "{name}");
        assert!(name.contains(&format!("-{}-", std::process::id())), "{name}");
        assert!(is_leftover(a.file_name().unwrap()));
        for result in ["search.json", "settings.json", "partial", ".hidden", "x.partial"] {
            assert!(!is_leftover(std::ffi::OsStr::new(result)), "{result}");
        }
    }
}
