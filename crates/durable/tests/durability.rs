//! The three rules of medxfer-durable under the conditions they exist for: concurrent writers
//! and readers, a process killed mid-write, racing claims and stale locks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use medxfer_durable::{Claim, append_line, create_dir_atomic, write_atomic, write_atomic_with};

/// Every file in `dir` (recursively), relative names.
fn files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path).into_iter().map(|f| format!("{}/{f}", path.file_name().unwrap().to_string_lossy())));
        } else {
            found.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    found.sort();
    found
}

/// Content number `k`: a header naming k, then a body long enough that a torn write would show.
fn content(k: usize) -> Vec<u8> {
    let mut bytes = format!("version {k}\n").into_bytes();
    bytes.extend(std::iter::repeat_n(b'a' + (k % 26) as u8, 256 * 1024));
    bytes
}

/// Whether `bytes` is exactly one of the contents.
fn is_complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(32)]).into_owned();
    let Some(k) = text.strip_prefix("version ").and_then(|rest| rest.split('\n').next()).and_then(|k| k.parse().ok()) else {
        return false;
    };
    bytes == content(k).as_slice()
}

#[test]
fn a_write_replaces_the_file_whole_creates_its_folder_and_leaves_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs/breast/search.json");
    write_atomic(&path, b"first").unwrap();
    write_atomic(&path, b"second, longer").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
    assert_eq!(files(dir.path()), ["runs/breast/search.json"]);
}

#[test]
fn a_failed_write_keeps_the_old_file_and_removes_its_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scores.csv");
    write_atomic(&path, b"task,value\n").unwrap();
    let error = write_atomic_with(&path, |writer| {
        use std::io::Write;
        writer.write_all(b"half a tab")?;
        Err(std::io::Error::other("the encoder failed"))
    })
    .unwrap_err();
    assert!(error.to_string().contains("cannot write: the encoder failed"), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), b"task,value\n");
    assert_eq!(files(dir.path()), ["scores.csv"]);
}

/// Eight threads rewrite one file while a reader reads it: every read is one whole version.
#[test]
fn concurrent_readers_see_only_whole_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = Arc::new(dir.path().join("features.safetensors"));
    write_atomic(&path, &content(0)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (path, stop) = (Arc::clone(&path), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let bytes = std::fs::read(&*path).unwrap();
                assert!(is_complete(&bytes), "a read saw a torn file of {} bytes", bytes.len());
                reads += 1;
            }
            reads
        })
    };
    let start = Arc::new(Barrier::new(8));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (path, start) = (Arc::clone(&path), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                for round in 0..10 {
                    write_atomic(&path, &content(1 + w * 10 + round)).unwrap();
                }
            })
        })
        .collect();
    writers.into_iter().for_each(|w| w.join().unwrap());
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert!(is_complete(&std::fs::read(&*path).unwrap()));
    assert_eq!(files(dir.path()), ["features.safetensors"]);
}

/// Run by `a_kill_mid_write_leaves_the_old_file_or_the_new_one` in a child process: rewrites
/// the file named by MEDXFER_DURABLE_TARGET until killed.
#[test]
#[ignore = "a helper process, started by another test"]
fn helper_rewrites_until_killed() {
    let target = PathBuf::from(std::env::var("MEDXFER_DURABLE_TARGET").expect("started by the kill test"));
    for k in 1.. {
        write_atomic(&target, &content(k)).unwrap();
    }
}

#[test]
fn a_kill_mid_write_leaves_the_old_file_or_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("outcome.json");
    write_atomic(&target, &content(0)).unwrap();
    for delay in [30, 55, 80, 120] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "helper_rewrites_until_killed", "--quiet"])
            .env("MEDXFER_DURABLE_TARGET", &target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL on Unix: no destructor, no cleanup.
        child.wait().unwrap();
        assert!(is_complete(&std::fs::read(&target).unwrap()), "after a kill at {delay} ms the file is torn");
        // What a kill may leave: hidden temporaries, never a second visible file.
        let visible: Vec<String> = files(dir.path()).into_iter().filter(|f| !f.starts_with('.')).collect();
        assert_eq!(visible, ["outcome.json"]);
        assert!(files(dir.path()).iter().all(|f| f == "outcome.json" || f.ends_with(".partial")));
    }
}

