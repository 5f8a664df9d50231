//! The Python side of the benchmarks: a virtual environment made from PyPI the first time, from
//! committed, pinned requirements files.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A path of the workspace (`python/bench_zoo.py`, `target/pyref`) wherever the command runs: under
/// the current folder when it is the workspace's root, else under the checkout this xtask was
/// built in (`cargo xtask` run from a subfolder found no script, after timing its own side).
pub fn workspace(relative: impl AsRef<Path>) -> PathBuf {
    let here = ["Cargo.toml", "python", "xtask"].iter().all(|entry| Path::new(entry).exists());
    let root = if here { PathBuf::new() } else { Path::new(env!("CARGO_MANIFEST_DIR")).join("..") };
    root.join(relative)
}

/// Refuses, before any measurement, a `--python` that does not start (a mistyped path): the
/// Python side runs after ours, and failed only once ours had been timed, minutes in.
pub fn check_starts(python: &Path) -> Result<()> {
    let output = Command::new(python).arg("--version").output().with_context(|| format!("--python {}: cannot run it", python.display()))?;
    if !output.status.success() {
        bail!("--python {}: `--version` failed: {}", python.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// `given`, or the interpreter of the workspace's `venv`, creating the environment from the
/// workspace's `requirements` when missing (or when a requirements file changed since).
pub fn interpreter(given: Option<&Path>, venv: &Path, requirements: &[&str]) -> Result<PathBuf> {
    if let Some(python) = given {
        check_starts(python)?;
        return Ok(python.to_path_buf());
    }
    let venv = &workspace(venv);
    let requirements: Vec<PathBuf> = requirements.iter().map(workspace).collect();
    let python = venv.join("bin/python");
    let stamp = venv.join("requirements.stamp");
    let wanted = requirements
        .iter()
        .map(|r| std::fs::read_to_string(r).with_context(|| format!("cannot read {}", r.display())))
        .collect::<Result<String>>()?;
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    let listed = |separator: &str| requirements.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(separator);
    eprintln!("creating the Python environment {} from {} (PyPI; once) ...", venv.display(), listed(", "));
    // A fresh environment: what the old one held may conflict with the new pins.
    if venv.exists() {
        std::fs::remove_dir_all(venv).with_context(|| format!("cannot remove the outdated {}", venv.display()))?;
    }
    let status = Command::new("python3").args(["-m", "venv"]).arg(venv).status().context("python3 is needed for the Python side")?;
    if !status.success() {
        bail!("python3 -m venv {} failed", venv.display());
    }
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "-q", "--disable-pip-version-check"]);
    for requirement in &requirements {
        pip.arg("-r").arg(requirement);
    }
    if !pip.status()?.success() {
        bail!("pip install -r {} failed; pass --python with an interpreter that has them", listed(" -r "));
    }
    medxfer_durable::write_atomic(&stamp, wanted.as_bytes())?;
    Ok(python)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Tests run in xtask/, a subfolder of the workspace, as `cargo xtask` run from one does.
    #[test]
    fn the_workspace_files_are_found_from_a_subfolder() {
        assert!(!Path::new("python").exists(), "this test needs a folder other than the workspace root");
        for file in ["python/bench_scores.py", "python/bench_zoo.py", "python/bench_data.py", "python/requirements.txt"] {
            assert!(workspace(file).is_file(), "{}", workspace(file).display());
        }
    }

    #[test]
    fn the_environment_is_made_once_and_remade_when_the_requirements_change() {
        let dir = tempfile::tempdir().unwrap();
        let requirements = dir.path().join("requirements.txt");
        // No packages: the logic without a download.
        std::fs::write(&requirements, "# nothing pinned yet\n").unwrap();
        let venv = dir.path().join("venv");
        // The user's interpreter (python3 from PATH) is taken as given; one that does not start is
        // refused before any measurement.
        let given = Path::new("python3");
        assert_eq!(interpreter(Some(given), &venv, &[requirements.to_str().unwrap()]).unwrap(), given);
        assert!(!venv.exists(), "a given interpreter makes no environment");
        let missing = Path::new("/usr/bin/python3-of-no-one");
        let error = format!("{:#}", interpreter(Some(missing), &venv, &[requirements.to_str().unwrap()]).unwrap_err());
        assert!(error.contains("--python /usr/bin/python3-of-no-one: cannot run it"), "{error}");

        let python = interpreter(None, &venv, &[requirements.to_str().unwrap()]).unwrap();
        assert!(python.ends_with("bin/python") && python.exists());
        let marker = venv.join("made-by-the-test");
        std::fs::write(&marker, "").unwrap();
        interpreter(None, &venv, &[requirements.to_str().unwrap()]).unwrap();
        assert!(marker.exists(), "an up-to-date environment is reused");
        std::fs::write(&requirements, "# nothing pinned yet, but changed\n").unwrap();
        interpreter(None, &venv, &[requirements.to_str().unwrap()]).unwrap();
        assert_eq!(std::fs::read_to_string(venv.join("requirements.stamp")).unwrap(), "# nothing pinned yet, but changed\n");
        assert!(!marker.exists(), "changed requirements make a fresh environment");
    }
}
