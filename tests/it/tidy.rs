//! Tidy checks over the source tree (rust-analyzer's `tidy` test): every Rust file opens
//! with a `//!` module doc, and every item and field visible outside its module in the
//! connection core, the history, the bus and the event loop has a `///` doc (the
//! `missing_docs` lint does not reach `pub(crate)` items).

use std::path::{Path, PathBuf};

/// Rust files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if !path.ends_with("target") && !path.ends_with("node_modules") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    for dir in [
        "src",
        "loadtest/src",
        "fuzz/src",
        "fuzz/fuzz_targets",
        "benches",
    ] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            !text.starts_with("//!")
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` module doc: {missing:#?}"
    );
}

/// Whether `line` declares an item or field visible outside its module (modules are
/// documented by their own `//!`).
fn is_visible_item(line: &str) -> bool {
    let line = line.trim_start();
    let Some(rest) = ["pub(crate) ", "pub(super) ", "pub "]
        .iter()
        .find_map(|prefix| line.strip_prefix(prefix))
    else {
        return false;
    };
    let keyword = rest.split_whitespace().next().unwrap_or("");
    if ["fn", "struct", "enum", "trait", "const", "type", "static"].contains(&keyword) {
        return true;
    }
    // A field: `name: Type`.
    keyword.ends_with(':')
        && keyword[..keyword.len() - 1]
            .chars()
            .all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[test]
fn visible_items_of_the_core_are_documented() {
    let mut files = Vec::new();
    for dir in ["src/conn", "src/history", "src/bus", "src/event_loop"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 15, "found only {} files", files.len());
    let mut undocumented = Vec::new();
    // Unit-test modules in their own files (`tests.rs`, `tests/`) are test code.
    let is_test = |path: &Path| {
        path.file_name().is_some_and(|n| n == "tests.rs")
            || path.components().any(|c| c.as_os_str() == "tests")
                && path.starts_with(root().join("src"))
    };
    for path in files.iter().filter(|path| !is_test(path)) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break; // Unit tests follow.
            }
            if !is_visible_item(line) {
                continue;
            }
            let documented = lines[..index]
                .iter()
                .rev()
                .find(|l| !l.trim_start().starts_with("#["))
                .is_some_and(|l| l.trim_start().starts_with("///"));
            if !documented {
                undocumented.push(format!("{}:{}: {}", path.display(), index + 1, line.trim()));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "items without `///`: {undocumented:#?}"
    );
}

#[test]
fn the_tidy_check_sees_what_it_must() {
    assert!(is_visible_item("    pub(crate) fn open(&mut self) {"));
    assert!(is_visible_item("    pub limits: &'a Limits,"));
    assert!(!is_visible_item("    fn private(&self) {"));
    assert!(!is_visible_item("pub(crate) mod exchange;"));
    assert!(!is_visible_item("    pub(crate) use exchange::Exchange;"));
}
