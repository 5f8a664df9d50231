//! Links Intel MKL for the `mkl` feature; does nothing without it.
//!
//! MKL's static libraries, sequential and LP64 (32-bit integers, which `cblas-sys` declares),
//! are found under `$MKLROOT`: oneAPI's `setvars.sh` sets it, and a Python environment with
//! `pip install mkl-static` is one (`MKLROOT=$VIRTUAL_ENV`). They are linked into
//! the binaries, which then run without MKL installed. This replaces `intel-mkl-src`, which on a
//! miss fails silently (the link then stops at "undefined symbol: cblas_sgemm"), keeps that miss
//! cached after MKLROOT is set, and otherwise downloads MKL 2020.1 from ghcr.io at build time.

use std::path::{Path, PathBuf};

const LIBRARIES: [&str; 3] = ["mkl_intel_lp64", "mkl_sequential", "mkl_core"];

fn main() {
    println!("cargo:rerun-if-env-changed=MKLROOT");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_MKL").is_none() {
        return;
    }
    let root = std::env::var_os("MKLROOT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/opt/intel/oneapi/mkl/latest"));
    let Some(dir) = library_dir(&root) else {
        eprintln!(
            "medxfer-kernels' `mkl` feature needs Intel MKL's static libraries ({}), and found none under {} \
             (MKLROOT, or /opt/intel/oneapi/mkl/latest when unset). Either `python3 -m venv mkl && mkl/bin/pip install \
             mkl-static==2026.2.0` and build with MKLROOT=$PWD/mkl, or install oneAPI MKL and source its setvars.sh; \
             or build without `--features mkl` (faer's products).",
            LIBRARIES.map(|l| format!("lib{l}.a")).join(", "),
            root.display()
        );
        std::process::exit(1);
    };
    println!("cargo:rustc-link-search=native={}", dir.display());
    for library in LIBRARIES {
        // Not bundled into this crate's rlib (libmkl_core.a is ~570 MB): the final link reads
        // the archives from the search path above, which cargo passes on to every dependent.
        println!("cargo:rustc-link-lib=static:-bundle={library}");
    }
    for system in ["pthread", "m", "dl"] {
        println!("cargo:rustc-link-lib=dylib={system}");
    }
}

/// The folder holding all three archives: `lib/intel64` (oneAPI's older layout), `lib` (oneAPI's
/// and pip's), else the first match a few levels down (a wheel unpacked by hand).
fn library_dir(root: &Path) -> Option<PathBuf> {
    let has_all = |dir: &Path| LIBRARIES.iter().all(|l| dir.join(format!("lib{l}.a")).is_file());
    [root.join("lib/intel64"), root.join("lib")].into_iter().find(|d| has_all(d)).or_else(|| search(root, 5, &has_all))
}

fn search(dir: &Path, depth: usize, has_all: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    if has_all(dir) {
        return Some(dir.to_path_buf());
    }
    if depth == 0 {
        return None;
    }
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    children.sort();
    children.into_iter().find_map(|child| search(&child, depth - 1, has_all))
}
