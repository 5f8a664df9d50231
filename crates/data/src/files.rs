//! Finding a layout's files at whatever nesting depth a mirror put them (BreakHis and NINS are
//! often double-nested; PAD-UFES-20's images sit in `imgs_part_*` folders or flattened).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Whether a file or folder name is an operating system's bookkeeping, never a dataset's: hidden
/// names (`.DS_Store`, macOS's AppleDouble `._IMAGE.png` beside each image copied to a foreign
/// disk) and the `__MACOSX/` folder a zip made on a Mac unpacks. A BreakHis folder unzipped so
/// failed its check on `._SOB_....png`, "not a BreakHis image name" (seen).
pub fn is_os_bookkeeping(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') || name == "__MACOSX"
}

/// Every file under a root, relative, with `/` separators, sorted; the operating system's
/// bookkeeping ([`is_os_bookkeeping`]) left out.
#[derive(Debug, Clone)]
pub struct FileIndex {
    pub root: PathBuf,
    pub files: Vec<String>,
    /// The entries of `files` whose real names are not UTF-8: listed with U+FFFD in their place,
    /// so a layout's rules see them, but no path written from them opens the file.
    pub not_utf8: BTreeSet<String>,
}

impl FileIndex {
    /// Walks `root` (following symbolic links); a missing or unreadable root is an error that
    /// names it.
    pub fn build(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::io(root, "not a directory: pass --root the folder the dataset archive was extracted into"));
        }
        let mut files = Vec::new();
        let mut not_utf8 = BTreeSet::new();
        let walk = walkdir::WalkDir::new(root).follow_links(true).into_iter();
        for entry in walk.filter_entry(|e| e.depth() == 0 || !is_os_bookkeeping(e.file_name())) {
            let entry = entry.map_err(|e| Error::io(e.path().unwrap_or(root).to_path_buf(), &e))?;
            if entry.file_type().is_file() {
                let relative = entry.path().strip_prefix(root).map_err(|e| Error::io(entry.path(), e))?;
                let parts: Vec<_> = relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                let joined = parts.join("/");
                if relative.to_str().is_none() {
                    not_utf8.insert(joined.clone());
                }
                files.push(joined);
            }
        }
        files.sort();
        Ok(Self { root: root.to_path_buf(), files, not_utf8 })
    }

    /// The absolute path of a relative one.
    pub fn absolute(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// Files whose name ends with `suffix` (case-insensitive), e.g. ".jpg".
    pub fn with_extension<'a>(&'a self, suffix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.files.iter().map(String::as_str).filter(move |f| f.to_ascii_lowercase().ends_with(suffix))
    }

    /// What to say when the layout's `marker` (a file or folder its paths start at) is nowhere
    /// under the root: the folder above that holds it, as the root to give (a root one level too
    /// deep, `Photos/` or `ISIC_2019_Training_Input/` itself, was only "the right --root?").
    pub fn wrong_root_hint(&self, marker: &str) -> String {
        match self.root.ancestors().skip(1).take(2).find(|folder| folder.join(marker).exists()) {
            Some(folder) => format!("{} holds {marker}: give that folder as --root", folder.display()),
            None => "is it the right --root?".to_string(),
        }
    }

    /// The one file called `name` anywhere under the root, or an error saying none or several.
    pub fn unique_file(&self, name: &str) -> Result<&str> {
        let found: Vec<&str> = self.files.iter().map(String::as_str).filter(|f| file_name(f) == name).collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::io(&self.root, format!("no {name} anywhere under this folder; {}", self.wrong_root_hint(name)))),
            many => {
                Err(Error::io(&self.root, format!("{name} found {} times ({}); point --root at one copy", many.len(), many.join(", "))))
            }
        }
    }

    /// File name -> relative paths, for layouts whose lists name files but not folders.
    pub fn by_file_name<'a>(&'a self, suffix: &'a str) -> HashMap<&'a str, Vec<&'a str>> {
        let mut map: HashMap<&str, Vec<&str>> = HashMap::new();
        for file in self.with_extension(suffix) {
            map.entry(file_name(file)).or_default().push(file);
        }
        map
    }
}

/// The last component of a `/`-separated relative path.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The folder component `levels_up` above the file (1 = the parent folder), if any.
pub fn ancestor(path: &str, levels_up: usize) -> Option<&str> {
    path.rsplit('/').nth(levels_up)
}