/// Two processes' worth of threads make the same folder: one makes it, whole; the other's
/// work is discarded.
#[test]
fn a_folder_is_made_once_and_whole() {
    let dir = tempfile::tempdir().unwrap();
    let target = Arc::new(dir.path().join("data/breakhis"));
    let start = Arc::new(Barrier::new(4));
    let makers: Vec<_> = (0..4)
        .map(|m| {
            let (target, start) = (Arc::clone(&target), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                create_dir_atomic(&target, |folder| {
                    for i in 0..20 {
                        write_atomic(&folder.join(format!("class-{}/image-{i:02}.png", i % 2)), format!("maker {m}").as_bytes())?;
                    }
                    Ok::<(), medxfer_durable::Error>(())
                })
                .unwrap()
            })
        })
        .collect();
    let made: usize = makers.into_iter().map(|m| usize::from(m.join().unwrap())).sum();
    assert!(made >= 1);
    let inside = files(&target);
    assert_eq!(inside.len(), 20, "{inside:?}");
    let makers: std::collections::BTreeSet<Vec<u8>> = inside.iter().map(|f| std::fs::read(target.join(f)).unwrap()).collect();
    assert_eq!(makers.len(), 1, "the folder mixes two makers' files");
    assert_eq!(files(dir.path()).len(), 20, "a temporary folder was left");
    // Once made, it is not made again.
    assert!(!create_dir_atomic(&target, |_| -> Result<(), medxfer_durable::Error> { panic!("filled twice") }).unwrap());
}

/// What a fill may fail with: a write, or its own work.
#[derive(Debug)]
enum FillError {
    Durable(#[allow(dead_code)] medxfer_durable::Error),
    Painter,
}

impl From<medxfer_durable::Error> for FillError {
    fn from(error: medxfer_durable::Error) -> Self {
        Self::Durable(error)
    }
}

#[test]
fn a_failed_fill_leaves_no_folder() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("cache");
    let result = create_dir_atomic(&target, |folder| {
        write_atomic(&folder.join("half.bin"), b"x")?;
        Err(FillError::Painter)
    });
    assert!(matches!(result, Err(FillError::Painter)));
    assert!(!target.exists());
    assert!(files(dir.path()).is_empty());
}

#[test]
fn concurrent_log_lines_never_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(dir.path().join("reproduce.log"));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..200 {
                    append_line(&log, &format!("thread {t} line {i:03} {}", "x".repeat(300))).unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let text = std::fs::read_to_string(&*log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1200);
    assert!(lines.iter().all(|l| l.len() == "thread 0 line 000 ".len() + 300 && l.starts_with("thread ")));
}

#[test]
fn a_claim_is_held_once_released_on_drop_and_refreshed() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("trial-003/lock");
    let stale = Duration::from_secs(6 * 3600);
    let claim = Claim::take(&lock, stale).unwrap().expect("free");
    assert!(Claim::take(&lock, stale).unwrap().is_none());
    let old = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().append(true).open(&lock).unwrap().set_modified(old).unwrap();
    claim.refresh();
    let age = SystemTime::now().duration_since(std::fs::metadata(&lock).unwrap().modified().unwrap()).unwrap();
    assert!(age < Duration::from_secs(60), "refresh left the lock {age:?} old");
    drop(claim);
    assert!(!lock.exists());
    assert!(Claim::take(&lock, stale).unwrap().is_some());
}

/// Eight threads ask for one unit at once: exactly one gets it.
#[test]
fn of_racing_claims_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let lock = Arc::new(dir.path().join("lock"));
    let start = Arc::new(Barrier::new(8));
    let winners: Vec<_> = (0..8)
        .map(|_| {
            let (lock, start) = (Arc::clone(&lock), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                Claim::take(&lock, Duration::from_secs(3600)).unwrap()
            })
        })
        .collect();
    let held: Vec<Claim> = winners.into_iter().filter_map(|w| w.join().unwrap()).collect();
    assert_eq!(held.len(), 1);
}

#[test]
fn a_dead_holders_claim_and_a_silent_remote_claim_are_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    // A process of this host that has exited.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let lock = dir.path().join("dead/lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, format!(r#"{{"host":"{host}","pid":{dead}}}"#)).unwrap();
    assert!(Claim::take(&lock, Duration::from_secs(3600)).unwrap().is_some(), "a dead holder's claim was respected");
    // Another host's claim: respected while fresh, taken once older than the limit.
    let remote = dir.path().join("remote/lock");
    std::fs::create_dir_all(remote.parent().unwrap()).unwrap();
    std::fs::write(&remote, r#"{"host":"another-node","pid":1}"#).unwrap();
    assert!(Claim::take(&remote, Duration::from_secs(3600)).unwrap().is_none());
    let old = SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options().append(true).open(&remote).unwrap().set_modified(old).unwrap();
    assert!(Claim::take(&remote, Duration::from_secs(3600)).unwrap().is_some());
}
