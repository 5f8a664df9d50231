//! The Python side of the benchmarks: a virtual environment made from PyPI the first time, from
//! committed, pinned requirements files.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// `given`, or `venv`'s interpreter, creating the environment from `requirements` when missing
/// (or when a requirements file changed since).
pub fn interpreter(given: Option<&Path>, venv: &Path, requirements: &[&str]) -> Result<PathBuf> {
    if let Some(python) = given {
        return Ok(python.to_path_buf());
    }
    let python = venv.join("bin/python");
    let stamp = venv.join("requirements.stamp");
    let wanted: String = requirements.iter().map(|r| std::fs::read_to_string(r).unwrap_or_default()).collect();
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    eprintln!("creating the Python environment {} from {} (PyPI; once) ...", venv.display(), requirements.join(", "));
    let status = Command::new("python3").args(["-m", "venv"]).arg(venv).status().context("python3 is needed for the Python side")?;
    if !status.success() {
        bail!("python3 -m venv {} failed", venv.display());
    }
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "-q", "--disable-pip-version-check"]);
    for requirement in requirements {
        pip.args(["-r", requirement]);
    }
    if !pip.status()?.success() {
        bail!("pip install -r {} failed; pass --python with an interpreter that has them", requirements.join(" -r "));
    }
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}
