//! The rules ARCHITECTURE.md states for the workspace, checked on its sources: which crate may
//! depend on which, where `unsafe` may appear, that no two modules of a crate import each other
//! (directly or round a circle), that every file the workspace writes goes through
//! medxfer-durable, that libraries document their public items, and that no module is a
//! catch-all. Each rule is one test; a failure names the file and line that breaks it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every member: (package name, folder).
fn members() -> Vec<(String, PathBuf)> {
    let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap()).unwrap();
    manifest["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| {
            let dir = workspace().join(member.as_str().unwrap());
            let package: toml::Value = toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
            (package["package"]["name"].as_str().unwrap().to_string(), dir)
        })
        .collect()
}

/// The `.rs` files under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(rust_files(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A source file's lines before its unit tests (by the workspace's convention, a
/// `#[cfg(test)]` module at the end), with their 1-based numbers.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().enumerate().take_while(|(_, line)| line.trim() != "#[cfg(test)]").map(|(i, line)| (i + 1, line.to_string())).collect()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace()).unwrap_or(path).display().to_string()
}

/// The workspace crates each library may depend on: the layers of ARCHITECTURE.md. Test and
/// bench code (dev-dependencies) may use more.
const ALLOWED_DEPENDENCIES: [(&str, &[&str]); 9] = [
    ("medxfer-durable", &[]),
    ("medxfer-mutate", &[]),
    ("medxfer-cli", &[]),
    ("medxfer-scores", &["medxfer-durable", "medxfer-cli"]),
    ("medxfer-kernels", &[]),
    ("medxfer-zoo", &["medxfer-kernels", "medxfer-durable", "medxfer-cli"]),
    ("medxfer-data", &["medxfer-durable", "medxfer-cli"]),
    ("medxfer-train", &["medxfer-zoo", "medxfer-kernels", "medxfer-data", "medxfer-durable", "medxfer-cli"]),
    ("xtask", &["medxfer-scores", "medxfer-zoo", "medxfer-data", "medxfer-train", "medxfer-durable", "medxfer-cli"]),
];

#[test]
fn dependencies_flow_one_way() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED_DEPENDENCIES.into_iter().collect();
    let mut broken = Vec::new();
    for (name, dir) in members() {
        let Some(permitted) = allowed.get(name.as_str()) else {
            broken.push(format!("{name}: a workspace member this test does not know; add its layer to ALLOWED_DEPENDENCIES"));
            continue;
        };
        let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
        let dependencies = manifest.get("dependencies").and_then(toml::Value::as_table).cloned().unwrap_or_default();
        for dependency in dependencies.keys().filter(|d| d.starts_with("medxfer-")) {
            if !permitted.contains(&dependency.as_str()) {
                broken.push(format!("{name} depends on {dependency}, which its layer may not"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// `unsafe` is denied by the workspace's lints, which every crate takes; only medxfer-kernels
/// may allow it (an instruction or a CUDA call), and there every `unsafe` says why it is sound.
#[test]
fn unsafe_code_lives_only_in_the_kernels_and_says_why() {
    let mut broken = Vec::new();
    for (name, dir) in members() {
        let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
        if manifest.get("lints").and_then(|l| l.get("workspace")).and_then(toml::Value::as_bool) != Some(true) {
            broken.push(format!("{name}/Cargo.toml: [lints] must be `workspace = true`"));
        }
        for file in ["src", "tests", "benches", "examples"].iter().flat_map(|d| rust_files(&dir.join(d))) {
            let lines: Vec<String> = std::fs::read_to_string(&file).unwrap().lines().map(str::to_string).collect();
            for (i, line) in lines.iter().enumerate() {
                // Code only: not a comment, nor a string (this file's own patterns).
                let code: String = line.split("//").next().unwrap_or("").split('"').step_by(2).collect();
                let relaxes = code.contains("allow(unsafe_code)") || code.contains("expect(unsafe_code)");
                let uses = code.contains("unsafe {") || code.contains("unsafe fn") || code.contains("unsafe impl");
                if (relaxes || uses) && name != "medxfer-kernels" {
                    broken.push(format!("{}:{}: unsafe outside medxfer-kernels", relative(&file), i + 1));
                }
                if uses && !lines[..i].iter().rev().take(3).any(|l| l.trim_start().starts_with("// SAFETY:")) {
                    broken.push(format!("{}:{}: an `unsafe` without a `// SAFETY:` comment above it", relative(&file), i + 1));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// Calls that write a file other than through medxfer-durable.
const DIRECT_WRITES: [&str; 8] = [
    "fs::write(",
    "File::create(",
    "fs::rename(",
    "fs::copy(",
    "OpenOptions::new()",
    "serialize_to_file(",
    "safetensors::save(",
    ".save(&",
];

/// ARCHITECTURE.md: "a file is complete once it has its final name": every file the workspace
/// writes (results, caches, checkpoints, reports, benchmark tables) goes through medxfer-durable,
/// by its functions or by writing the temporary path of a `PendingFile` (named `pending`) that
/// it then commits. Tests and benches may write their fixtures directly.
#[test]
fn every_write_goes_through_medxfer_durable() {
    let mut broken = Vec::new();
    for (name, dir) in members() {
        if name == "medxfer-durable" {
            continue;
        }
        for file in rust_files(&dir.join("src")) {
            for (number, line) in code_lines(&file) {
                let code = line.split("//").next().unwrap_or("");
                if let Some(call) = DIRECT_WRITES.iter().find(|call| code.contains(*call) && !code.contains("pending.path()")) {
                    broken.push(format!("{}:{number}: `{call}` writes around medxfer-durable", relative(&file)));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// A module of a crate: its path from the crate root (`["study", "unit"]`).
type ModulePath = Vec<String>;

/// The module a source file is, in a crate rooted at `src`.
fn module_of(src: &Path, file: &Path) -> ModulePath {
    let relative = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    match last.as_str() {
        "lib.rs" | "main.rs" | "mod.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_string()),
    }
    parts
}

/// The module paths that `text` names after `crate::` (absolute) or `super::` (relative to
/// `module`), `use` groups (`crate::{a, b::c}`) expanded.
fn referenced_paths(text: &str, module: &[String]) -> Vec<ModulePath> {
    fn tree(rest: &str, prefix: &[String], out: &mut Vec<ModulePath>) -> usize {
        // Parses `a::b::{...}` or `a::b` at the start of `rest`; returns the bytes consumed.
        let mut path = prefix.to_vec();
        let mut i = 0;
        let bytes = rest.as_bytes();
        loop {
            if bytes.get(i) == Some(&b'{') {
                i += 1;
                loop {
                    while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace() || *b == b',') {
                        i += 1;
                    }
                    if bytes.get(i).is_none_or(|b| *b == b'}') {
                        return i + 1;
                    }
                    let consumed = tree(&rest[i..], &path, out);
                    if consumed == 0 {
                        i += 1;
                    }
                    i += consumed;
                }
            }
            let start = i;
            while bytes.get(i).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
                i += 1;
            }
            if i == start {
                out.push(path);
                return i;
            }
            path.push(rest[start..i].to_string());
            if rest[i..].starts_with("::") {
                i += 2;
            } else {
                out.push(path);
                return i;
            }
        }
    }
    let mut out = Vec::new();
    for (marker, base) in [("crate::", Vec::new()), ("super::", module[..module.len().saturating_sub(1)].to_vec())] {
        let mut from = 0;
        while let Some(found) = text[from..].find(marker) {
            let at = from + found;
            let preceded = text[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            from = at + marker.len();
            if !preceded {
                tree(&text[from..], &base, &mut out);
            }
        }
    }
    out
}

/// The `pub use module::{A, B}` re-exports of a crate root: name -> module.
fn root_reexports(root: &Path) -> BTreeMap<String, ModulePath> {
    let mut names = BTreeMap::new();
    for (_, line) in code_lines(root) {
        let Some(rest) = line.trim().strip_prefix("pub use ").and_then(|r| r.strip_suffix(';')) else { continue };
        let mut paths = Vec::new();
        let rest = rest.strip_prefix("crate::").unwrap_or(rest);
        // The expansion treats the re-exported names as path ends under their module.
        for path in referenced_paths(&format!("crate::{rest}"), &[]) {
            if let Some((name, module)) = path.split_last() {
                paths.push((name.clone(), module.to_vec()));
            }
        }
        for (name, module) in paths {
            if !module.is_empty() {
                names.insert(name, module);
            }
        }
    }
    names
}

/// The circles among sibling modules of one crate (`src`): each edge a child of one module
/// naming an item of another child of the same module. A module naming its own ancestor's
/// items, or its descendants', is containment, not an import between equals.
fn import_circles(src: &Path) -> Vec<String> {
    let files: Vec<PathBuf> = rust_files(src)
        .into_iter()
        .filter(|f| !(f.parent() == Some(src) && f.ends_with("main.rs") && src.join("lib.rs").exists()))
        .collect();
    let modules: BTreeMap<ModulePath, PathBuf> = files.iter().map(|f| (module_of(src, f), f.clone())).collect();
    let root = if src.join("lib.rs").exists() { src.join("lib.rs") } else { src.join("main.rs") };
    let reexports = root_reexports(&root);
    // parent module -> child -> children it names -> an example (file:line)
    let mut graphs: BTreeMap<ModulePath, BTreeMap<String, BTreeMap<String, String>>> = BTreeMap::new();
    for (module, file) in &modules {
        for (number, line) in code_lines(file) {
            let code = line.split("//").next().unwrap_or("");
            for mut path in referenced_paths(code, module) {
                if path.len() == 1
                    && let Some(target) = reexports.get(&path[0])
                {
                    path = target.clone();
                }
                // The deepest module the path names.
                let Some(target) = (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains_key(p)) else { continue };
                let common = module.iter().zip(&target).take_while(|(a, b)| a == b).count();
                if common == module.len() || common == target.len() {
                    continue;
                }
                let (from, to) = (module[common].clone(), target[common].clone());
                let at = format!("{}:{number}", relative(file));
                graphs.entry(module[..common].to_vec()).or_default().entry(from).or_default().entry(to).or_insert(at);
            }
        }
    }
    let mut circles = Vec::new();
    for (parent, graph) in &graphs {
        // Depth-first search for a back edge; report the circle it closes.
        fn visit<'a>(
            node: &'a str,
            graph: &'a BTreeMap<String, BTreeMap<String, String>>,
            stack: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
            found: &mut Vec<Vec<&'a str>>,
        ) {
            if done.contains(node) {
                return;
            }
            if let Some(start) = stack.iter().position(|n| *n == node) {
                found.push(stack[start..].to_vec());
                return;
            }
            stack.push(node);
            for next in graph.get(node).into_iter().flat_map(|edges| edges.keys()) {
                visit(next, graph, stack, done, found);
            }
            stack.pop();
            done.insert(node);
        }
        let (mut done, mut found) = (BTreeSet::new(), Vec::new());
        for node in graph.keys() {
            visit(node, graph, &mut Vec::new(), &mut done, &mut found);
        }
        for circle in found {
            let steps: Vec<String> = circle
                .iter()
                .zip(circle.iter().cycle().skip(1))
                .map(|(from, to)| format!("{from} -> {to} ({})", graph[*from][*to]))
                .collect();
            circles.push(format!(
                "{} in {}: {}",
                relative(src),
                if parent.is_empty() { "the crate root".into() } else { parent.join("::") },
                steps.join(", ")
            ));
        }
    }
    circles
}

#[test]
fn no_two_modules_import_each_other() {
    let circles: Vec<String> = members().iter().flat_map(|(_, dir)| import_circles(&dir.join("src"))).collect();
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

/// The checker itself on a made-up crate: a circle of three siblings is found, containment
/// (a child naming its parent's items) and a chain are not.
#[test]
fn the_circle_check_finds_circles_and_only_circles() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let write = |path: &str, text: &str| {
        let path = src.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "mod a;\nmod b;\nmod c;\nmod d;\npub use c::Gamma;\n");
    write("a.rs", "use crate::b::Beta;\n");
    write("b.rs", "use crate::{Gamma, d};\n");
    write("c.rs", "pub struct Gamma;\nfn f() -> crate::a::Alpha { todo!() }\n");
    write("d/mod.rs", "mod inner;\npub struct Delta;\n");
    write("d/inner.rs", "use super::Delta;\n#[cfg(test)]\nmod tests { use crate::a::Alpha; }\n");
    let circles = import_circles(&src);
    assert_eq!(circles.len(), 1, "{circles:?}");
    assert!(circles[0].contains("a -> b") && circles[0].contains("b -> c") && circles[0].contains("c -> a"), "{circles:?}");
    write("c.rs", "pub struct Gamma;\n");
    assert!(import_circles(&src).is_empty());
}

/// Every library documents its public API: `missing_docs` is on in its root.
#[test]
fn libraries_document_their_public_items() {
    let mut broken = Vec::new();
    for (name, dir) in members() {
        let lib = dir.join("src/lib.rs");
        if lib.exists() && !std::fs::read_to_string(&lib).unwrap().contains("#![warn(missing_docs)]") {
            broken.push(format!("{name}: src/lib.rs lacks #![warn(missing_docs)]"));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// STYLE.md: no catch-all modules; a shared piece gets a name that says what it is.
#[test]
fn no_module_is_a_catch_all() {
    let catch_alls: Vec<String> = members()
        .iter()
        .flat_map(|(_, dir)| rust_files(&dir.join("src")))
        .filter(|f| {
            let stem = f.file_stem().unwrap().to_string_lossy();
            ["utils", "util", "helpers", "helper", "common", "misc"].contains(&stem.as_ref())
                || f.parent()
                    .and_then(|p| p.file_name())
                    .is_some_and(|n| ["utils", "helpers", "common", "misc"].contains(&n.to_string_lossy().as_ref()))
        })
        .map(|f| relative(&f))
        .collect();
    assert!(catch_alls.is_empty(), "{catch_alls:?}");
}
